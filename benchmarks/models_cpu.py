"""CPU benchmark of the restorers in their published configurations (random weights).

Per model, for ``--seconds`` of audio (default 10 s) at the model's input rate:

- real-time factor: median wall time of ``--runs`` forward passes / audio duration;
- peak memory: the resident-set high-water mark added by one cold forward pass, measured in a
  fresh subprocess (``ru_maxrss`` after minus RSS before);
- FLOPs per second of audio, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls
  and convolutions only; elementwise ops are not counted, so this is a lower bound), plus the
  analytic FLOPs of the Mamba selective scans, which the counter cannot see (``scan_flops``);
- fraction of measured matmul throughput: (counted FLOPs / wall time) / the GFLOP/s of a
  1024×1024 float32 ``torch.mm`` with the same thread count.

With ``--precision bf16`` the timed forwards (and the memory child) run under
``upsr.infer.precision.autocast("bf16", "cpu")``, as ``upsr enhance --precision bf16`` does; the
table then also gives the relative L2 difference of the bf16 output from the float32 one.

Usage: ``python benchmarks/models_cpu.py [NAME ...] [--seconds 10] [--runs 5] [--threads 2]
[--precision fp32|bf16] [--malloc reuse|compact|default] [--no-flops]``. ``--malloc reuse``
(the default) sets glibc's allocator as ``upsr enhance`` does (:mod:`upsr.infer.malloc`, the
same function), ``compact`` as ``UPSR_MALLOC=compact upsr enhance`` does, ``default`` leaves
it alone; the table also gives the median CPU seconds (user +
system, all threads) and the minor page faults per timed forward.
Add a model by adding an entry to ``MODELS`` (a function returning the model and its input rate).

Measured 2026-12-01 (issue 13), 2 threads, 10 s, median of 3, quiet machine (load 0.2-2),
before = d37e32e, after = the speed work merged (RTF; bf16 rel. L2 vs float32 in brackets):

    model                fp32 before  fp32 after  bf16 before  bf16 after
    aeromamba (paper)    0.421        0.266       0.249        0.202 (8.6e-3)
    aeromamba-official   0.271        0.228       0.135        0.139 (5.2e-3)
    apollo               2.855        2.646       2.066        1.049 (1.2e-2)
    wave-u-mamba         1.270        0.672       0.889        0.647 (1.0e-3)

glibc's allocator, same day, fp32, alternating pairs: with ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=68719476736`` in the environment (large temporaries come from the heap
and are reused instead of being mapped and page-faulted in on every call) wave-u-mamba ran at
0.531 / 0.517 against 0.679 / 0.723 and aeromamba-official at 0.185 / 0.171 against 0.192 /
0.239, with its peak RSS 1.2-1.3x higher for wave-u-mamba.

``upsr enhance`` now sets this itself (:mod:`upsr.infer.malloc`; ``--malloc reuse``, this
script's default). Measured 2026-12-01 19:56-20:55 UTC, 1 torch thread, ``--runs 3 --no-flops``,
alternating processes (default, reuse; the order flipped each repeat), medians over the
repeats; the machine was heavily loaded by other engineers (1-min load 3.5-11, median ~8 on
2 cores), so the wall-time RTF is mostly other processes' time and the CPU seconds per forward
(user + system) compare better:

    model               audio prec  CPU s default  CPU s reuse  ratio  faults/fwd default  reuse
    aeromamba-official  10 s  fp32  4.11           3.65        0.89   272 k               5 k
    aeromamba-official  10 s  bf16  2.51           2.08        0.83   138 k               7 k
    aeromamba (paper)   10 s  fp32  6.28           4.89        0.78   376 k               3 k
    aeromamba (paper)   10 s  bf16  3.76           3.58        0.95   220 k               7 k
    wave-u-mamba         5 s  fp32  5.96           4.76        0.80   416 k              11 k
    wave-u-mamba         5 s  bf16  5.14           4.25        0.83   360 k               6 k
    apollo               2 s  fp32  9.21           8.74        0.95   461 k               1 k
    apollo               2 s  bf16  3.75           3.77        1.01    25 k               0

Peak RSS of one cold forward (memory child, medians) moved by -3 % to +54 % (aeromamba-official
fp32 457 -> 704 MiB, wave-u-mamba bf16 780 -> 978 MiB, apollo fp32 501 -> 579 MiB): the heap
fragments where mapped blocks would have been returned. Apollo in bf16 hardly allocates large
blocks per call (25 k faults), so it gains nothing. Alternatives, measured 21:00 UTC on
aeromamba-official fp32 10 s (1 thread, 2 alternating repeats, load 3.4-5.6; CPU s per forward,
faults per forward, peak MiB): glibc default 4.29 / 4.39, 308-319 k, 425-469;
``MALLOC_MMAP_MAX_=0`` alone 4.12 / 4.33, 265 k, 568-576 (setting it freezes the trim threshold
at 128 KiB: the heap's top is handed back and faulted in again after every call);
``MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=1073741824`` (mmap left on) 3.72 / 4.17, 14
k, 594-605 (a 1 GiB top pad lets the heap's top serve the large blocks before mmap is tried);
upsr's setting 3.90 / 3.51, 2-7 k, 487-595. Raising trim threshold and top pad works almost as
well, but depends on the pad exceeding what a call needs; ``M_MMAP_MAX=0`` does not. A fixed
``M_MMAP_THRESHOLD`` of e.g. 1 GiB (glibc 2.36 accepts it) with trimming off would act like
``M_MMAP_MAX=0`` here (not measured).

Second round of issue 13 (2026-12-01 21:11-21:29 UTC, 2 threads, 10 s, median of 3 forwards
per run, load 1.2-1.9 with nothing else running): before = 6ecba3c (the table above's "after",
glibc defaults), after = the allocator setting, the AEROMamba bf16 path and the chunked
Wave-U-Mamba stacks merged (this script's default ``--malloc reuse``). Runs alternated
before/after; RTF per run, then the median (bf16 rel. L2 vs float32 in brackets):

    fp32                 before runs    after runs                       after median
    aeromamba (paper)    0.340 0.370    0.258 0.268                      0.26
    aeromamba-official   0.218 0.265    0.163 0.190                      0.18
    wave-u-mamba         0.675 0.747    0.459 0.594 0.554 0.493 0.557    0.55
    bf16                 before runs    after runs                       after median (rel. L2)
    aeromamba (paper)    0.238 0.270    0.180 0.180                      0.18 (3.6e-3)
    aeromamba-official   0.142 0.124    0.119 0.109                      0.11 (3.3e-3)
    wave-u-mamba         0.583 0.581    0.510 0.467 0.462 0.468 0.433    0.47 (1.2-5.3e-3)

(wave-u-mamba's last three runs of each precision alternated fp32/bf16 with ``--no-flops``;
the bf16 rel. L2 moves run to run with the random input.) Apollo, its code unchanged, one run
each right after (21:48-21:52 UTC, load 1.5-1.9, ``--no-flops``): fp32 2.489 (2.646 in the
first table's "after"), bf16 0.991 (1.049), rel. L2 1.22e-2.

Third round, wave-u-mamba only (2026-12-01 23:06-23:24 UTC, 2 threads, 10 s, ``--runs 3
--no-flops``, one process per run, A = main 8ec94dc, B = the scan's cheaper ``2**x`` (same
output to the bit), alternating A/B per precision, order flipped each pair; load average
4.7 falling to 1.3 over the 5 pairs, the first three shared with other engineers' jobs).
RTF per run (CPU s per forward in brackets), medians, B/A:

    bf16  A 0.997 0.708 0.517 0.628 0.480 (9.8 9.8 9.2 10.8 8.6)   median 0.628 (9.80)
          B 0.841 0.891 0.572 0.516 0.564 (8.7 9.5 10.0 9.1 9.9)   median 0.572 (9.47)
          B/A 0.91 wall, 0.97 CPU
    fp32  A 1.125 0.788 0.645 0.692 0.790 (11.1 13.8 11.5 12.6 12.6) median 0.788 (12.58)
          B 0.905 0.737 0.547 0.665 0.838 (12.9 12.7 9.9 11.8 12.6)  median 0.737 (12.56)
          B/A 0.94 wall, 1.00 CPU

Run to run the RTF moved by ±25 % with the load, more than any difference between A and B
(the two quietest pairs, load < 2: bf16 A 0.628 0.480, B 0.516 0.564), so this does not show
the kernel change in the model; see ``benchmarks/wave_u_mamba_cpu.py`` (third round) for the
in-process comparisons. The bf16 rel. L2 against float32 (random weights, drawn anew each
run, noise input) ranged 2.1-6.2e-3 for A and 1.5-5.8e-3 for B.

The lead's check after merging the third round (2026-12-01 23:33-23:47 UTC, 2 threads, 10 s,
``--runs 3 --no-flops``, one process per run alternating 8ec94dc (A) / the merge (B), nothing
else running, load 1.5-1.8). RTF per run (CPU s per forward), medians:

    wave-u-mamba bf16   A 0.624 0.477 0.623 (10.6 8.6 10.3)   B 0.513 0.504 0.552 (9.1 9.0 9.7)
                        median 0.623 -> 0.513, CPU 10.3 -> 9.1
    wave-u-mamba fp32   A 0.761 0.912 0.660 (12.0 13.0 11.8)  B 0.609 1.321 0.892 (11.0 13.2 13.6)
                        median 0.761 -> 0.892, CPU 12.0 -> 13.2
    aeromamba bf16      A 0.236 0.235   B 0.219 0.261    official A 0.142 0.126   B 0.133 0.117
    aeromamba fp32      A 0.314 0.286   B 0.326 0.286    official A 0.211 0.209   B 0.207 0.198

The outputs are bit-identical (the only model-side change is the scan kernel's ``2**x``), so
these rows measure the host: single runs of the same tree moved by up to 2x (wave-u-mamba fp32
B: 0.609 and 1.321 back to back, its CPU seconds equal to its wall seconds there: one core's
worth). This evening the host ran the same code 10-30 % slower than at 21:00 UTC (the
README's table: wave-u-mamba bf16 0.47, aeromamba paper bf16 0.18). No change of Wave-U-Mamba's
speed is shown beyond that noise; bf16 stays above the 0.4 target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import typing as tp

import torch

# name -> () -> (model in eval mode, input sample rate); published configs, random weights
MODELS: dict[str, tp.Callable[[], tuple[torch.nn.Module, int]]] = {}


def _aeromamba() -> tuple[torch.nn.Module, int]:
    from upsr.models import build

    model = build("aeromamba")  # the paper: Mamba runs
    return model.eval(), 11025


def _aeromamba_official() -> tuple[torch.nn.Module, int]:
    from upsr.models import build

    model = build("aeromamba", official_forward=True)  # released code: Mamba skipped
    return model.eval(), 11025


MODELS["aeromamba"] = _aeromamba
MODELS["aeromamba-official"] = _aeromamba_official


def _apollo() -> tuple[torch.nn.Module, int]:
    from upsr.models import build

    return build("apollo").eval(), 44100  # feature_dim 256, 6 BSNets, 80 bands


MODELS["apollo"] = _apollo


def _wave_u_mamba() -> tuple[torch.nn.Module, int]:
    from upsr.models import build

    model = build("wave-u-mamba").eval()  # 19 Mamba blocks; input already at 48 kHz
    # FlopCounterMode hooks the weight-norm parametrization's inputs for gradients, which
    # fails under inference_mode while they require grad; inference needs no grad anyway.
    return model.requires_grad_(False), 48000


MODELS["wave-u-mamba"] = _wave_u_mamba


def _signal(seconds: float, sr: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(1, int(seconds * sr), generator=g)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _autocast(precision: str) -> tp.ContextManager[tp.Any]:
    from upsr.infer.precision import autocast

    return autocast(precision, "cpu")


def _allocator(malloc: str) -> None:
    """``reuse`` / ``compact``: glibc's allocator as ``upsr enhance`` sets it in that
    ``UPSR_MALLOC`` mode (upsr.infer.malloc; this script owns its process); ``default``:
    left alone."""
    if malloc != "default":
        from upsr.infer import malloc as alloc

        os.environ[alloc.ENV] = malloc
        alloc.own_process()
        status = alloc.for_inference()
        if status != "applied":
            print(f"allocator settings not applied: {status}", file=sys.stderr)


def _peak_memory_child(name: str, seconds: float, threads: int, precision: str,
                       malloc: str) -> None:
    """Run in a fresh process: print the RSS high-water mark one cold forward adds (bytes)."""
    _allocator(malloc)
    torch.set_num_threads(threads)
    model, sr = MODELS[name]()
    x = _signal(seconds, sr)
    before = _rss_bytes()
    with torch.inference_mode(), _autocast(precision):
        model.restore(x)  # type: ignore[operator]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak_bytes": max(0, peak - before)}))


def peak_memory(name: str, seconds: float, threads: int, precision: str,
                malloc: str = "default") -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-child", name,
                          "--seconds", str(seconds), "--threads", str(threads),
                          "--precision", precision, "--malloc", malloc],
                         check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def matmul_gflops(runs: int = 5, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.restore(x)  # type: ignore[operator]
    return int(counter.get_total_flops())


def scan_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Analytic FLOPs of the selective scans FlopCounterMode cannot see (upsr.nn.mamba).

    Per Mamba call on ``L`` steps with ``Di`` channels and ``N`` states: per (channel, step,
    state) Δ·A, exp, (Δu)·B, Ā·h + B̄u (2) and h·C accumulated (2) = 7; per (channel, step)
    softplus(Δ + bias), Δ·u, D·u + y and the SiLU(z) gate ≈ 8. Counted with forward hooks, so
    it follows whatever shapes the model really runs.
    """
    from upsr.nn.mamba import BiMamba, Mamba

    total = 0

    def hook(mod: torch.nn.Module, inputs: tuple, _out: tp.Any) -> None:
        nonlocal total
        batch, length = inputs[0].shape[:2]
        d_inner, d_state = tp.cast(torch.Tensor, mod.A_log).shape
        passes = 2 if isinstance(mod, BiMamba) else 1
        total += passes * batch * length * d_inner * (7 * d_state + 8)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Mamba)]
    try:
        with torch.inference_mode():
            model.restore(x)  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()
    return total


