"""How far does MambaWave's sampler reach? (sets ``upsr.models.mambawave.CONTEXT_S``)

Runs the DDIM sampler on a music-like 24 kHz test signal, once whole and once with
its first ``--cut-s`` seconds removed (the noise is positional, so both runs see the same
noise at the same samples), and prints the largest ``|y_cut − y_whole| / rms(y_whole)`` per
50 ms window after the cut, and where it first stays below 1e-3 / 1e-4.

Weights are "trained-like" as in the parity fixture (README §11): BatchNorm statistics
random, A = −U(0.25, 20), Δ log-uniform in [1e-3, 0.5] (dt bias), D ~ U(−1, 2), conv biases
N(0, 0.3²), the zero-initialised head re-drawn. The reach is set by the dilations (11 layers,
1…1024) and the Mamba decay rates, not by the width, so ``--channels`` may be reduced to fit
the CPU (the published 32 is the default).

    python benchmarks/mambawave_context.py --channels 8 --steps 8 25 --seconds 1.5
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch


def trained_like(model: torch.nn.Module, seed: int = 0) -> None:
    from upsr.nn.mamba import BiMamba

    g = torch.Generator().manual_seed(seed)

    def u(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(u(m.running_var.shape, 0.5, 2.0))
                m.weight.copy_(u(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, BiMamba):
                for a in (m.A_log, m.A_b_log):
                    a.copy_(torch.log(u(a.shape, 0.25, 20.0)))
                for d in (m.D, m.D_b):
                    d.copy_(u(d.shape, -1.0, 2.0))
                for proj in (m.dt_proj, m.dt_proj_b):
                    dt = torch.exp(u(proj.bias.shape, math.log(1e-3), math.log(0.5)))
                    proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
                    proj.weight.mul_(u(proj.weight.shape, 0.5, 2.0))
                for conv in (m.conv1d, m.conv1d_b):
                    conv.bias.copy_(0.3 * torch.randn(conv.bias.shape, generator=g))
        head = model.output_projection  # type: ignore[attr-defined]
        torch.nn.init.kaiming_normal_(head.weight, generator=g)


def test_signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """``upsr.audio.synth.music_like`` (harmonics, noise, transients), mono, peak 0.5."""
    from upsr.audio import synth

    x = synth.music_like(seconds, sr, channels=1, seed=seed)
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    return 0.5 * x / max(float(np.max(np.abs(x))), 1e-8)


def main(argv: list[str] | None = None) -> None:
    from upsr.models import build

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 25])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--cut-s", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build("mambawave", residual_channels=args.channels).eval()
    trained_like(model)
    lr_sr = model.in_rate
    assert lr_sr is not None
    x = torch.from_numpy(test_signal(args.seconds, lr_sr))[None]
    cut = int(args.cut_s * lr_sr)
    win = int(0.05 * 48000)
    print(f"channels {args.channels}, {args.seconds} s at {lr_sr} Hz, cut {args.cut_s} s; "
          f"max |diff|/rms per 50 ms after the cut")
    for steps in args.steps:
        t0 = time.perf_counter()
        with torch.no_grad():
            whole = model.sample(x, steps=steps)[0]
            part = model.sample(x[:, cut:], offsets=[cut], steps=steps)[0]
        ref = whole[2 * cut:]
        rms = float(ref.pow(2).mean().sqrt())
        err = (part - ref).abs().numpy() / rms
        maxes = [float(err[i:i + win].max()) for i in range(0, len(err) - win + 1, win)]
        below = {}
        for thr in (1e-3, 1e-4):
            idx = next((i for i in range(len(maxes)) if all(m < thr for m in maxes[i:])), None)
            below[thr] = None if idx is None else idx * 0.05
        print(f"DDIM {steps:3d}: " + " ".join(f"{m:.1e}" for m in maxes) +
              f" | <1e-3 after {below[1e-3]} s, <1e-4 after {below[1e-4]} s "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
