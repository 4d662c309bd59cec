"""Wave-U-Mamba on the CPU: where the time goes, and before/after comparisons.

Published configuration (19 Mamba blocks, 4.2 M parameters), weights drawn with seed 0, input
``--seconds`` of noise at 48 kHz (0.1 RMS), ``restore`` under ``inference_mode``; ``--precision
bf16`` runs under bf16 autocast as ``upsr enhance --precision bf16`` does.

- default: the split of one forward between the 8 Mamba stacks (the 19 Mamba blocks with their
  LayerNorms and residual adds, :class:`upsr.models.wave_u_mamba.MambaStack`, timed with
  forward hooks) and the rest (convolutions, LayerNorms, activations, copies), in
  wall and CPU seconds (median of ``--runs``), then the ``--top`` functions by CPU time
  (cProfile with a process-CPU-time clock, so time other processes take from a shared machine
  is not counted; torch ops appear as their Python entry points);
- ``--baseline FILE``: interleaved A/B against another version of
  ``upsr/models/wave_u_mamba.py`` (e.g. ``git show REV:src/upsr/models/wave_u_mamba.py >
  /tmp/old.py``), both models with the same weights in one process, run alternately
  ``--runs`` times (A,B,B,A,...); prints medians, the ratio and the rel. L2 difference.

    python benchmarks/wave_u_mamba_cpu.py [--seconds 1] [--threads 1] [--runs 5]
        [--precision fp32|bf16] [--baseline FILE] [--top 15]

**Chunked Mamba blocks (issue 13, second round).** The 19 blocks now run as
:func:`upsr.nn.mamba_chunked.mamba_chunked` (LayerNorm, block and residual add chunk by chunk in
time, intermediates in cache, phases on lanes of threads instead of two OpenMP pools; bf16
in_proj/out_proj under autocast). Measured 2026-12-01 20:27-20:55 UTC, 10 s of audio, 2
threads, ``--baseline`` = the model file of main (6ecba3c) in the same process, medians of 5
(A,B,B,A,...), while other engineers' jobs kept the load average at 7-9 (wall times inflated
~5×; CPU seconds in brackets):

    fp32   A 46.31 (16.03)   B 29.92 (11.84)   B/A 0.646 (0.739)   rel. L2 1.65e-7   load 7.4-7.6
    bf16   A 37.34 (14.05)   B 23.51 (9.32)    B/A 0.630 (0.663)   rel. L2 1.10e-3   load 7.4-10.5

Scaled to the quiet-machine 2-thread RTFs of main (``benchmarks/models_cpu.py``, 19:40 UTC,
load 0.6-2: fp32 0.693, bf16 0.744) these ratios give about 0.45-0.51 (fp32) and 0.47-0.49
(bf16): an estimate, to be re-measured on a quiet machine. The old whole-sequence path after
the kernel split (``Mamba(32)``/``BiMamba(32)`` forward, L=48000, 1 thread, CPU ms, main /
this tree in alternating processes, 3 rounds, load 9.6): Mamba 77.6/76.7/51.6 vs
75.2/54.2/71.3, BiMamba 127.2/126.6/104.7 vs 120.6/100.9/115.2 (no change beyond noise).

1 thread, 4 s, bf16, load 9.4-10: A 16.63 (5.09), B 11.12 (3.39): B/A 0.669 (0.666).
Per block at 1 thread (``Mamba(C)`` + LN + residual on L·C = 3.84 M values, CPU s, old path /
chunked): C=16 0.240 / 0.116-0.129, C=64 0.214 / 0.131, C=256 0.310 / 0.266; chunk sizes
256-16384 tried, 1 MiB of in_proj output per lane was best (kept as ``LANE_BYTES``). At 2
threads the first chunked version (numba's OpenMP ``prange`` between torch's OpenMP GEMMs,
~6 regions per chunk) took 5.7 s per C=128 block against 0.38 s at 1 thread: torch ships its
own libgomp, numba's omppool links the system one, and each pool's idle workers spin for 4-10
ms after every region (CPU time burnt during a sleep after one ``mm`` / ``prange``), so one
core was always spinning for the other runtime. The lanes (caller + worker threads blocking
on queues, torch at 1 thread, serial numba kernels) fixed it.

Split of B's fp32 forward now (10 s, 1 thread, CPU s, load 8.5): Mamba stacks 7.55 (67 %),
rest 3.79; largest own CPU times (cProfile): torch.mm 2.39, scan kernel 2.37, conv2d 2.07,
addmm 1.08, layer_norm 0.69, leaky_relu 0.51, conv kernel 0.37. bf16 (4 s, 1 thread): scan
1.12 of 3.09 CPU s, torch.mm 0.91, conv2d 0.40: the float32 scan is now the largest part.

First round, measured 2026-12-01 on the shared 2-core development machine (AMD EPYC with
avx512_bf16, torch 2.13), 1 s of audio, while other jobs kept the load average at 6–12:
absolute times are inflated 2–5×, so only the interleaved ratios mean much. A = the model
file before issue 13's changes (official layout), B = that round's tree; medians of 5, CPU
seconds (wall in brackets):

    fp32, 1 thread     A 3.910 (9.79)   B 3.473 (9.11)   B/A 0.888 (0.930)   load 6.6-7.8
    fp32, 2 threads    A 5.477 (13.98)  B 3.792 (9.76)   B/A 0.692 (0.698)   load 9.0-9.2
    bf16, 1 thread     A 5.017 (23.29)  B 3.886 (20.49)  B/A 0.775 (0.880)   load 9.9-10.4
    bf16, 2 threads    A 4.301 (13.43)  B 3.907 (11.64)  B/A 0.908 (0.867)   load 8.5-10.9

B itself, fp32 against bf16 autocast (interleaved, 1 thread, 4 runs, load 8.7): bf16 takes
1.058× the CPU time (1.023× wall): with the Mamba blocks, transposed convs and output conv in
float32, bf16 covers only the down-path, bottleneck and ResBlock convs, and the casts around
them cost about what the faster convolutions save.

Split of B's fp32 forward (1 thread, CPU time): Mamba blocks 2.16 s (71 %), rest 0.89 s
(29 %); before (A): Mamba 2.20 s (56 %), rest 1.73 s (44 %: conv1d 0.87, LayerNorm 0.40,
copies 0.35, LeakyReLU 0.26, ConvTranspose 0.17, F.pad 0.16, weight norm ~0.09).

Tried and not adopted (same conditions): in-place LeakyReLUs, B/A 0.974 CPU but 1.086 wall
(noise-level); ``torch.compile`` (inductor) of the ResBlocks and down-path conv stages: first
call 146 s wall, then 3.90 CPU s per forward against 3.09 eager (recompile limit hit on the
shared conv helper, one graph per shape), so it never pays for a CLI run; bf16 in the Mamba
blocks' in/out projections: 1/0.866 = 1.15× the CPU time of keeping them float32 under
autocast (the float32 scan needs casts both ways).

**Third round (issue 13, bf16 ≤ 0.4 target), 2026-12-01 22:10-23:30 UTC.** The machine was
loaded throughout by other jobs (a training benchmark, another engineer's enhance runs: load
average 3.5-6 on 2 cores, so a 2-thread forward got about one core: wall ≈ CPU time), which
hides any gain from waiting less at the lanes' barriers and leaves only CPU time to compare.

Where the CPU time goes (bf16, 10 s, 2 threads, the chunked phases timed with
``time.thread_time`` per lane, per forward, load 5): phases 1-2 (LayerNorm, in_proj, conv
kernel, x_proj) 2.57 s, out_proj + residual 1.06 s, the scan kernel 3.62 s, of 10.2 s in all;
the rest (~3 s) is the U-Net outside the Mamba blocks, whose convolutions do about as many
FLOPs as the Mamba projections (~200 GFLOP each per 10 s). Per block the scan is slowest at
Di = 64 (0.26 s; 0.16-0.18 s at Di 128-512): a lane's 32 channels are two vectors per state
update, so the per-step loop overheads weigh. torch.profiler (bf16, 4 s, 1 thread; numba
kernels not seen): ``aten::mm`` 1.37 s (x_proj with its 33-48 output columns at 36 GFLOP/s in
the model, 60-90 alone), ``mkldnn_convolution`` 0.57, ``copy_`` (casts) 0.30, ``layer_norm``
0.24, ``add`` 0.13.

Adopted: the scan's ``2**x`` (:func:`upsr.nn._scan_numba._exp2f`) rounds with one add of
1.5·2**23 + 127, whose low bits are already 2**k's exponent field: 16 instead of 21 vector
instructions per state update (no ``floor``, no float-to-int conversion, no NaN test), same
results to the bit. The serial kernel alone, one lane's channels, interleaved in one process
(1 thread, medians of 7, load ~1): B/A 0.92 (Di 128), 0.94 (256), 0.95 (512), 1.05 (64). The
full forward with main's kernel (A) or this one (B) swapped in, in one process (5 s, 2
threads, 4 runs each, alternating): bf16 B/A 0.902 wall, 0.880 CPU (load 4.8-5.4); fp32
1.000 wall, 1.007 CPU (load 2.9-3.6); 10 s at load 1.0-1.5 (23:24-23:27 UTC): bf16 0.959
wall, 0.985 CPU, fp32 1.085 wall, 1.013 CPU. So no gain shows in the model: the state
updates are not the only limit (the per-step Δ, softplus and gate work, loads and loop
overheads weigh as much at small Di), and the scan is about a third of the CPU time.

Tried and not adopted:

- *One barrier per chunk instead of three* (tick ``i`` running phase 1 of chunk ``i``, 2 of
  ``i - 1``, 3 of ``i - 2``, 4 of ``i - 3`` on rotating buffers; same results to the bit):
  in-process A/B inside the full forward (bf16, 5 s, 4 runs each, load 5.8-6.0) B/A 1.043 wall,
  1.044 CPU at the default chunk size, 1.107 / 1.101 with half-size chunks; separate
  ``models_cpu.py`` runs, alternating (load 4.4-5.9): bf16 RTF A 1.046 0.984 0.938, B 1.153
  1.094 1.141; fp32 A 1.252 1.240 1.302, B 0.839 1.253 1.228; in-process again later (bf16,
  5 s, load 3.5-4.5): the pipelined version 1.13× the wall and CPU time of the three-barrier
  one. Each tick touches four chunks''
  buffers instead of one, so the working set per core is about four times L2 (and half-size
  chunks bring back the barriers). A first version that let each lane recompute the conv
  inputs above its rows (no two-tick delay) broke the stack's bit equality with the
  block-by-block loop (a 3-row GEMM rounds differently).
- SiLU of the gate (and the conv) via ``2**(-x·log2 e)``: 2-3 % faster kernel, but the rounding
  of ``x·log2 e`` costs up to 15 ulp for ``|x| < 16`` (62 over [-87, 80]); not worth it.
- Δ, softplus and gate for blocks of 16 steps before their state updates (longer independent
  work between the dependent ones; same results to the bit): the kernel alone 0.76-1.05× (two
  runs, Di 64-512), but the full bf16 forward with it 1.023× wall, 1.033× CPU (in-process,
  5 s, load 3.6-4.8) against the kernel without it.
- All per-step arrays in one work array (fewer runtime alias checks in the vectorised loops):
  0.80-1.06 against 0.75-0.98 ns per update.
- bf16 out_proj is slower than float32 for the small blocks (one lane's rows, 1 thread: Di 32
  136 µs against 77 µs, Di 64 166 against 131); left as is (about 30 ms per 10 s forward).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import os
import pstats
import statistics
import sys
import time
import typing as tp

import torch


def _autocast(precision: str) -> contextlib.AbstractContextManager[tp.Any]:
    from upsr.infer.precision import autocast

    return autocast(precision, "cpu")


def _signal(seconds: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(1, int(seconds * 48000), generator=g)


def _model(module: tp.Any, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = module.WaveUMamba(module.WaveUMambaConfig()).eval()
    if state is not None:
        model.load_state_dict(state)
    return tp.cast(torch.nn.Module, model)


def _load_file(path: str) -> tp.Any:
    spec = importlib.util.spec_from_file_location("wave_u_mamba_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def split(model: torch.nn.Module, x: torch.Tensor, runs: int, precision: str) -> None:
    """Median wall/CPU seconds of a forward, and of the part inside the Mamba stacks (the 19
    blocks with their LayerNorms and residual adds; hooks on the stacks, not on the Mamba
    modules: a hooked block runs as a module, not chunked)."""
    from upsr.models.wave_u_mamba import MambaStack

    inside = {"wall": 0.0, "cpu": 0.0}
    start: dict[str, float] = {}

    def pre(_m: tp.Any, _i: tp.Any) -> None:
        start["wall"], start["cpu"] = time.perf_counter(), time.process_time()

    def post(_m: tp.Any, _i: tp.Any, _o: tp.Any) -> None:
        inside["wall"] += time.perf_counter() - start["wall"]
        inside["cpu"] += time.process_time() - start["cpu"]

    hooks = [h for m in model.modules() if isinstance(m, MambaStack)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    rows: dict[str, list[float]] = {k: [] for k in ("wall", "cpu", "mwall", "mcpu")}
    with torch.inference_mode(), _autocast(precision):
        model.restore(x)  # type: ignore[operator]  # warm-up
        for _ in range(runs):
            inside["wall"] = inside["cpu"] = 0.0
            w0, c0 = time.perf_counter(), time.process_time()
            model.restore(x)  # type: ignore[operator]
            rows["wall"].append(time.perf_counter() - w0)
            rows["cpu"].append(time.process_time() - c0)
            rows["mwall"].append(inside["wall"])
            rows["mcpu"].append(inside["cpu"])
    for h in hooks:
        h.remove()
    med = {k: statistics.median(v) for k, v in rows.items()}
    seconds = x.shape[-1] / 48000
    print(f"{'':<14}{'wall s':>9}{'CPU s':>9}{'CPU share':>11}")
    print(f"{'forward':<14}{med['wall']:>9.3f}{med['cpu']:>9.3f}{1:>11.1%}   "
          f"(RTF {med['wall'] / seconds:.3f} wall, {med['cpu'] / seconds:.3f} CPU)")
    print(f"{'Mamba stacks':<14}{med['mwall']:>9.3f}{med['mcpu']:>9.3f}"
          f"{med['mcpu'] / med['cpu']:>11.1%}")
    print(f"{'rest':<14}{med['wall'] - med['mwall']:>9.3f}{med['cpu'] - med['mcpu']:>9.3f}"
          f"{1 - med['mcpu'] / med['cpu']:>11.1%}")


def top(model: torch.nn.Module, x: torch.Tensor, precision: str, n: int) -> None:
    prof = cProfile.Profile(time.process_time)
    with torch.inference_mode(), _autocast(precision):
        model.restore(x)  # type: ignore[operator]
        prof.enable()
        model.restore(x)  # type: ignore[operator]
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(f"top {n} by own CPU time (cProfile):")
    print("\n".join(lines[start:]))


def ab(base: torch.nn.Module, new: torch.nn.Module, x: torch.Tensor, runs: int,
       precision: str) -> None:
    times: dict[str, tuple[list[float], list[float]]] = {"A": ([], []), "B": ([], [])}
    with torch.inference_mode(), _autocast(precision):
        ya = base.restore(x).float()  # type: ignore[operator]
        yb = new.restore(x).float()  # type: ignore[operator]
        for r in range(runs):
            order = (("A", base), ("B", new)) if r % 2 == 0 else (("B", new), ("A", base))
            for name, model in order:
                w0, c0 = time.perf_counter(), time.process_time()
                model.restore(x)  # type: ignore[operator]
                times[name][0].append(time.perf_counter() - w0)
                times[name][1].append(time.process_time() - c0)
    wa, wb = (statistics.median(times[k][0]) for k in "AB")
    ca, cb = (statistics.median(times[k][1]) for k in "AB")
    rel = float((ya - yb).norm() / ya.norm())
    print(f"{'':<6}{'wall s':>9}{'CPU s':>9}")
    print(f"{'A':<6}{wa:>9.3f}{ca:>9.3f}")
    print(f"{'B':<6}{wb:>9.3f}{cb:>9.3f}")
    print(f"{'B/A':<6}{wb / wa:>9.3f}{cb / ca:>9.3f}   rel. L2 (B - A) / A = {rel:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--baseline", metavar="FILE",
                    help="another wave_u_mamba.py: interleaved A (it) / B (this tree) timing")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import upsr.models.wave_u_mamba as current

    x = _signal(a.seconds)
    new = _model(current)
    print(f"Wave-U-Mamba, {a.seconds:g} s at 48 kHz, {a.threads} thread(s), {a.precision}, "
          f"median of {a.runs}; load average {os.getloadavg()[0]:.2f}")
    if a.baseline:
        base = _model(_load_file(a.baseline), new.state_dict())
        ab(base, new, x, a.runs, a.precision)
    else:
        split(new, x, a.runs, a.precision)
        if a.top:
            top(new, x, a.precision, a.top)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
