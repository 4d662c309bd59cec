"""Throughput of ``upsr degrade``: seconds of audio processed per wall-clock second.

Generates ``--minutes`` of stereo 44.1 kHz audio with :func:`upsr.audio.synth.music_like`
(split into one-minute files) in a temporary folder, then times each stage on it and the real
command end to end, with the AudioSR/NVSR low-pass recipe plus Apollo's MP3 bitrates::

    python benchmarks/degrade.py [--minutes 10] [--runs 3]

Prints a table (stage, audio s, wall s, x real-time; median of ``--runs``). Degradation uses
numpy/scipy/soxr/LAME only (no torch), so no thread setting is needed; ``--jobs 2`` uses two
worker processes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import median_time

SR = 44100
SPEC = "lowpass=cheby1,ellip,butter,boxcar:2-10:2k-16k mp3=24,32,48,64,96,128"
FLAGS = ["--lowpass", "cheby1,ellip,butter,boxcar:2-10:2k-16k", "--mp3", "24,32,48,64,96,128"]


def make_source(folder: Path, minutes: int) -> list[np.ndarray]:
    """One minute of music-like stereo audio, rotated differently for each file."""
    import soundfile as sf

    from upsr.audio.synth import music_like

    base = music_like(60.0, SR, 2, seed=0)
    clips = []
    for i in range(minutes):
        clip = np.roll(base, i * 4410, axis=1)
        sf.write(folder / f"track_{i:02d}.wav", clip.T, SR, subtype="PCM_16")
        clips.append(clip)
    return clips


def run_cli(src: Path, work: Path, jobs: int) -> None:
    from upsr.cli.main import main

    out = work / f"out_{time.perf_counter_ns()}"
    try:
        main(["degrade", str(src), str(out), *FLAGS, "--jobs", str(jobs), "-q"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code != 0:
        raise RuntimeError(f"upsr degrade exited {code}")
    shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from upsr.data.degrade import degrade_array, pair_lag

    with tempfile.TemporaryDirectory(prefix="upsr-bench-degrade-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        clips = make_source(src, args.minutes)
        audio_s = sum(c.shape[1] for c in clips) / SR

        def stage(spec: str):
            return lambda: [degrade_array(c, SR, spec, seed=i) for i, c in enumerate(clips)]

        def lag():
            for c in clips:
                pair_lag(c, SR, c, SR)

        rows = [
            ("low-pass (degrade_array)", stage(SPEC.split()[0])),
            ("MP3 round trip (degrade_array)", stage(SPEC.split()[1])),
            ("low-pass + MP3 (degrade_array)", stage(SPEC)),
            ("lag measurement (pair_lag)", lag),
            ("upsr degrade, --jobs 1", lambda: run_cli(src, work, 1)),
            ("upsr degrade, --jobs 2", lambda: run_cli(src, work, 2)),
        ]
        print(f"{args.minutes} min of stereo 44.1 kHz audio in {args.minutes} files; "
              f"spec: {SPEC}; median of {args.runs} runs")
        print(f"| {'stage':<32} | {'audio s':>8} | {'wall s':>8} | {'x real-time':>11} |")
        print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
        for name, fn in rows:
            wall = median_time(fn, args.runs, warmup=False)
            print(f"| {name:<32} | {audio_s:8.1f} | {wall:8.2f} | {audio_s / wall:11.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
