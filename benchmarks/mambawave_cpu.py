"""MambaWave on the CPU: sampling real-time factor and training speed (published size).

    python benchmarks/mambawave_cpu.py [--seconds 1.0] [--steps 8 25 50] [--runs 3]
        [--threads 1] [--sample-steps 8] [--train-segment-s 0.1]

- **Sampling.** A DDIM sampler costs one denoiser forward per step (the conditioner once), so
  the script times the forward on ``--seconds`` of 48 kHz audio (median of ``--runs``, after a
  warm-up) in float32 and under ``torch.autocast("cpu", bfloat16)``, and gives
  RTF(S) = S · t_forward / seconds for each S of ``--steps``. ``--sample-steps S`` also times
  whole ``restore`` calls with S DDIM steps (once per dtype), to check that estimate.
- **Training.** Optimiser steps per second of the published recipe's step (batch 2, Adam,
  clip 1.0, float32) on ``--train-segment-s`` crops.

The machine's load average is printed before and after: on a shared CPU every wall-clock
number scales with it. So the script also gives the process's CPU seconds per call (single
thread: what one idle core would take, near enough) and the RTFs from them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import typing as tp

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import median_time  # noqa: E402


def _cpu_time(fn: tp.Callable[[], object], runs: int) -> float:
    """Median process CPU seconds of ``runs`` calls (after the warm-up median_time did)."""
    times = []
    for _ in range(runs):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return sorted(times)[len(times) // 2]


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _autocast(bf16: bool) -> tp.ContextManager[tp.Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> None:
    from upsr.models import build
    from upsr.train.systems import DiffusionLoss

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 25, 50])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-steps", type=int, default=0)
    ap.add_argument("--train-segment-s", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average before: {_load()}")
    torch.manual_seed(0)
    model = build("mambawave").eval()
    with torch.no_grad():  # the zero-initialised head would make outputs trivially 0
        model.output_projection.weight.normal_(0, 0.1)
    out_n = int(args.seconds * 48000) // 2 * 2
    x_t = torch.randn(1, out_n)
    cond = 0.3 * torch.randn(1, out_n // 2)
    t = torch.tensor([250])
    rows = []
    for label, bf16 in (("fp32", False), ("bf16", True)):
        with torch.inference_mode():
            c = model.conditioner(cond)

            def forward(bf16: bool = bf16, c: torch.Tensor = c) -> None:
                with _autocast(bf16):
                    model(x_t, cond, t, c)
            t_fwd = median_time(forward, args.runs)
            c_fwd = _cpu_time(forward, 1)
            sampled = None
            if args.sample_steps:
                t0 = time.perf_counter()
                with _autocast(bf16):
                    model.sample(cond, steps=args.sample_steps)
                sampled = (time.perf_counter() - t0) / args.seconds
        rows.append((label, t_fwd, c_fwd, sampled))
    print(f"\nsampling {args.seconds} s of 48 kHz (DDIM; RTF = S x forward / audio seconds)")
    head = "".join(f"{'RTF ' + str(s):>10}" for s in args.steps)
    print(f"{'dtype':>6} {'clock':>6} {'forward s':>10}{head}"
          + (f"{'measured ' + str(args.sample_steps):>14}" if args.sample_steps else ""))
    for label, t_fwd, c_fwd, sampled in rows:
        for clock, t in (("wall", t_fwd), ("cpu", c_fwd)):
            line = f"{label:>6} {clock:>6} {t:10.2f}" + "".join(
                f"{s * t / args.seconds:10.1f}" for s in args.steps)
            if sampled is not None and clock == "wall":
                line += f"{sampled:14.1f}"
            print(line)

    model.train()
    loss_fn = DiffusionLoss(model)
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    n = int(args.train_segment_s * 48000) // 2 * 2
    hr = 0.3 * torch.randn(2, 1, n)
    lr = 0.3 * torch.randn(2, 1, n // 2)

    def step() -> None:
        loss = loss_fn(hr, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    t_step = median_time(step, args.train_steps)
    c_step = _cpu_time(step, 1)
    print(f"\ntraining: batch 2 x {args.train_segment_s} s crops, fp32")
    for clock, t in (("wall", t_step), ("cpu", c_step)):
        print(f"  {clock:>4}: {t:.2f} s/step = {1 / t:.3f} steps/s "
              f"({2 * args.train_segment_s / t:.3f} s of audio/s)")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    sys.exit(main())
