"""Benchmark ``upsr enhance``: real-time factor and peak RSS of the whole CLI on long files.

    python benchmarks/enhance.py                     # 1 h stereo 44.1 kHz with sbr
    python benchmarks/enhance.py --minutes 10 --models apollo,wave-u-mamba,aeromamba
    python benchmarks/enhance.py --minutes 2 --models tiny-aeromamba --files 8 --jobs 1,2
    python benchmarks/enhance.py --minutes 1 --repeat 5 --models tiny10k-aeromamba,sbr \
        --trees src,/tmp/before/src          # A/B: runs alternate between two source trees

Each run is a fresh ``upsr enhance`` process (so peak RSS is the tool's own, imports included),
timed end to end; neural models use random weights saved to a temporary checkpoint. The input
is band-limited music-like audio written block-wise (the generator never holds the hour).
Prints a table: model, audio minutes, wall seconds (median of --repeat runs), x real time,
real-time factor, CPU seconds (user + system, median), peak RSS. ``tiny-aeromamba`` is
recipes/tiny/aeromamba.toml's network (28 k parameters) and ``tiny10k-aeromamba`` a smaller
one (11 k: 32 bins, two encoder layers, hop 8 at 11.025 kHz: twice the frames), both with
Mamba running (the paper's forward): what the engine itself costs around a model that
does almost nothing. ``--files N`` splits the audio into N files (for ``--jobs``); ``--jobs
1,2`` and ``--precision fp32,bf16`` add rows per value; ``--trees A,B`` runs every case with
``PYTHONPATH`` set to each source tree in turn (A, B, A, B, ...: an interleaved before/after
on a loaded machine) and adds a row per tree; ``--malloc default,reuse`` does the same with
``UPSR_MALLOC``. With several files the RSS after each one (last run) is printed too.

Measured 2026-12-01, 1 min stereo, 1 torch thread, before (391a67c) / after the engine work of
issue 13, interleaved, medians (sbr of 5, load ~3.5; the AEROMambas of 3, load 2-5, their
single runs spread 2x):

    model               wall s before/after   cpu s before/after   peak RSS MiB before/after
    sbr                 4.0 / 3.2 (15.0x -> 18.5x)   4.0 / 3.2        469 / 395
    tiny-aeromamba      22.1 / 26.1 (noise)         25.7 / 29.1       957 / 737
    tiny10k-aeromamba   13.8 / 13.8                 17.0 / 17.6       910 / 707

glibc's allocator (``--malloc default,reuse``: UPSR_MALLOC per run, alternating; upsr's
default is reuse, :mod:`upsr.infer.malloc`), 2026-12-01, 1 torch thread, 1 min stereo, medians;
load 1-2 (sbr) and 5 (the others) on 2 cores:

    model                          wall s default/reuse  cpu s default/reuse  peak RSS MiB
    sbr (5 runs)                   3.6 / 3.3             3.5 / 3.2            394 / 386
    tiny10k-aeromamba (3 runs)     25.7 / 22.8           8.9 / 7.8            657 / 640
    aeromamba, 20 files (3 runs)   113.8 / 83.9          50.7 / 43.4          706 / 684

(before malloc_trim between files.) RSS after each of the 20 equal files was flat (596 MiB
default, 643 MiB reuse). A batch of 30 files of different lengths (0.5-11.7 s, 180 s in all,
published AEROMamba, 1 run each, load ~9) is what grows: RSS after each file rose from 569 to
1376 MiB with glibc's defaults (peak 1574 MiB, CPU 220 s) and from 567 to 2452 MiB with the
heap reused and never trimmed (peak 2453 MiB, CPU 192 s). With ``malloc_trim(0)`` after
every file (what upsr does) it rose from 484 to 727 MiB (peak 2144 MiB, CPU 188 s), against
520 to 1657 MiB (peak 1858 MiB, CPU 201 s) in a default run right after it. (RSS read after
each file's trim; what still grows with glibc's defaults is the heap's free memory, which
its automatic trim only returns from the top.)

The AEROMambas' time is their forward passes (~80 %: statistics pass + output pass, each chunk
with 2 s of Mamba context each side) and imports (torch 190 MiB, numba with its kernels
140 MiB); the engine's own work (analysis, resampling, splice, overlap-add, writing) is ~3 %.

Issue 13, the tiny model (engineer "tiny"), 1 min stereo, --chunk-s 10, interleaved against an
untouched main (/work/wt/base) with ``--trees``, median of 3, CPU seconds (the load average of
8-10 on 2 cores made wall times meaningless: other engineers' jobs), 1 torch thread:

    model               cpu s before/after   peak RSS MiB before/after   (load 8.4-8.5)
    tiny10k-aeromamba   9.4 / 6.0 (-36 %)    617 / 428 (runs 598-617 / 411-428)
    sbr                 3.9 / 3.9            387 / 376 (output byte-identical)

The same at 2 torch threads (load 3.9-5; every 2-thread parallel region then waits for a busy
core, so both trees burned ~4x the CPU of their 1-thread runs, and wall times spread 2x):
tiny10k-aeromamba wall 34.1 / 30.8 s, CPU 29.7 / 26.4 s, peak RSS 598-640 / 522-533 MiB;
sbr 9.0 / 8.9 s, 386 / 377 MiB. At 2 threads the transient peaks of the model's parallel
operations add ~100 MiB over the 1-thread run (RSS after each call ~400 MiB, high-water mark
482); ``MALLOC_ARENA_MAX=1`` did not change it (515 / 512 MiB). Re-measure on a quiet machine.

What changed, with what it saved (1 thread, CPU s / MiB, measured in isolation):
- ``--precision auto`` keeps models under 1 M parameters in float32 (infer/precision.py,
  ``BF16_MIN_PARAMS``): bf16 autocast also disables the model's fused inference paths, and with
  4-channel convolutions it only adds casts: 9.1-10.5 -> 5.9-7.3 CPU s, 611-642 -> 567 MiB;
- Mamba blocks with ``d_inner·d_state <= 32`` run in plain torch at inference
  (nn/small_scan.py, dispatched first in ``Mamba.forward``), so the process never imports numba
  nor the scipy.linalg numba pulls in: numba + its kernels cost 0.8 CPU s and 135 MiB per
  process (219 -> 356 MiB measured on import + first call), the torch scan ~20 ms more per
  chunk row than the numba kernel (1 thread: 31 + 9 ms against 14 + 4 ms per 14 s row); it
  runs on one thread whatever the caller's count (at 2 threads its small operations each
  became a parallel region: 49-346 ms instead of 23 on the loaded machine);
- the statistics pass runs with at most 0.5 s of context (engine ``STATS_CONTEXT_S``), same
  kept regions: 8 % of the file's CPU, chunked-vs-whole error 1.118e-6 -> 1.121e-6;
- the splice runs channel by channel (float64 work arrays of one channel at a time): peak RSS
  447-456 -> 407-434 MiB.

Where the 6 s go now (CPU s at 1 thread, from marks in the process): Python + torch import
1.3, CLI/model load 0.3, analysis 0.25, statistics pass 1.5, output pass 1.6 (12 rows of
14.45 s), engine around it (resampling, splice, overlap-add, writing) ~0.8. Peak RSS: torch
alone 219 MiB, 245 after the model loads, 270 after analysis; one forward of a 14.45 s row
adds 49 MiB transiently; the rest is glibc heap growth over the run (RSS climbs from ~300 to
~390 MiB through the output pass; with ``MALLOC_MMAP_THRESHOLD_=131072`` the same run peaks
at 387 MiB but takes twice the CPU).

The 20x / 400 MB target: the pipeline without a neural model (sbr) already takes 3.3 s wall
(18x) at 2 threads on a quiet machine; torch's import alone is 1.3-1.45 CPU s and 219 MiB,
single-threaded. With --chunk-s 10, each 10 s chunk runs 14.45 s of input (2 s of Mamba
context each side, ``MAMBA_REACH_S`` in models/aeromamba.py), twice (statistics + output).
Not done here (models/aeromamba.py belongs to engineer "aero"): measured on the same model,
a Mamba reach of 0.5 / 0.25 s instead of 2 s leaves the chunked-vs-whole error at 1.12e-6
(identical to 3 digits; 0 s: 1.13e-6) and cuts the model's CPU by 26-28 % (30 s, 10 s chunks:
0.738 -> 0.543 / 0.534 CPU s).

The lead's check after merging all of issue 13's second round (2026-12-01 21:23 UTC, 2 threads,
``--trees`` alternating 6ecba3c / the merge, medians of 3, load 1.5-1.9, nothing else running):

    model               wall s       x real          cpu s        peak RSS MiB
    sbr                 3.4 -> 3.0   17.9 -> 20.0    4.0 -> 3.5   395 -> 379
    tiny10k-aeromamba   8.9 -> 5.0    6.8 -> 12.0   12.2 -> 7.1   626 -> 637

At 2 threads the tiny model's peak stays near 600 MiB (its runs: 565, 607, 637 MiB). Right
after, ``--malloc default,reuse`` (same tree, 2 threads, medians of 3, load 1.3-1.5):
glibc defaults 7.2 s wall (8.3x), 10.6 CPU s, 534 MiB; upsr's heap reuse 6.3 s (9.6x), 8.5
CPU s, 599 MiB: the setting buys 20 % CPU for 65 MiB. (The same tree ran at 9.6x here and 12.0x
above: this shared host's speed drifts by that much within minutes.)

Issue 13, the tiny model's last round (engineer "tiny2"): small models run their rows side by
side (:mod:`upsr.infer.parallel`: on a CPU, a model under 1 M parameters gets one worker
thread per torch thread, each with its own replica and one intra-op thread; the two channels
of a stereo chunk, or two chunks of a mono file, run at once; so do the statistics pass's
channels and the splice's), the splice keeps the same arithmetic in a third less memory, the
row workers share the main heap, and the CLI keeps Python's cyclic collector away from
torch's objects (paused while torch loads, then ``gc.freeze``; :mod:`upsr.infer.malloc`).
``--trees`` alternating an untouched main (8ec94dc) and the branch, 2 threads, medians of 3,
on a host that another engineer's jobs kept at load 4.5-5.3 on its 2 cores (a 2-thread
process then waits for a busy core in every parallel region: the untouched main's CPU seconds
are mostly spinning, so its wall and CPU times here are far above its quiet-machine ones;
the branch's one-thread workers do not spin):

    1 min stereo        wall s before/after    x real        cpu s before/after  peak RSS MiB
    tiny10k-aeromamba   28.4 / 12.0            2.1 -> 5.0    23.2 / 6.7          515-562 / 502-524
    sbr                 12.1 / 6.0             5.0 -> 9.9    6.9 / 3.8           381-384 / 462-478
    10 min stereo (1 run each)
    tiny10k-aeromamba   248.7 / 39.9           2.4 -> 15.0   196.2 / 39.0        579 / 515
    sbr                 58.1 / 13.8            10.3 -> 43.5  56.2 / 13.3         405 / 474

Again at 23:06 (load 2.6 at the start, 4.3 at the end; medians of 3): tiny10k-aeromamba
27.7 / 6.0 s wall (2.2x -> 10.0x), 27.0 / 5.8 CPU s, peak 526-592 / 497-536 MiB; sbr 7.7 /
3.3 s (7.7x -> 18.1x), 7.6 / 3.1 CPU s, 372-384 / 451-481 MiB. Other sizes, 1 min, medians of
2 (load 4.8-6.1): tiny-aeromamba (28 k parameters, rows side by side) 50.8 / 8.4 s wall, 49.9
/ 7.9 CPU s, 611-647 / 610-636 MiB; the published AEROMamba (21 M: intra-op threads, bf16,
unchanged path) 206.5 / 200.6 s, 203.6 / 195.8 CPU s, 1994-2217 / 2204-2242 MiB (the same
within its spread).

sbr's output is byte-identical to before (``cmp``: hyperrogue's hr3-caves.ogg, a 30 s WAV of
it, the benchmark's synthetic minute); the tiny model's is identical between ``--jobs 1`` and
``--jobs 2`` (``cmp``, a stereo and a mono file), and to the serial path
(``tests/infer/test_parallel.py``).

Where the time goes now (the branch, 2 threads, marks in the process, load ~1 before the
other engineer's jobs started): torch imported at 1.28 s wall (1.43 CPU s, 219 MiB), the
statistics pass starts at 1.88 s (CLI, model, analysis), runs 0.84 s (was 1.45 s), the
output pass and the writing 1.61 s (was 2.47): 4.33 s in all against 5.79 s for the
untouched main in the same minute (13.9x against 10.4x), 6.15 against 8.19 CPU s. The
cyclic-GC change came after that: ``import torch`` takes 1.45-1.53 CPU s with the collector
paused against 1.76-2.03 with it running, and the interpreter's exit after it 0.18 s
instead of 0.87-1.09 s (a full pass over torch's objects; loaded machine, medians of 3-5).

The floor for 20x at one minute: 20x is 3.0 s for the whole process. Python and torch's
import take 1.3 s wall on a quiet core (single-threaded: nothing else can run then), CLI,
model and analysis 0.6 s more; the passes then have 1.1 s of wall for ~2.6 CPU s of model
and engine work spread over two cores. The 10-minute steady state, where the import is paid
once, runs at 15x even on the loaded host above, where its two workers mostly shared one core
(39.0 CPU s in 39.9 s of wall for 600 s of audio: ~30x on two free cores).

Memory: two rows at once hold two forwards' activations: one 14.45 s row of the tiny model
peaks at +83 MiB (statistics pass, 11 s rows: +51-67 MiB), the splice of one channel of such a
chunk at +36 MiB (+53 before). Peak RSS at 2 threads stays ~500-520 MiB (RSS samples: 273
MiB when the statistics pass starts, 439 at its peak with two workers against 344 with one,
539 in the output pass against 425); the row workers sharing the main heap
(``M_ARENA_MAX=1``) took 30-40 MiB off (sbr 503 -> 462-476, tiny 546 -> 515-528). The < 400 MB
target is not met: torch's import alone is 219 MiB (146 MiB anonymous: 87 MiB of it glibc
heap in use), and one forward of a 14.45 s row of this model needs +83 MiB (its first
encoder layer's FTB on [1, 4, 32, 19914] float activations +55 MiB, the iSTFT +33 MiB);
one thread (``OMP_NUM_THREADS=1``) peaks at ~425-440 MiB.

The lead's check after merging this round (2026-12-01 23:47-23:57 UTC, 2 threads, ``--trees``
alternating 8ec94dc / the merge, nothing else running, load 1.2-2.0):

    case                         wall s (x real)           cpu s         peak RSS MiB
    1 min, median of 5
    tiny10k-aeromamba            6.6 (9.1x) -> 4.6 (13.0x)  8.9 -> 6.2    589 -> 540 (497-540)
    sbr                          3.9 (15.4x) -> 3.0 (20.2x) 4.5 -> 3.6    384 -> 484 (445-484)
    10 min, median of 2
    tiny10k-aeromamba            41.2 (14.6x) -> 26.0 (23.1x)  61.4 -> 40.5  618 -> 552
    sbr                          13.3 (45.0x) -> 11.1 (54.0x)  18.0 -> 15.8  398 -> 493
    1 min, published AEROMamba (21 M parameters: the unchanged intra-op path), median of 2
    aeromamba                    83.8 -> 79.0              156.6 -> 151.0   2344 -> 2163

The merge at one torch thread (``--threads 1``: serial rows, the memory of one forward),
medians of 3 (1 min) and 2 (10 min): sbr 3.0 s (20.1x), 2.9 CPU s, 380 MiB on 1 min; 13.9 s
(43x), 414 MiB on 10 min; tiny10k-aeromamba 5.2 s (11.5x), 426 MiB on 1 min. Rows side by
side are what the second core buys for small models: on 10 min, sbr 43x -> 58x (10.3 s, a
run right after) for ~80 MiB more; on 1 min the import dominates (sbr 3.0 s either way).

Issue 13, fourth round: where the tiny model's memory goes, and ``UPSR_MALLOC=compact``
(2026-12-02 00:20-00:50 UTC, 1 min stereo, 2 threads unless noted, load 0.3-1.7). With
upsr's default heap (``reuse``) the peak keeps rising through the file (RSS sampled every
3 ms: 295 MiB when the statistics pass starts, 476 after it, 540-610 at the end), while
the tensors alive at once need far less: one 14.45 s row of the 11 k-parameter model adds
+46 MiB at its peak (1 thread, every block above 64 KiB mapped on its own, so RSS follows
what is alive). ``malloc_trim(0)`` after every row or every wave of rows did not lower the
peak (498-531 MiB, +1 s of system time): the heap grows within one forward, whose blocks of
different sizes do not fit each other's holes. Other allocators in ``LD_PRELOAD``
(Debian's jemalloc 5.3: 450-453 MiB, 5.5-5.7 s; mimalloc 2.0: 513-532 MiB, 4.7-5.4 s)
against reuse's 512-525 MiB in 4.3-4.6 s. Blocks above a fixed threshold mapped on their
own (``MALLOC_MMAP_THRESHOLD_``: 64 KiB to 8 MiB, with or without trimming, with or without
transparent huge pages): 390-525 MiB, the lowest (390-406) at 64 KiB-1 MiB, for 1.0-1.7x the
wall time (0.3-3.5 s more system time: page faults; 1.4-1.7x at the thresholds that help).
That became ``UPSR_MALLOC=compact`` (:mod:`upsr.infer.malloc`); this script, ``--malloc
reuse,compact``, alternating, median of 3:

    model                              wall s (x real)   cpu s   peak RSS MiB
    tiny10k-aeromamba  reuse           4.5 (13.3x)       6.1     560
                       compact         7.6 (7.9x)        11.1    393
    sbr                reuse           3.0 (19.8x)       3.7     479
                       compact         3.9 (15.2x)       5.3     393

At one thread (``/usr/bin/time``, 2 runs): tiny compact 7.5-8.9 s, 348 MiB (reuse 5.2-7.1 s,
407-431 MiB). The same on 30 s of stereo music (hyperrogue's hr3-caves.ogg, random weights,
``/usr/bin/time``, 2 alternating runs each): the published AEROMamba reuse 39-41 s,
2040-2245 MiB, compact 61-62 s, 897 MiB; Wave-U-Mamba reuse 39-48 s, 1368-1687 MiB, compact
61-62 s, 1047 MiB.

After AEROMamba's forward dropped three of its buffers early (the input spectrum once
normalised, the denormalised output in place, the iSTFT's padded spectrum in one buffer: one
14.45 s row of the 11 k model peaks at 41.0 instead of 46.7 MiB), 01:08 UTC, load 0.9-1.3,
median of 3, ``--malloc reuse,compact`` (the one-thread rows with ``--threads 1``):

    model                              wall s (x real)   cpu s   peak RSS MiB
    tiny10k-aeromamba  reuse           4.5 (13.5x)       6.1     513
                       compact         6.4 (9.3x)        9.3     381
    sbr                reuse           2.9 (20.7x)       3.5     479
                       compact         4.2 (14.4x)       5.5     394
    tiny10k-aeromamba, 1 thread
                       reuse           5.1 (11.7x)       5.1     423
                       compact         9.8 (6.1x)        9.8     344

So the tiny model's < 400 MB target (381 MiB) is met only in compact mode (381 MiB at 2
threads, right at the bound, 344 MiB at one), at 6-9x real time: each row in flight needs
~41 MiB at its peak, on top of torch's 219 MiB and the ~70 MiB the CLI, the file's analysis
and its buffers hold before the model starts; the 13-24x needs upsr's default heap, which
holds ~1.35x that.

The tiny model over an archive (``--minutes 10 --files 10``: ten 1-minute files in one
process, median of 3, load ~1.3, before the three buffers): 25.1 s (23.9x), 38.9 CPU s,
peak 542 MiB (273-331 MiB after each file); sbr 11.4 s (52.5x), 500 MiB. The import is paid
once per process: one 1-minute file per process costs 4.5 s (13x) of which ~1.9 s are
imports and start-up.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

# small configurations by name: (registry name, build overrides)
SMALL = {"tiny-aeromamba": ("aeromamba", {"channels": 4, "growth": 1, "n_fft": 128,
                                          "hop_length": 64, "d_state": 4, "dconv_depth": 1}),
         "tiny10k-aeromamba": ("aeromamba", {"channels": 4, "growth": 1, "n_fft": 64,
                                             "hop_length": 32, "strides": (8, 4),
                                             "d_state": 4, "dconv_depth": 1})}


def make_input(path: Path, minutes: float, sr: int = 44100, cutoff: float = 11000.0) -> None:
    from upsr.audio import synth

    block = synth.brickwall(synth.music_like(10.0, sr, channels=2, seed=1), sr, cutoff)
    total = int(minutes * 60 * sr)
    with sf.SoundFile(str(path), "w", sr, 2, subtype="PCM_16") as f:
        done = 0
        rng = np.random.default_rng(0)
        while done < total:
            n = min(block.shape[1], total - done)
            f.write((block[:, :n] * rng.uniform(0.6, 1.0)).T)
            done += n


# The CLI run as the ``upsr`` command runs (``main()`` without argv: upsr owns the process),
# plus the RSS after each finished file (one process: --jobs 1) and the peak RSS at the end.
CHILD = """\
import os, resource, sys
from upsr.cli.main import main
per_file = []
def rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
try:  # after the memory handed back between files (upsr.infer.malloc), else at each file
    import upsr.infer.malloc as M
    trim = M.between_files
    def noted():
        released = trim()
        per_file.append(rss_mib())
        return released
    M.between_files = noted
