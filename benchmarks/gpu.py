"""GPU benchmark, ready for the first machine with a CUDA device (none was available so far).

Two tables:

1. per model (published configurations, seeded random weights) × precision (fp32, bf16
   autocast) × batch size: real-time factor (median wall seconds of ``--runs`` forward passes /
   seconds of audio in the batch, after a warm-up, with ``torch.cuda.synchronize``) and peak
   GPU memory (``torch.cuda.max_memory_allocated``); out-of-memory is reported as ``OOM``;
2. the selective scan alone, Mamba-block sized (Di = 128, N = 16, L = 48000): mamba_ssm's fused
   kernel (where the package imports), upsr's chunked torch scan (what runs without mamba_ssm),
   forward and forward+backward.

    python benchmarks/gpu.py [--models wave-u-mamba,aeromamba,apollo] [--seconds 10]
                             [--batch 1,4,16] [--runs 5] [--device cuda:0]

``--device cpu --seconds 0.2 --batch 1 --runs 1`` runs the same code on a CPU as a smoke check.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import typing as tp

import torch

RATES = {"wave-u-mamba": 48000, "aeromamba": 11025, "apollo": 44100}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: tp.Callable[[], object], runs: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[tp.Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def model_rows(names: list[str], seconds: float, batches: list[int], runs: int,
               device: torch.device) -> None:
    from upsr.models import build

    print(f"\nmodels on {device}: {seconds:g} s per row, median of {runs}")
    print(f"{'model':<16}{'prec':>6}{'batch':>7}{'RTF':>10}{'x real':>9}{'peak MiB':>10}")
    for name in names:
        torch.manual_seed(0)
        model = build(name).eval().to(device)
        sr = RATES[name]
        for precision in ("fp32", "bf16"):
            for batch in batches:
                x = 0.1 * torch.randn(batch, int(seconds * sr), device=device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)

                def run(x: torch.Tensor = x, precision: str = precision,
                        model: tp.Any = model) -> None:
                    with torch.inference_mode(), _autocast(precision, device):
                        model.restore(x)

                try:
                    wall = _timed(run, runs, device)
                except torch.cuda.OutOfMemoryError:
                    print(f"{name:<16}{precision:>6}{batch:>7}{'OOM':>10}")
                    break
                audio = seconds * batch
                peak = (torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda" else float("nan"))
                print(f"{name:<16}{precision:>6}{batch:>7}{wall / audio:>10.4f}"
                      f"{audio / wall:>9.1f}{peak:>10.0f}", flush=True)


def scan_rows(runs: int, device: torch.device, length: int = 48000) -> None:
    from upsr.nn import scan

    g = torch.Generator().manual_seed(0)
    di, n = 128, 16
    args = [torch.randn(1, di, length, generator=g), torch.randn(1, di, length, generator=g),
            -(torch.rand(di, n, generator=g) * 16 + 0.5), torch.randn(1, n, length, generator=g),
            torch.randn(1, n, length, generator=g), torch.ones(di),
            torch.randn(1, di, length, generator=g), torch.randn(di, generator=g) - 3]
    args = [a.to(device) for a in args]
    backends = ["chunked"]
    if device.type == "cuda" and scan._cuda_scan_fn() is not None:
        backends.insert(0, "cuda")
    elif device.type == "cuda":
        print("mamba_ssm does not import here: only the chunked scan is timed")
    print(f"\nselective scan on {device}, Di={di} N={n} L={length}, median of {runs}")
    print(f"{'backend':<10}{'forward s':>11}{'fwd+bwd s':>11}{'peak MiB':>10}")
    for backend in backends:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def fwd(backend: str = backend) -> None:
            with torch.no_grad():
                scan.selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True,
                                    backend=backend)

        leaves = [a.detach().clone().requires_grad_() for a in args]

        def fwd_bwd(backend: str = backend, leaves: list[torch.Tensor] = leaves) -> None:
            out = scan.selective_scan(*leaves[:7], delta_bias=leaves[7], delta_softplus=True,
                                      backend=backend)
            out.square().mean().backward()

        t_f = _timed(fwd, runs, device)
        t_b = _timed(fwd_bwd, runs, device)
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else float("nan"))
        print(f"{backend:<10}{t_f:>11.4f}{t_b:>11.4f}{peak:>10.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="wave-u-mamba,aeromamba,apollo")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scan-length", type=int, default=48000)
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (use --device cpu for a smoke check)")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device), f"torch {torch.__version__}",
              f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    model_rows(a.models.split(","), a.seconds, [int(b) for b in a.batch.split(",")], a.runs,
               device)
    scan_rows(a.runs, device, a.scan_length)


if __name__ == "__main__":
    main()
