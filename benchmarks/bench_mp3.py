"""MP3 round trips on 10 s of stereo at 44.1 kHz: bitrate, delay, alignment and speed.

Prints one row per (backend, bitrate, mode): the bitrate measured from the encoded frames, the
lag of the raw decode against the input before compensation (cross-correlation on this signal,
at the coded rate), the residual lag of ``mp3_roundtrip``'s output after compensation, and the
median wall time of encode + decode + alignment over ``--runs`` runs (delay calibration is
cached and excluded). Usage: ``python benchmarks/bench_mp3.py [--runs 3] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from upsr.audio import codecs
from upsr.audio.resample import resample
from upsr.audio.synth import music_like

SR = 44100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = int(args.seconds * SR)
    x = (0.5 * music_like(args.seconds, SR, channels=2, seed=1)
         + 0.15 * rng.standard_normal((2, n))).astype(np.float32)

    cases = [("lame", k, False, False) for k in (24, 32, 64, 128, 320)]
    cases += [("lame", 24, False, True), ("lame", 64, False, True), ("lame", 128, True, False)]
    cases += [("sndfile", k, False, False) for k in (32, 64, 128, 320)]
    cases += [("sndfile", 128, True, False)]
    print(f"{args.seconds:g} s stereo @ {SR} Hz, median of {args.runs} runs")
    print(f"{'backend':8} {'kbps':>4} {'mode':9} {'meas.kbps':>9} {'coded sr':>8} "
          f"{'lag raw':>7} {'residual':>8} {'enc+dec s':>9}")
    for backend, kbps, vbr, allow in cases:
        codecs.codec_delay(backend, SR, 2, kbps, vbr, allow)  # calibrate outside the timing
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            r = codecs.mp3_roundtrip(x, SR, kbps, vbr=vbr, backend=backend,
                                     allow_resample=allow, keep_data=True)
            times.append(time.perf_counter() - t0)
        raw, coded_sr = codecs.decode_mp3(r.data)
        ref = resample(x, SR, coded_sr) if coded_sr != SR else x
        lag_raw = codecs.best_lag(raw, ref, -2000, 6000)
        residual = codecs.best_lag(r.samples, x, -2000, 2000)
        mode = ("ABR" if vbr else "CBR") + ("+resamp" if allow else "")
        print(f"{backend:8} {kbps:4d} {mode:9} {r.kbps:9.2f} {coded_sr:8d} {lag_raw:7d} "
              f"{residual:8d} {statistics.median(times):9.3f}")


if __name__ == "__main__":
    main()
