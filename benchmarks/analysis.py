"""Speed of the analysis / eval DSP on stereo 44.1 kHz noise (numpy, CPU).

Prints one row per operation: median wall time over ``--runs`` runs and the real-time factor
(seconds of compute per second of audio). Usage:
``python benchmarks/analysis.py [--runs 5] [--seconds 60]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from _timing import median_time

from upsr.audio.analysis import band_edge_hz, rolloff_hz
from upsr.audio.spectral import lf_replace
from upsr.eval.metrics import lsd, sdr, si_snr

SR = 44100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(2)  # the shared box's budget (numpy FFTs are single-threaded)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    n = int(args.seconds * SR)
    ref = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
    out = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("rolloff_hz (AudioSR, n_fft 2048)", lambda: rolloff_hz(ref, SR)),
        ("band_edge_hz (n_fft 8192)", lambda: band_edge_hz(ref, SR)),
        ("lf_replace 500 Hz transition", lambda: lf_replace(out, ref, SR, 8000.0)),
        ("lf_replace 100 Hz transition", lambda: lf_replace(out, ref, SR, 8000.0, 100.0)),
        ("lsd (aero 2048/512)", lambda: lsd(ref, out)),
        ("si_snr", lambda: si_snr(ref, out)),
        ("sdr (512 taps)", lambda: sdr(ref, out)),
    ]
    print(f"{args.seconds:g} s stereo @ {SR} Hz, median of {args.runs} runs")
    print(f"{'operation':36} {'time s':>8} {'RTF':>8}")
    for name, fn in cases:
        t = median_time(fn, args.runs)
        print(f"{name:36} {t:8.3f} {t / args.seconds:8.4f}")


if __name__ == "__main__":
    main()
