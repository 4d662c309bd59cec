"""DDIM vs DPM-Solver++(2M) on AudioSR's schedule with an exact denoiser (no network).

What can be measured without published weights: how closely each sampler solves the
probability-flow ODE. For data x₀ ~ N(0, s²·I) the exact v-prediction is known in closed form
and the ODE maps x at step t to x₀-level ``sqrt(ᾱ₀s² + 1 − ᾱ₀) / sqrt(ᾱ_t s² + 1 − ᾱ_t) · x``,
so each sampler's deterministic error can be computed (DDIM with ``eta = 0`` and the official
LDM steps starting at ``1 + 1000 − 1000//S``; DPM-Solver++ from t = 999). The table gives the
relative L2 error of the final sample for several data scales s² (latents are ~unit scale).

This is not the LSD comparison on real audio the issue asks for (that needs trained weights);
it shows the solver error each step budget leaves.

Usage: ``python benchmarks/audiosr_samplers.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from upsr.models.audiosr import pipeline as P  # noqa: E402
from upsr.models.audiosr import sampling  # noqa: E402


def oracle(ac: torch.Tensor, s2: float):
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a2 = ac.double()[t].view(-1, 1)
        a, sig = a2.sqrt(), (1 - a2).sqrt()
        x0 = a * s2 * x / (a2 * s2 + sig ** 2)
        return (a * x - x0) / sig
    return denoise


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    sched = P.schedule_buffers(P.cosine_betas())
    ac = sched["alphas_cumprod"].double()
    x = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print("| sampler | steps (U-Net calls) | " + " | ".join(f"s² = {s2}" for s2 in
                                                          (0.1, 1.0, 4.0)) + " |")
    print("| --- | --- | --- | --- | --- |")
    for name, steps in (("DDIM eta=0", 25), ("DDIM eta=0", 50), ("DDIM eta=0", 200),
                        ("DPM-Solver++(2M)", 10), ("DPM-Solver++(2M)", 20),
                        ("DPM-Solver++(2M)", 25)):
        errs = []
        for s2 in (0.1, 1.0, 4.0):
            den = oracle(ac, s2)
            end = float(torch.sqrt(ac[0] * s2 + 1 - ac[0]))
            if name.startswith("DDIM"):
                t0 = int(P.ddim_timesteps(steps)[-1])
                start = float(torch.sqrt(ac[t0] * s2 + 1 - ac[t0]))
                x_T = x * start  # a sample of the exact marginal at the first DDIM step
                got, _ = P.ddim_sample(den, x_T, {k: v.double() for k, v in sched.items()},
                                       steps, eta=0.0)
                exact = x * end
                n = len(P.ddim_timesteps(steps))
            else:
                got = sampling.dpmpp_2m_sample(den, x, sched["alphas_cumprod"], steps)
                exact = x * end
                n = steps
            errs.append(rel(got, exact))
        print(f"| {name} | {n} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")


if __name__ == "__main__":
    main()
