"""Samplers for AudioSR's v-prediction latent diffusion, over ``denoise(x, t) -> v``.

- ``ddim``: the official sampler (:func:`upsr.models.audiosr.pipeline.ddim_sample`, LDM
  "uniform" steps ``1, 1 + 1000//S, …``, stochastic with ``eta``).
- ``dpmpp-2m``: DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided
  Sampling of Diffusion Probabilistic Models", Alg. 2), the multistep second-order solver in
  the data-prediction form, which is stable under classifier-free guidance. With
  α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and x̂₀ = α·x − σ·v:

      x_i = (σ_i/σ_{i−1})·x_{i−1} − α_i·(e^{−h_i} − 1)·D_i,   h_i = λ_i − λ_{i−1},
      D_i = (1 + 1/(2r_i))·x̂₀_{i−1} − 1/(2r_i)·x̂₀_{i−2},   r_i = h_{i−1}/h_i,

  first order (D = x̂₀) on the first step and the last one ("lower order final"). AudioSR's
  cosine schedule has ᾱ = 0 at t = 999 (λ = −∞), so the first step from pure noise is exact:
  x_1 = σ_1·x_T + α_1·x̂₀. Steps are uniform in t from 999 down to 0 (integer timesteps, as
  the network was trained on).
"""

from __future__ import annotations

import typing as tp

import numpy as np
import torch

from upsr.models.audiosr import pipeline as P

SAMPLERS = ("ddim", "dpmpp-2m")


def dpmpp_2m_timesteps(steps: int, total: int = 1000) -> np.ndarray:
    """``steps + 1`` integer timesteps from ``total − 1`` down to 0 (uniform in t)."""
    if not 1 <= steps < total:
        raise ValueError(f"DPM-Solver++ steps must be in 1..{total - 1} (got {steps})")
    return np.round(np.linspace(total - 1, 0, steps + 1)).astype(np.int64)


def dpmpp_2m_sample(denoise: P.Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor,
                    steps: int,
                    callback: tp.Callable[[int, torch.Tensor], None] | None = None
                    ) -> torch.Tensor:
    """DPM-Solver++(2M) from ``x_T`` (pure noise at t = total − 1); returns x at t = 0.

    ``alphas_cumprod``: the schedule's ᾱ (float32 buffer; computed in float64 here).
    ``denoise(x, t [B] long) -> v`` (guidance already applied)."""
    ac = alphas_cumprod.double()
    ts = dpmpp_2m_timesteps(steps, ac.shape[0])
    alpha = ac.sqrt()
    sigma = (1 - ac).sqrt()
    lam = torch.log(alpha) - torch.log(sigma)  # −inf where ᾱ = 0
    x = x_T
    prev_x0: torch.Tensor | None = None
    prev_h: float | None = None
    for i in range(steps):
        s, t = int(ts[i]), int(ts[i + 1])
        tt = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        v = denoise(x, tt)
        a_s, s_s = float(alpha[s]), float(sigma[s])
        x0 = a_s * x - s_s * v
        a_t, s_t = float(alpha[t]), float(sigma[t])
        h = float(lam[t] - lam[s])
        last = i == steps - 1
        if prev_x0 is None or prev_h is None or not np.isfinite(prev_h) or last:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        ratio = s_t / s_s if s_s > 0 else 0.0
        x = ratio * x - a_t * float(np.expm1(-h)) * d if np.isfinite(h) else a_t * d + s_t * x
        prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i, x0)
    return x
