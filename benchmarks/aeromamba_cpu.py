"""AEROMamba CPU speed: forward and statistics pass, A/B against an earlier revision.

Published configuration, random weights (seed 0), ``--seconds`` (default 10) of mono noise at
11.025 kHz. Cases:

- ``official`` / ``paper``: one forward (``restore``) with Mamba skipped (the released code,
  ``official_forward=True``) or running (the paper), in float32 or under bf16 autocast;
- ``collect-official`` / ``collect-paper``: :meth:`AEROMamba.collect_statistics` over the whole
  signal (the engine's statistics pass for one chunk), float32;
- ``tiny`` / ``collect-tiny``: the same for ``recipes/tiny/aeromamba.toml``'s network on two
  rows (a stereo chunk), where per-call overheads rather than convolutions dominate.

With ``--against REV`` the module ``src/upsr/models/aeromamba.py`` as it was at git revision
``REV`` is loaded beside the current one (same weights, same input) and the two are timed
alternately (A, B, A, B, ...) in one process; the table gives both medians and B/A. The load
average is printed before and after (the machine is shared). ``--profile`` prints, per case,
the inclusive time of each module kind (forward hooks) and the largest operators
(``torch.profiler``), and the share of the Mamba blocks.

    python benchmarks/aeromamba_cpu.py [official paper collect-official collect-paper]
        [--precision fp32|bf16] [--threads 1] [--runs 5] [--against REV] [--profile]

Measured 2026-12-01 (B = the inference path, A = 391a67c, medians of 5 alternating runs;
the machine was shared, load average 9-12 on 2 cores throughout, so absolute times are 2-4x
a quiet machine's and ratios carry +-15 %):

    threads precision case              B s    A s    B/A
    1       fp32      official (Mamba skipped)  9.70  11.06  0.88
    1       fp32      paper (Mamba runs)       18.38  19.30  0.95
    1       bf16      official                  5.27   5.56  0.95
    1       bf16      paper                    23.78  29.38  0.81
    2       fp32      official                  4.74   5.63  0.84
    2       fp32      paper                    13.76  15.95  0.86
    2       bf16      official                  7.03   8.25  0.85
    2       bf16      paper                    11.20  12.48  0.90
    1       fp32      collect-official          7.06  11.96  0.59  (0.78 / 1.23 of a forward)
    1       fp32      tiny (2 rows)             4.19   4.42  0.95
    1       fp32      collect-tiny              7.40   6.80  1.09  (1.42 / 1.15 of a forward)

The bf16 rows ran the inference path under autocast; it then proved to raise the bf16 error
(dLSD 0.0064 → 0.0089 on real music, benchmarks/bf16_error.py; the tiny model's relative L2
above 2 %), so under autocast the model now takes its plain path, the same as A: bf16 B/A is
1 by construction. An earlier run of ``official`` (1 thread, load 12) gave B/A 0.66,
``collect-official`` 0.73.
For the tiny network the per-call cost is dominated by preemption under this load: two more
interleaved runs gave collect/forward 1.00 and 0.59.

Second session, 2026-12-01 (B = this branch, A = 6ecba3c = main before it; alternating runs in
one process, medians of 5; the machine was heavily shared: load average 7-11 on 2 cores
throughout, every process got 30-50 % of a core, so absolute times are 5-8x a quiet
machine's and only the ratios mean anything, +-10 %):

    threads precision case      B s     A s     B/A
    2       bf16      official  11.66   11.61   1.00
    2       bf16      paper     16.45   17.50   0.94
    2       fp32      official  15.20   16.11   0.94   (no change in B for this case: noise)
    2       fp32      paper     18.49   20.19   0.92
    1       bf16      official   7.69    7.30   1.05   (before the bf16 transposed-conv change)
    1       bf16      paper     14.88   14.16   1.05   (same)
    1       fp32      official  11.37   11.40   1.00
    1       fp32      paper     16.50   17.30   0.95

    later, load average 3.6-5.6 (the final state of the branch):
    2       bf16      official   4.84    5.42   0.89
    2       bf16      paper      6.72    7.50   0.90
    2       fp32      official   3.16    3.07   1.03   (no change in B for this case: noise)
    2       fp32      paper      8.52    9.26   0.92

    1 thread, bf16 official, CPU time per forward (getrusage, median of 4, load 7.7):
    B user 2.59 s + sys 0.41 s, 160 k minor faults; A user 2.39 s + sys 0.69 s, 242 k faults

- bf16: under a CPU bf16 autocast at inference the model now runs its own mixed-precision
  path (``_low_precision`` in the model): decoder 3×3 and transposed convs and the first two
  encoder layers' FTB products and strided conv in bf16, all else float32. Its error on real
  music (benchmarks/bf16_error.py, hr3-caves.ogg, 10 s, 2 threads) is ~0.6x plain autocast's:
  paper mode dLSD 0.0037 / rel. L2 2.52e-3, released forward 0.0037 / 2.49e-3 (plain autocast,
  A: 0.0064 / 3.36e-3); the tiny recipe model 0.35 % against plain autocast's 1.5 %. Its speed
  is 0.89-1.05x plain autocast's (B/A above, by load): both spend ~55-60 % of a bf16
  forward in oneDNN's 3×3 convolutions (~50 % of this CPU's bf16 peak at 1 thread), which
  neither changes.
  Tried and dropped: the GroupNorm'd encoder layers (2, 3) in bf16 (tiny model 5.3 %
  relative L2: their conv outputs have a mean large against their spread, which the norm
  amplifies after rounding); the first two layers' DConv and 1×1 rewrite under autocast as
  well (error 2x, CPU time unchanged); per-phase convs for the transposed convs in bf16
  (oneDNN's bf16 deconvolution is 1.2-1.35x faster, CPU time, so the bf16 path uses it).
- paper mode: the Mamba blocks are entered channels-first (``_mamba_residual``: ``in_proj``
  as a batched product on the transposed view, the LayerScale folded into ``out_proj``, whose
  product adds into the residual): 0.92-0.95 of A's time, fp32 and bf16. Block alone (CPU
  time, 1 thread, median of 7, load 9): Mamba d48 on 64×1724 with the residual 234-243 ms
  against 240-272 ms between transposes; MambaWave's BiMamba on 1×48000 (its
  ``_bimamba_channels_first``): d64 plus the add that follows 238 ms against 242 ms, d128
  583 ms against 610 ms (0.95-0.98: within this load's noise).

What was tried for the inference path, adopted or not (10 s, 1 thread, float32, alternating
runs in one process on the shared 2-core machine, load average 5-12, so +-25 %):

- the decoder's 3×3 convolutions (70 % of the FLOPs) as 9 shifted matrix products over a
  padded input: 0.45-1.05x the speed of torch's oneDNN convolution; as 3 products over a
  3-shift stack: 0.5-0.95x; F(2×2, 3×3) Winograd written with torch ops (16 batched products,
  2.25x fewer multiplies): 0.45-0.82x (the transforms cost more than the saved products);
  channels_last: 0.7-1.6x depending on the layer, no consistent gain;
- wide transposed convolutions as one product + overlap-add: 0.84-1.05x (kept for the last
  layer, 2 outputs × 8 rows, where it is 4-5x faster); as one ordinary conv per stride phase:
  1.1-1.7x (adopted);
- ``THP_MEM_ALLOC_ENABLE=1`` (torch's transparent huge pages for large tensors): the whole
  forward 1.05-1.3x slower (5 s of audio: 5.26/5.39/4.78 s against 4.94/4.16/3.95 s);
- ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64G`` (glibc keeps freed memory, so large
  temporaries are not page-faulted in again on every allocation): the whole forward 1.2-1.4x
  faster (3.69/3.54/4.29 s against 4.97/5.27/5.15 s). A process-wide setting, so not made by the
  model; the CLI could set it at start-up (``mallopt``) for every model.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
import types
import typing as tp

import torch
from _timing import interleaved

SR = 11025
CASES = ("official", "paper", "collect-official", "collect-paper", "tiny", "collect-tiny")
# recipes/tiny/aeromamba.toml's network (benchmarks/enhance.py's tiny-aeromamba), paper mode
TINY = {"channels": 4, "growth": 1, "n_fft": 128, "hop_length": 64, "d_state": 4,
        "dconv_depth": 1}


def load_revision(rev: str) -> types.ModuleType:
    """The AEROMamba module as of git revision ``rev`` (not registered as a model)."""
    import upsr.models

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "-C", root, "show", f"{rev}:src/upsr/models/aeromamba.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"upsr.models._aeromamba_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    register = upsr.models.register
    upsr.models.register = lambda *a, **k: (lambda cls: cls)  # type: ignore[assignment]
    try:
        exec(compile(source, f"{rev}:aeromamba.py", "exec"), module.__dict__)
    finally:
        upsr.models.register = register
    return module


def build(module: types.ModuleType, case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides = TINY if case.endswith("tiny") else {}
    cfg = module.AEROMambaConfig(official_forward=case.endswith("official"), **overrides)
    return module.AEROMamba(cfg).eval()


def case_fn(model: tp.Any, case: str, x: torch.Tensor, precision: str
            ) -> tp.Callable[[], object]:
    if case.startswith("collect"):
        return lambda: model.collect_statistics(x, (0, x.shape[-1]), True, None, None)

    def forward() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model.restore(x)
    return forward


def profile(model: torch.nn.Module, fn: tp.Callable[[], object], ops: int = 25) -> None:
    """Inclusive time per module kind (names with indices folded) and the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    spent: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue
        key = re.sub(r"\.\d+(?=\.|$)", ".#", name)
        handles.append(mod.register_forward_pre_hook(
            lambda m, a, name=name: started.__setitem__(name, time.perf_counter())))
        handles.append(mod.register_forward_hook(
            lambda m, a, o, name=name, key=key: spent.__setitem__(
                key, spent[key] + time.perf_counter() - started[name])))
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    total = time.perf_counter() - t0
    print(f"  module breakdown (inclusive, hooks on): total {total:.3f} s")
    rows = sorted(((k, v) for k, v in spent.items() if k.count(".") <= 5), key=lambda kv: -kv[1])
    for key, sec in rows[:30]:
        print(f"  {sec:8.3f} s {sec / total:6.1%}  {key}")
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops,
                                    max_name_column_width=36))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help=f"default all: {', '.join(CASES)}")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--against", metavar="REV", help="git revision to compare with (A)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from upsr.models import aeromamba

    cases = args.cases or list(CASES)
    if set(cases) - set(CASES):
        ap.error(f"unknown case {sorted(set(cases) - set(CASES))[0]!r}")
    x = 0.1 * torch.randn(1, int(args.seconds * SR), generator=torch.Generator().manual_seed(0))
    old = load_revision(args.against) if args.against else None
    print(f"AEROMamba, {args.seconds:g} s mono at {SR} Hz, {args.threads} thread(s), "
          f"{args.precision}, median of {args.runs}; load average {os.getloadavg()[0]:.2f}")
    head = f"{'case':<18} {'B (now) s':>10} {'RTF':>7}"
    if old is not None:
        head += f" {'A (' + args.against + ') s':>16} {'B/A':>6}"
    print(head)
    for case in cases:
        new = build(aeromamba, case)  # outside inference_mode, as the CLI builds them
        rows = x.expand(2, -1).contiguous() if case.endswith("tiny") else x
        models = [new]
        if old is not None:
            ref = build(old, case)
            ref.load_state_dict(new.state_dict())
            models.append(ref)
        with torch.inference_mode():
            fns = [case_fn(m, case, rows, args.precision) for m in models]
            collect = case.startswith("collect")
            if collect:  # and one forward of each model, interleaved with the rest
                fns += [case_fn(m, case.removeprefix("collect-"), rows, args.precision)
                        for m in models]
            times = interleaved(fns, args.runs)
            line = f"{case:<18} {times[0]:>10.3f} {times[0] / args.seconds:>7.3f}"
            if old is not None:
                line += f" {times[1]:>16.3f} {times[0] / times[1]:>6.2f}"
            if collect:
                n = len(models)
                line += "   / one forward: " + ", ".join(
                    f"{name} {times[i] / times[n + i]:.2f}"
                    for i, name in enumerate(["B", "A"][:n]))
            print(line, flush=True)
            if args.profile:
                profile(new, fns[0])
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
