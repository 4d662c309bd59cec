"""bf16 autocast against float32, per model, on real music: error and speed (CPU).

For each model (published configuration, weights drawn with a fixed seed), a ``--seconds``
excerpt of a real recording (default: hyperrogue's ``hr3-caves.ogg``, Debian package
``hyperrogue-music``; any audio file with ``--audio``), mono at the model's output rate, is the
reference; the model's input is that excerpt degraded as its recipe does (AEROMamba: resampled
to 11.025 kHz; Wave-U-Mamba and Apollo: low-passed at 4 kHz at their own rate). The input is
restored in float32 and under ``torch.autocast("cpu", torch.bfloat16)``. Prints per model:

- ``dLSD``: |LSD(ref, y_bf16) - LSD(ref, y_fp32)| — how far bf16 moves the quality score
  (``upsr.eval.metrics.lsd``, 2048/512, log10 power): the number ``--precision auto`` bounds;
- ``LSD(32,16)``: LSD between the two outputs themselves (large where the outputs are near
  silent in some bins: bf16 rounding noise sits ~50 dB under each value);
- the relative L2 difference, and the median wall time of ``--runs`` passes in each precision.

These numbers fill ``upsr.infer.precision.BF16_ERRORS``. Random weights: a trained
checkpoint may differ.

    python benchmarks/bf16_error.py [NAME ...] [--seconds 10] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import typing as tp

import numpy as np
import torch
from _timing import median_time

DEFAULT_AUDIO = "/usr/share/hyperrogue/music/hr3-caves.ogg"

# name -> (registry name, build overrides, input rate, output rate)
CASES: dict[str, tuple[str, dict[str, tp.Any], int, int]] = {
    "wave-u-mamba": ("wave-u-mamba", {}, 48000, 48000),
    "aeromamba": ("aeromamba", {}, 11025, 44100),
    "aeromamba-official": ("aeromamba", {"official_forward": True}, 11025, 44100),
    "apollo": ("apollo", {}, 44100, 44100),
}


def real_pair(path: str, seconds: float, sr_in: int, sr_out: int,
              offset_s: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """(reference at ``sr_out``, degraded input at ``sr_in``), mono float32."""
    from upsr.audio import io, synth
    from upsr.audio.resample import resample

    info = io.info(path)
    start = int(min(offset_s, max(0.0, info.duration_s - seconds)) * info.sr)
    x = io.read(path, start=start, frames=int(seconds * info.sr)).samples.mean(0)
    ref = resample(x[None], info.sr, sr_out)[0].astype(np.float32)
    if sr_in == sr_out:
        lr = synth.brickwall(ref[None], sr_out, 4000.0)[0]
    else:
        lr = resample(ref[None], sr_out, sr_in)[0]
    return ref, lr.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"default: {', '.join(CASES)}")
    ap.add_argument("--audio", default=DEFAULT_AUDIO)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from upsr.eval.metrics import lsd
    from upsr.infer.precision import cpu_has_native_bf16
    from upsr.models import build

    print(f"{a.audio}, {a.seconds:g} s mono, {a.threads} threads, median of {a.runs}; "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"{'model':<20}{'dLSD':>9}{'LSD(32,16)':>11}{'rel L2':>10}{'fp32 RTF':>10}"
          f"{'bf16 RTF':>10}")
    for name in a.names or list(CASES):
        reg, over, sr_in, sr_out = CASES[name]
        torch.manual_seed(0)
        model = build(reg, **over).eval()
        ref, lr = real_pair(a.audio, a.seconds, sr_in, sr_out)
        x = torch.from_numpy(lr)[None]
        with torch.inference_mode():
            y32 = model.restore(x).float().numpy()[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y16 = model.restore(x).float().numpy()[0]

            def run32(model: tp.Any = model, x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    model.restore(x)

            def run16(model: tp.Any = model, x: torch.Tensor = x) -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    model.restore(x)

            t32 = median_time(run32, a.runs, warmup=False)
            t16 = median_time(run16, a.runs, warmup=False)
        rel = float(np.linalg.norm(y16 - y32) / max(np.linalg.norm(y32), 1e-30))
        n = min(len(ref), len(y32))
        dlsd = abs(lsd(ref[:n], y16[:n]) - lsd(ref[:n], y32[:n]))
        print(f"{name:<20}{dlsd:>9.4f}{lsd(y32, y16):>11.4f}{rel:>10.2e}"
              f"{t32 / a.seconds:>10.3f}{t16 / a.seconds:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