except (ImportError, AttributeError):
    import upsr.infer.workers as W
    plain = W.enhance_files
    def counted(items, *args, on_item=None, **kwargs):
        def note(item):
            if on_item is not None:
                on_item(item)
            per_file.append(rss_mib())
        return plain(items, *args, on_item=note, **kwargs)
    W.enhance_files = counted
try:
    main()
except SystemExit:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    files = " ".join(f"{r:.0f}" for r in per_file)
    sys.stderr.write(f"\\nRSS_FILES_MIB {files}\\nPEAK_RSS_KB {peak}\\n")
    raise
"""


def run_once(args: list[str], tree: str | None = None, malloc: str = ""
             ) -> tuple[float, float, float, list[float]]:
    """(wall seconds, peak RSS MiB, CPU seconds: user + system, RSS MiB after each file) of
    one CLI process (``tree``: its PYTHONPATH; ``malloc``: its UPSR_MALLOC). On a loaded
    machine the CPU seconds compare better than the wall time, which then mostly measures the
    other processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    if malloc:
        env["UPSR_MALLOC"] = malloc
    res = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                         env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        raise SystemExit(f"enhance failed:\n{res.stderr}")
    rss_kb = int(res.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    per_file = [float(v) for v in
                res.stderr.rsplit("RSS_FILES_MIB", 1)[1].split("\n", 1)[0].split()]
    return wall, rss_kb / 1024.0, cpu, per_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--models", default="sbr")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk-s", default="10")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--jobs", default="1")
    ap.add_argument("--precision", default="")
    ap.add_argument("--trees", default="", help="comma-separated source trees to alternate")
    ap.add_argument("--malloc", default="", help="comma-separated UPSR_MALLOC values to "
                    "alternate (reuse: upsr's default; default: glibc's)")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    rows = []
    with tempfile.TemporaryDirectory(prefix="upsr-bench-") as tmp:
        src_dir = Path(tmp) / "in"
        src_dir.mkdir()
        for i in range(a.files):
            make_input(src_dir / f"part{i}.wav", a.minutes / a.files)
        for name in a.models.split(","):
            model = name
            if name != "sbr":
                import torch

                from upsr import checkpoint, models

                torch.manual_seed(0)
                reg, over = SMALL.get(name, (name, {}))
                model = str(Path(tmp) / f"{name}.safetensors")
                checkpoint.save(model, models.build(reg, **over))
            trees = a.trees.split(",") if a.trees else [""]
            arms = [(t, m) for t in trees for m in (a.malloc.split(",") if a.malloc else [""])]
            for jobs in a.jobs.split(","):
                for prec in (a.precision.split(",") if a.precision else [""]):
                    walls: dict[tuple[str, str], list[float]] = {arm: [] for arm in arms}
                    peaks: dict[tuple[str, str], list[float]] = {arm: [] for arm in arms}
                    cpus: dict[tuple[str, str], list[float]] = {arm: [] for arm in arms}
                    files: dict[tuple[str, str], list[float]] = {}
                    for i in range(a.repeat):
                        for arm in arms:  # interleaved: A, B, A, B, ...
                            out = Path(tmp) / f"out-{name}-{jobs}-{prec}-{i}"
                            extra = ["--jobs", jobs] if jobs != "1" else []
                            extra += ["--precision", prec] if prec else []
                            w, r, cpu, per_file = run_once(
                                ["enhance", str(src_dir), "-o", str(out), "-q", "--model",
                                 model, "--device", "cpu", "--chunk-s", a.chunk_s, *extra],
                                arm[0] or None, arm[1])
                            walls[arm].append(w)
                            peaks[arm].append(r)
                            cpus[arm].append(cpu)
                            files[arm] = per_file
                            shutil.rmtree(out, ignore_errors=True)
                    for arm in arms:
                        tree, malloc = arm
                        wall = statistics.median(walls[arm])
                        audio_s = a.minutes * 60
                        label = name + (f" j{jobs}" if jobs != "1" else "") + (
                            f" {prec}" if prec else "") + (f" [{tree}]" if tree else "") + (
                            f" malloc={malloc}" if malloc else "")
                        rows.append((label, a.minutes, wall, audio_s / wall, wall / audio_s,
                                     statistics.median(cpus[arm]), max(peaks[arm])))
                        print(f"{label}: wall s {' '.join(f'{w:.1f}' for w in walls[arm])}, "
                              f"cpu s {' '.join(f'{c:.1f}' for c in cpus[arm])}, "
                              f"peak RSS MiB {' '.join(f'{r:.0f}' for r in peaks[arm])}",
                              flush=True)
                        if len(files[arm]) > 1:
                            print(f"  RSS MiB after each file (last run): "
                                  f"{' '.join(f'{r:.0f}' for r in files[arm])}", flush=True)
    print(f"\nupsr enhance, {a.minutes:g} min stereo 44.1 kHz, {os.cpu_count()} CPUs, "
          f"torch threads {a.threads}, median of {a.repeat}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")
    width = max([24] + [len(r[0]) + 2 for r in rows])
    print(f"{'model':<{width}}{'minutes':>8}{'wall s':>10}{'x real':>9}{'RTF':>8}{'cpu s':>8}"
          f"{'peak RSS MiB':>14}")
    for name, minutes, wall, speed, rtf, cpu, rss in rows:
        print(f"{name:<{width}}{minutes:>8g}{wall:>10.1f}{speed:>9.2f}{rtf:>8.3f}{cpu:>8.1f}"
              f"{rss:>14.0f}")


if __name__ == "__main__":
    main()