def bench(name: str, seconds: float, runs: int, threads: int, mm_gflops: float,
          precision: str = "fp32", malloc: str = "default", flops: bool = True) -> dict:
    model, sr = MODELS[name]()
    x = _signal(seconds, sr)
    rel_l2 = float("nan")
    with torch.inference_mode(), _autocast(precision):
        y = model.restore(x)  # type: ignore[operator]  # warm-up
        if precision != "fp32":
            with torch.autocast("cpu", enabled=False):
                y32 = model.restore(x)  # type: ignore[operator]
            rel_l2 = float((y.float() - y32).norm() / y32.norm())
        times, cpu_times = [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            model.restore(x)  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    wall = statistics.median(times)
    counted = count_flops(model, x) + scan_flops(model, x) if flops else float("nan")
    return {
        "model": name,
        "rtf": wall / seconds,
        "wall_s": wall,
        "cpu_s": statistics.median(cpu_times),
        "peak_mib": peak_memory(name, seconds, threads, precision, malloc) / 2**20,
        "faults_per_run": faults / runs,
        "rel_l2": rel_l2,
        "gflop_per_audio_s": counted / seconds / 1e9,
        "matmul_fraction": counted / wall / 1e9 / mm_gflops,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"models (default all: {', '.join(MODELS)})")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--malloc", choices=("reuse", "compact", "default"), default="reuse",
                    help="glibc allocator: as upsr enhance sets it (reuse, or compact as "
                    "with UPSR_MALLOC=compact) or glibc's default")
    ap.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                    help="count FLOPs (two more forward passes per model)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        _peak_memory_child(args.memory_child, args.seconds, args.threads, args.precision,
                           args.malloc)
        return
    _allocator(args.malloc)
    torch.set_num_threads(args.threads)
    names = args.names or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r} (known: {', '.join(MODELS)})")
    mm = matmul_gflops()
    print(f"threads {args.threads}, {args.seconds:g} s of audio, median of {args.runs}, "
          f"{args.precision}, malloc {args.malloc}; matmul (fp32) {mm:.1f} GFLOP/s")
    print(f"{'model':<20} {'RTF':>8} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'faults/run':>11} "
          f"{'GFLOP/s audio':>14} {'of matmul':>10} {'rel L2 vs fp32':>15}")
    for name in names:
        r = bench(name, args.seconds, args.runs, args.threads, mm, args.precision, args.malloc,
                  args.flops)
        print(f"{r['model']:<20} {r['rtf']:>8.3f} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['peak_mib']:>9.0f} "
              f"{r['faults_per_run']:>11.0f} {r['gflop_per_audio_s']:>14.2f} "
              f"{r['matmul_fraction']:>10.1%} {r['rel_l2']:>15.2e}", flush=True)


if __name__ == "__main__":
    main()
