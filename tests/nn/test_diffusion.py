"""The shared diffusion module: schedules against float64 closed forms and the official AudioSR
tables, parameterisation round trips, oracle recovery of x0 by DDPM and DDIM, sampling a
Gaussian data distribution with its exact denoiser, determinism and fractional steps."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import fixture_path
from upsr.nn import diffusion as D


def test_linear_schedule_matches_naive_product():
    sched = D.Schedule.linear(500, 1e-4, 0.05)
    betas = [1e-4 + (0.05 - 1e-4) * i / 499 for i in range(500)]
    prod = 1.0
    for i, b in enumerate(betas):
        prod *= 1.0 - b
        assert math.isclose(float(sched.alphas_cumprod[i]), prod, rel_tol=1e-12)
        assert math.isclose(float(sched.betas[i]), b, rel_tol=1e-12, abs_tol=1e-18)


def test_scaled_linear_schedule_closed_form():
    sched = D.Schedule.scaled_linear(100, 0.0015, 0.0195)
    lo, hi = math.sqrt(0.0015), math.sqrt(0.0195)
    for i in (0, 37, 99):
        assert math.isclose(float(sched.betas[i]), (lo + (hi - lo) * i / 99) ** 2, rel_tol=1e-12)


def test_cosine_schedule_telescopes_to_f_ratio():
    # ᾱ_t = Π (f(s+1)/f(s)) = f(t+1)/f(0) in exact arithmetic.
    T, s = 1000, 0.008

    def f(i: int) -> float:
        return math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2

    sched = D.Schedule.cosine(T, s)
    for t in (0, 1, 500, 998):
        assert math.isclose(float(sched.alphas_cumprod[t]), f(t + 1) / f(0), rel_tol=1e-9)
    assert float(sched.betas[-1]) == pytest.approx(1.0, abs=1e-12)
    assert float(sched.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-15)
    clipped = D.Schedule.cosine(T, s, max_beta=0.999)
    assert float(clipped.betas.max()) == pytest.approx(0.999)


def test_cosine_schedule_matches_official_audiosr_tables():
    ref = load_file(str(fixture_path("audiosr_pipeline_math.safetensors")))
    sched = D.Schedule.cosine(1000, 0.008)
    assert torch.allclose(sched.betas, ref["schedule.betas_float64"], rtol=0, atol=1e-15)
    for name, ours in [("alphas_cumprod", sched.alphas_cumprod),
                       ("alphas_cumprod_prev", sched.alphas_cumprod_prev),
                       ("posterior_variance", sched.posterior_variance),
                       ("posterior_mean_coef1", sched.posterior_mean_coefs[0]),
                       ("posterior_mean_coef2", sched.posterior_mean_coefs[1])]:
        theirs = ref[f"schedule.{name}"].double()
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7), name
    for steps in (12, 30, 50, 200):
        ts = D.ddim_timesteps(1000, steps, "uniform")
        assert torch.equal(ts, ref[f"ddim.timesteps_{steps}"].long()), steps
    ts = D.ddim_timesteps(1000, 50, "uniform")
    assert torch.allclose(sched.alphas_cumprod[ts].float(), ref["ddim.alphas_50"], rtol=1e-6)


def test_from_alphas_cumprod_round_trip_and_validation():
    lin = D.Schedule.linear(200, 1e-4, 0.02)
    back = D.Schedule.from_alphas_cumprod(lin.alphas_cumprod)
    assert torch.allclose(back.betas, lin.betas, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError):
        D.Schedule.from_alphas_cumprod([0.9, 0.95])  # increasing
    with pytest.raises(ValueError):
        D.Schedule.from_alphas_cumprod([0.9, 0.0])
    with pytest.raises(ValueError):
        D.Schedule(lin.betas, lin.alphas_cumprod * 0.99)


def test_posterior_matches_bayes_in_float64():
    # q(x_{t-1}|x_t,x0) from Bayes for scalar Gaussians: precision-weighted combination.
    sched = D.Schedule.linear(50, 1e-3, 0.2)
    c0, ct = sched.posterior_mean_coefs
    for t in (1, 10, 49):
        a_prev = float(sched.alphas_cumprod[t - 1])
        beta = float(sched.betas[t])
        # prior x_{t-1} ~ N(√a_prev x0, 1-a_prev); likelihood x_t ~ N(√(1-β) x_{t-1}, β)
        prec = 1 / (1 - a_prev) + (1 - beta) / beta
        var = 1 / prec
        assert math.isclose(float(sched.posterior_variance[t]), var, rel_tol=1e-10)
        assert math.isclose(float(c0[t]), var * math.sqrt(a_prev) / (1 - a_prev), rel_tol=1e-10)
        assert math.isclose(float(ct[t]), var * math.sqrt(1 - beta) / beta, rel_tol=1e-10)
    assert float(sched.posterior_variance[0]) == 0.0


def test_parameterisations_round_trip():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 1, 50, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 1, 50, generator=g, dtype=torch.float64)
    a = torch.tensor([0.9, 0.3, 0.01], dtype=torch.float64).view(3, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = D.v_from_x0_eps(x0, eps, a)
    for got, want in [(D.x0_from_eps(x_t, eps, a), x0), (D.eps_from_x0(x_t, x0, a), eps),
                      (D.x0_from_v(x_t, v, a), x0), (D.eps_from_v(x_t, v, a), eps)]:
        assert torch.allclose(got, want, atol=1e-12)
    for kind, pred in [("eps", eps), ("v", v), ("x0", x0)]:
        assert torch.allclose(D.target(kind, x0, eps, a), pred)
        x0_hat, eps_hat = D.split_prediction(pred, kind, x_t, a)
        assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)
    sched = D.Schedule.linear(10, 0.1, 0.5)
    t = torch.tensor([0, 4, 9])
    got = D.q_sample(sched, x0, t, eps)
    aa = sched.alphas_cumprod[t].view(3, 1, 1)
    assert torch.allclose(got, aa.sqrt() * x0 + (1 - aa).sqrt() * eps)


def _oracle(x0: torch.Tensor, sched: D.Schedule, kind: str):
    """A denoiser that knows x0: returns the exact ε (or v) that explains x_t."""
    calls: list[torch.Tensor] = []

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        a = sched.alphas_cumprod_at(t).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        eps = D.eps_from_x0(x_t, x0, a)
        return eps if kind == "eps" else D.v_from_x0_eps(x0, eps, a)
    return denoise, calls


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_ddpm_with_oracle_recovers_x0(kind):
    sched = D.Schedule.linear(100, 1e-4, 0.1)
    x0 = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    denoise, calls = _oracle(x0, sched, kind)
    out = D.ddpm_sample(denoise, sched, x0.shape, prediction=kind, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out, x0, atol=1e-10)
    assert [int(c[0]) for c in calls] == list(range(99, -1, -1))


@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize("spacing,eta", [("trailing", 0.0), ("trailing", 1.0),
                                         ("linspace", 0.0), ("uniform", 0.5)])
def test_ddim_with_oracle_recovers_x0(kind, spacing, eta):
    sched = D.Schedule.linear(500, 1e-4, 0.04)
    x0 = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    denoise, calls = _oracle(x0, sched, kind)
    ts = D.ddim_timesteps(500, 8, spacing)
    out = D.ddim_sample(denoise, sched, x0.shape, timesteps=ts, prediction=kind, eta=eta,
                        dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(out, x0, atol=1e-9)
    assert len(calls) == ts.numel()


def test_ddim_timesteps_spacings():
    # round half to even, as numpy (diffusers' "trailing"): 62.5 → 62, 187.5 → 188, 437.5 → 438
    assert D.ddim_timesteps(500, 8, "trailing").tolist() == [61, 124, 187, 249, 311, 374, 437,
                                                             499]
    assert D.ddim_timesteps(1000, 12, "uniform").numel() == 13
    lin = D.ddim_timesteps(500, 5, "linspace")
    assert lin.dtype == torch.float64 and lin[-1] == 499 and lin[0] == 0
    with pytest.raises(ValueError):
        D.ddim_timesteps(500, 0)


def _gaussian_denoiser(sched: D.Schedule, m: float, s: float):
    """Exact E[ε | x_t] for data x0 ~ N(m, s²)."""
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = sched.alphas_cumprod_at(t[:1]).to(x_t.dtype).view(1, 1)  # one step per call
        x0 = m + s * s * a.sqrt() * (x_t - a.sqrt() * m) / (a * s * s + 1 - a)
        return D.eps_from_x0(x_t, x0, a)
    return denoise


def test_samplers_reproduce_gaussian_data():
    # With the exact denoiser of N(m, s²) data, both samplers must produce that distribution
    # (up to their discretisation error, which for DDIM shrinks as steps grow); a wrong noise
    # level (posterior variance, σ, the direction term) shows up in the spread.
    sched = D.Schedule.linear(400, 1e-4, 0.05)
    m, s = 0.7, 0.2
    den = _gaussian_denoiser(sched, m, s)
    shape = (8000, 1)
    out = D.ddpm_sample(den, sched, shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    assert float(out.mean()) == pytest.approx(m, abs=0.01)
    assert float(out.std()) == pytest.approx(s, rel=0.05)
    errors = []
    for steps in (25, 200):
        ts = D.ddim_timesteps(400, steps, "trailing")
        out = D.ddim_sample(den, sched, shape, timesteps=ts, eta=0.0, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(6))
        assert float(out.mean()) == pytest.approx(m, abs=0.01)
        errors.append(abs(float(out.std()) - s))
    assert errors[1] < 0.05 * s and errors[1] < errors[0]


def test_samplers_are_deterministic_for_a_seed():
    sched = D.Schedule.linear(50, 1e-3, 0.1)
    den = _gaussian_denoiser(sched, 0.0, 1.0)
    runs = [D.ddpm_sample(den, sched, (2, 16), generator=torch.Generator().manual_seed(k))
            for k in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    ts = D.ddim_timesteps(50, 5)
    runs = [D.ddim_sample(den, sched, (2, 16), timesteps=ts, eta=1.0,
                          generator=torch.Generator().manual_seed(k)) for k in (7, 7)]
    assert torch.equal(runs[0], runs[1])


def test_fractional_steps_blend_rows():
    sched = D.Schedule.linear(10, 0.01, 0.3)
    a = sched.alphas_cumprod
    got = sched.alphas_cumprod_at(torch.tensor([3.0, 3.25, 9.0], dtype=torch.float64))
    assert got[0] == a[3] and got[2] == a[9]
    assert float(got[1]) == pytest.approx(0.75 * float(a[3]) + 0.25 * float(a[4]), rel=1e-14)
    with pytest.raises(ValueError):
        sched.alphas_cumprod_at(torch.tensor([10]))


def test_guidance_combines_predictions():
    def cond(x, t):
        return x + 1.0

    def uncond(x, t):
        return x - 1.0
    x = torch.zeros(1, 3)
    t = torch.zeros(1, dtype=torch.long)
    assert torch.allclose(D.guided(cond, uncond, 3.5)(x, t), torch.full((1, 3), 6.0))
    assert torch.allclose(D.guided(cond, uncond, 1.0)(x, t), torch.ones(1, 3))
