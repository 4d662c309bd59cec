"""AudioSR (small configuration, random weights): inter-channel coherence of the added band,
and the added band's level and continuity across chunk joins.

Random weights make the added band meaningless as audio, but both properties are properties
of the inference procedure, not of the weights:

1. Stereo. A stereo input with a partly common source (L = s + 0.3·n₁, R = 0.7·s + 0.3·n₂,
   low-passed at 5 kHz) is restored with the same noise for both channels (upsr) and with a
   different noise per channel (what processing the channels one after the other from one
   random stream does, as the official per-channel proposal). The table gives the
   magnitude-squared coherence of L and R averaged over the input band (0.3–4 kHz) and over
   the added band (6–20 kHz).
2. Joins. A 6-s stationary band-limited noise goes through the engine in chunks. Band energy
   above the cut-off is measured in 10-ms frames; the table gives the lowest and highest frame
   energy within ±50 ms of each join relative to the median frame energy away from joins,
   and the largest sample-to-sample step of the added band near joins vs elsewhere (a click
   shows as a step far above the rest).

Usage: ``python benchmarks/audiosr_stereo_joins.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from upsr.audio.filters import lowpass  # noqa: E402
from upsr.infer.chunk import ChunkPlan  # noqa: E402
from upsr.infer.engine import LF_N_FFT, EnhanceOptions, enhance_array, fill_native  # noqa: E402
from upsr.models.audiosr.model import AudioSR, AudioSRConfig  # noqa: E402

SR = 48000
CUT = 5000.0


def small(**kw) -> AudioSR:
    torch.manual_seed(0)
    return AudioSR(AudioSRConfig.small(segment_s=0.64, steps=10, **kw)).eval()


def coherence(a: np.ndarray, b: np.ndarray, lo: float, hi: float) -> float:
    f, c = signal.coherence(a, b, fs=SR, nperseg=2048)
    return float(np.mean(c[(f >= lo) & (f <= hi)]))


def stereo() -> None:
    rng = np.random.default_rng(1)
    n = int(1.2 * SR)
    s, n1, n2 = rng.standard_normal((3, n)) * 0.1
    x = lowpass(np.stack([s + 0.3 * n1, 0.7 * s + 0.3 * n2]), SR, CUT, kind="cheby1", order=8)
    x = torch.from_numpy(x.astype(np.float32))
    m = small()
    cut = torch.tensor([CUT, CUT])
    with torch.inference_mode():
        shared = m.restore(x, cutoff_hz=cut).numpy()
        other = small(seed=43)
        other.load_state_dict(m.state_dict())
        indep = np.stack([m.restore(x[:1], cutoff_hz=cut[:1])[0].numpy(),
                          other.restore(x[1:], cutoff_hz=cut[1:])[0].numpy()])
    print("## stereo: magnitude-squared coherence of L and R")
    print("| signal | input band 0.3–4 kHz | added band 6–20 kHz |")
    print(f"| input | {coherence(x[0].numpy(), x[1].numpy(), 300, 4000):.3f} | (empty) |")
    for name, y in (("shared noise (upsr)", shared), ("noise per channel", indep)):
        print(f"| {name} | {coherence(y[0], y[1], 300, 4000):.3f} | "
              f"{coherence(y[0], y[1], 6000, 20000):.3f} |")


def joins() -> None:
    rng = np.random.default_rng(2)
    x = lowpass(rng.standard_normal((1, 6 * SR)) * 0.1, SR, CUT, kind="cheby1",
                order=8).astype(np.float32)
    m = small(context_s=0.1)
    opts = EnhanceOptions(chunk_s=1.28, overlap_s=0.1, batch_size=1)
    y, _ = enhance_array(x, SR, m, cutoff_hz=CUT, options=opts)
    ctx = m.context_s + LF_N_FFT * 1.5 / SR
    hop = fill_native(opts.chunk_s, opts.overlap_s, ctx, SR, m.native_s, m.align)
    plan = ChunkPlan.for_rate(x.shape[-1], SR, hop, opts.overlap_s, ctx)
    at = [c.keep_lo + c.fade_in // 2 for c in plan if c.index > 0]  # centres of cross-fades
    hf = signal.sosfiltfilt(signal.butter(8, CUT * 1.2, "high", fs=SR, output="sos"), y[0])
    frame = SR // 100
    e = np.array([np.mean(hf[i:i + frame] ** 2) for i in range(0, hf.size - frame, frame)])
    near = np.zeros(e.size, bool)
    for j in at:
        near[max(0, j // frame - 5):j // frame + 6] = True
    ref = np.median(e[~near])
    step = np.abs(np.diff(hf))
    near_s = np.zeros(step.size, bool)
    for j in at:
        near_s[max(0, j - SR // 20):j + SR // 20] = True
    print(f"\n## joins: {len(at)} joins in 6 s (chunks of {hop:.2f} s kept + "
          f"{opts.overlap_s} s cross-fade + {ctx:.3f} s context each side)")
    print("| added-band energy near joins / median elsewhere (min, max) | largest step near "
          "joins / elsewhere |")
    print(f"| {e[near].min() / ref:.2f}, {e[near].max() / ref:.2f} | "
          f"{step[near_s].max() / step[~near_s].max():.2f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    stereo()
    joins()
