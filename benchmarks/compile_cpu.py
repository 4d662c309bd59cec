"""Does ``torch.compile`` (inductor) pay for a restorer on this CPU? Compile time against
steady-state speed, float32 and bf16 autocast.

Per precision and compile mode, for ``--seconds`` of mono audio (published configuration,
seeded random weights): the eager forward (median of ``--runs``), the first compiled call
(tracing + inductor code generation + one forward: what a CLI user waits for once per input
shape), the steady-state compiled forward (median of ``--runs``) and the relative L2
difference of the compiled output from the eager one. ``break-even`` is the audio a user must
process before the compile time is paid back: compile seconds / (eager - compiled seconds per
second of audio); ``never`` where the compiled forward is not faster.

    python benchmarks/compile_cpu.py [MODEL] [--seconds 2] [--runs 3] [--threads 1]
        [--precision fp32,bf16] [--modes default,max-autotune-no-cudagraphs]

Each mode starts from ``torch._dynamo.reset()`` (no compiled code reused between rows), but
inductor's on-disk cache (``/tmp/torchinductor_$USER``) is kept: rerunning the script measures
warm-cache compile times unless that folder is removed first.

Measured 2026-12-01 (torch 2.13 CPU, AMD EPYC with avx512_bf16, 1 thread, cold inductor
cache, on the shared 2-core machine at load average 6-12, so absolute seconds are ~3x a
quiet machine's; the ratios are what counts), Apollo, 2 s mono::

    precision mode        eager s  compile s  steady s  speed-up  rel L2   break-even
    fp32      default       43.70      432.3     43.66     1.00x  5.5e-07  (none: noise)
    bf16      default       23.08      367.0     26.45     0.87x  1.2e-02  never

(bf16 row: Apollo's explicit bf16 path before its scratch buffers were added; the compiled
bf16 forward is slower than eager.) ``torch.compile`` does not pay for Apollo on a CPU:
its time is in GEMMs that inductor hands to the same oneDNN/MKL kernels, the complex
STFT/iSTFT are not code-generated (inductor warns and falls back), and the 6-7 minutes of
compilation would be paid again for every new input length (the engine's last chunk of a
file). ``max-autotune-no-cudagraphs`` was not run: with default mode already compiling for
6-7 minutes on this machine, autotuning every GEMM would take far longer, and it could only
pick among the same GEMM kernels. No ``--compile`` opt-in was added.
"""

from __future__ import annotations

import argparse
import statistics
import time
import typing as tp

import torch


def _model(name: str) -> tuple[torch.nn.Module, int]:
    from upsr.models import build

    torch.manual_seed(0)
    model = build(name).eval().requires_grad_(False)
    return model, int(model.in_rate)


def _timed(fn: tp.Callable[[], torch.Tensor], runs: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="apollo")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--modes", default="default")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from upsr.infer.precision import autocast

    model, sr = _model(a.model)
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, int(a.seconds * sr), generator=g)
    print(f"{a.model}, {a.seconds:g} s mono at {sr} Hz, {a.threads} thread(s), median of "
          f"{a.runs}; torch {torch.__version__}")
    print(f"{'precision':<10}{'mode':<28}{'eager s':>9}{'compile s':>11}{'steady s':>10}"
          f"{'speed-up':>10}{'rel L2':>10}  {'break-even':>14}")
    for precision in a.precision.split(","):
        def eager(precision: str = precision) -> torch.Tensor:
            with torch.inference_mode(), autocast(precision, "cpu"):
                return model.restore(x)  # type: ignore[operator]

        t_eager, y_eager = _timed(eager, a.runs)
        for mode in a.modes.split(","):
            torch._dynamo.reset()
            compiled = torch.compile(model.forward, mode=mode)

            def run(precision: str = precision, compiled: tp.Any = compiled) -> torch.Tensor:
                with torch.inference_mode(), autocast(precision, "cpu"):
                    return compiled(x)

            t0 = time.perf_counter()
            run()
            first = time.perf_counter() - t0
            t_comp, y = _timed(run, a.runs)
            compile_s = first - t_comp
            rel = float((y.float() - y_eager.float()).norm() / y_eager.float().norm())
            gain = (t_eager - t_comp) / a.seconds  # seconds saved per second of audio
            even = f"{compile_s / gain / 60:.1f} min audio" if gain > 0 else "never"
            print(f"{precision:<10}{mode:<28}{t_eager:>9.2f}{compile_s:>11.1f}{t_comp:>10.2f}"
                  f"{t_eager / t_comp:>9.2f}x{rel:>10.1e}  {even:>14}", flush=True)


if __name__ == "__main__":
    main()
