"""Gaussian diffusion shared by the diffusion systems: schedules, parameterisations, samplers.

Notation (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020): steps
t = 0 … T−1, βₜ, αₜ = 1 − βₜ, ᾱₜ = Πₛ≤ₜ αₛ, and the forward process
``x_t = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε`` (eq. 4). Step 0 is the least noisy; ᾱ₋₁ = 1 (clean data).

Tables are float64 tensors computed once; every function casts the values it selects to the
dtype of the tensor it works on, so float32, bfloat16 and float64 states all work.

A network is called through a ``denoise(x_t, t) -> prediction`` callable: ``x_t`` has the
state's shape ``[B, ...]`` and ``t`` is a ``[B]`` tensor of steps (int64; float for fractional
steps, see :meth:`Schedule.alphas_cumprod_at`). What it predicts is a :data:`Prediction`:

- ``"eps"``: the noise ε (Ho et al.);
- ``"v"``: v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho, "Progressive Distillation", ICLR 2022, §4);
- ``"x0"``: the clean signal.

Samplers: DDPM ancestral sampling (:func:`ddpm_sample`, Ho et al. Algorithm 2 with the
posterior q(x_{t−1} | x_t, x₀) of eq. 6–7 and σ² = β̃ₜ) and DDIM (:func:`ddim_sample`, Song,
Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12; η = 0 deterministic,
η = 1 has DDPM's marginal noise level). Both take a ``torch.Generator`` for every random draw,
so a seed fixes the result, and return x₀.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import torch

Prediction = tp.Literal["eps", "v", "x0"]
"""What a denoiser returns: the noise, the velocity v, or the clean signal."""

Spacing = tp.Literal["uniform", "trailing", "linspace"]
"""How :func:`ddim_timesteps` picks its steps (see there)."""

Denoiser = tp.Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t [B, ...], t [B]) -> prediction [B, ...]``."""

Callback = tp.Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``callback(i, t, x_t, x0_hat)``, called once per sampler step (i counts from 0)."""

NoiseFn = tp.Callable[[int], torch.Tensor]
"""``noise_fn(draw) -> [*shape]`` standard normal noise: draw 0 is x_T, draw k ≥ 1 the noise
of the k-th sampler step. Replaces the generator where noise must not depend on the batch
layout (see :func:`positional_noise`)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete noise schedule: ``betas`` and ``alphas_cumprod`` (float64, ``[T]``).

    Build with :meth:`linear`, :meth:`cosine` or :meth:`from_alphas_cumprod`; the constructor
    checks that the two tables agree (ᾱ = cumprod(1 − β)).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __post_init__(self) -> None:
        b, a = self.betas, self.alphas_cumprod
        if b.dtype != torch.float64 or a.dtype != torch.float64:
            raise ValueError("schedule tables must be float64")
        if b.dim() != 1 or a.shape != b.shape or b.numel() < 1:
            raise ValueError(f"betas {tuple(b.shape)} and alphas_cumprod {tuple(a.shape)} "
                             "must be 1-D and of equal length")
        if bool(((b < 0) | (b > 1)).any()):
            raise ValueError("betas must lie in [0, 1]")
        if not torch.allclose(torch.cumprod(1.0 - b, 0), a, rtol=1e-9, atol=1e-12):
            raise ValueError("alphas_cumprod must equal cumprod(1 - betas)")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def linear(cls, num_steps: int, beta_start: float, beta_end: float) -> Schedule:
        """DDPM's linear schedule: β = linspace(beta_start, beta_end, T) (Ho et al. §4)."""
        _check_steps(num_steps)
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        return cls(betas, torch.cumprod(1.0 - betas, 0))

    @classmethod
    def scaled_linear(cls, num_steps: int, beta_start: float, beta_end: float) -> Schedule:
        """Latent diffusion's "linear" schedule: β = linspace(√start, √end, T)² (LDM's
        ``make_beta_schedule("linear")``)."""
        _check_steps(num_steps)
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps,
                               dtype=torch.float64) ** 2
        return cls(betas, torch.cumprod(1.0 - betas, 0))

    @classmethod
    def cosine(cls, num_steps: int, s: float = 0.008, max_beta: float | None = None) -> Schedule:
        """Cosine schedule (Nichol & Dhariwal, "Improved DDPM", ICML 2021, eq. 17) the way latent
        diffusion builds it: f(i) = cos²((i/T + s)/(1 + s)·π/2) for i = 0 … T,
        β_t = 1 − f(t+1)/f(t), ᾱ = cumprod(1 − β).

        ``max_beta=None`` keeps the last β at 1 (ᾱ_{T−1} = 0, zero terminal SNR), as AudioSR,
        whose clip line is commented out; Improved DDPM clips at 0.999.
        """
        _check_steps(num_steps)
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps + s
        f = torch.cos(steps / (1 + s) * math.pi / 2).pow(2)
        f = f / f[0]
        betas = 1.0 - f[1:] / f[:-1]
        if max_beta is not None:
            betas = betas.clamp(0.0, max_beta)
        return cls(betas, torch.cumprod(1.0 - betas, 0))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor | tp.Sequence[float]) -> Schedule:
        """The schedule with the given ᾱ (strictly decreasing, in (0, 1], float64 internally):
        β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ₋₁ = 1."""
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().clone()
        if a.dim() != 1 or a.numel() < 1:
            raise ValueError("alphas_cumprod must be a non-empty 1-D sequence")
        if bool((a <= 0).any()) or bool((a > 1).any()):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        prev = torch.cat([a.new_ones(1), a[:-1]])
        if bool((a > prev).any()):
            raise ValueError("alphas_cumprod must not increase")
        betas = 1.0 - a / prev
        return cls(betas, a)

    # -- derived tables -----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """ᾱ_{t−1} with ᾱ₋₁ = 1, ``[T]`` float64."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃ₜ = βₜ·(1 − ᾱ_{t−1})/(1 − ᾱₜ) (Ho et al. eq. 7), 0 at t = 0, ``[T]`` float64."""
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.betas * (1.0 - a_prev) / (1.0 - a)

    @property
    def posterior_mean_coefs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c₀, cₜ) with μ̃ₜ = c₀·x₀ + cₜ·xₜ (Ho et al. eq. 7), float64 ``[T]`` each."""
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c0 = self.betas * a_prev.sqrt() / (1.0 - a)
        ct = (1.0 - a_prev) * (1.0 - self.betas).sqrt() / (1.0 - a)
        return c0, ct

    @property
    def terminal_snr(self) -> float:
        """ᾱ_{T−1}/(1 − ᾱ_{T−1}): how much signal is left at the last step (0 = pure noise)."""
        a = float(self.alphas_cumprod[-1])
        return a / (1.0 - a) if a < 1.0 else math.inf

    def alphas_cumprod_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at steps ``t`` (any shape), float64, same shape.

        Integer steps index the table. Float steps t ∈ [0, T−1] blend rows ⌊t⌋ and ⌈t⌉
        linearly (the same rule as a step-embedding table that accepts fractional steps);
        an integer-valued float gives the row itself.
        """
        a = self.alphas_cumprod.to(t.device)
        if not t.dtype.is_floating_point:
            if bool(((t < 0) | (t >= self.num_steps)).any()):
                raise ValueError(f"steps must lie in [0, {self.num_steps - 1}]")
            return a[t.long()]
        tf = t.double()
        if bool(((tf < 0) | (tf > self.num_steps - 1)).any()):
            raise ValueError(f"steps must lie in [0, {self.num_steps - 1}]")
        lo = tf.floor().long()
        hi = tf.ceil().long()
        w = tf - lo.double()
        return a[lo] + (a[hi] - a[lo]) * w


def _check_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"a schedule needs at least 1 step, got {num_steps}")


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` (or scalar) float64 → ``[B, 1, ...]`` in ``like``'s dtype and device."""
    v = values.to(device=like.device, dtype=like.dtype)
    if v.dim() == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


# -- parameterisations --------------------------------------------------------------------------
# ``alpha_bar`` is ᾱ broadcastable to the state (e.g. [B, 1, 1]) in the state's dtype; each
# formula follows from x_t = √ᾱ·x₀ + √(1−ᾱ)·ε and v = √ᾱ·ε − √(1−ᾱ)·x₀.

def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ."""
    return (x_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − √ᾱ·x₀)/√(1−ᾱ)."""
    return (x_t - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    return alpha_bar.sqrt() * eps - (1.0 - alpha_bar).sqrt() * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x₀ = √ᾱ·x_t − √(1−ᾱ)·v."""
    return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε = √(1−ᾱ)·x_t + √ᾱ·v."""
    return (1.0 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v


def split_prediction(prediction: torch.Tensor, kind: Prediction, x_t: torch.Tensor,
                     alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂₀, ε̂) from a denoiser output of the given kind."""
    if kind == "eps":
        return x0_from_eps(x_t, prediction, alpha_bar), prediction
    if kind == "v":
        return x0_from_v(x_t, prediction, alpha_bar), eps_from_v(x_t, prediction, alpha_bar)
    if kind == "x0":
        return prediction, eps_from_x0(x_t, prediction, alpha_bar)
    raise ValueError(f"unknown prediction {kind!r} (eps, v or x0)")


def target(kind: Prediction, x0: torch.Tensor, eps: torch.Tensor,
           alpha_bar: torch.Tensor) -> torch.Tensor:
    """The training target of a denoiser that predicts ``kind``."""
    if kind == "eps":
        return eps
    if kind == "v":
        return v_from_x0_eps(x0, eps, alpha_bar)
    if kind == "x0":
        return x0
    raise ValueError(f"unknown prediction {kind!r} (eps, v or x0)")


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """The forward process x_t = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε for a ``[B]`` tensor of steps."""
    a = _expand(schedule.alphas_cumprod_at(t), x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def sample_steps(schedule: Schedule, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Training steps t ~ U{0, …, T−1}, ``[batch]`` int64."""
    return torch.randint(0, schedule.num_steps, (batch,), generator=generator,
                         device=device if device is not None else "cpu")


def guided(denoise_cond: Denoiser, denoise_uncond: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans, 2022, eq. 6 in prediction space):
    u + scale·(c − u). ``scale = 1`` is the conditional model alone."""
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = denoise_cond(x_t, t)
        if scale == 1.0:
            return cond
        uncond = denoise_uncond(x_t, t)
        return uncond + scale * (cond - uncond)
    return denoise


# -- samplers -----------------------------------------------------------------------------------

def _randn(shape: tp.Sequence[int], dtype: torch.dtype, device: torch.device | str,
           generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device and move: a CPU generator then gives the same numbers
    # whatever device the state lives on.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=gen_device)
    return z.to(device=device, dtype=dtype)


def _noise(draw: int, shape: tp.Sequence[int], dtype: torch.dtype, device: torch.device | str,
           generator: torch.Generator | None, noise_fn: NoiseFn | None) -> torch.Tensor:
    if noise_fn is None:
        return _randn(shape, dtype, device, generator)
    z = noise_fn(draw)
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"noise_fn gave shape {tuple(z.shape)}, expected {tuple(shape)}")
    return z.to(device=device, dtype=dtype)


def _start(shape: tp.Sequence[int], x_T: torch.Tensor | None, dtype: torch.dtype,
           device: torch.device | str, generator: torch.Generator | None,
           noise_fn: NoiseFn | None) -> torch.Tensor:
    if x_T is not None:
        return x_T.to(device=device, dtype=dtype)
    return _noise(0, shape, dtype, device, generator, noise_fn)


def positional_noise(seed: int, offsets: tp.Sequence[int], length: int, draw: int = 0,
                     block: int = 4096) -> torch.Tensor:
    """Standard normal noise ``[len(offsets), length]`` whose value at sample n of a row is a
    function of (seed, draw, offset + n) only.

    Row b covers absolute samples ``offsets[b] … offsets[b] + length − 1``; the time axis is cut
    into blocks of ``block`` samples, each drawn from its own generator seeded by a 64-bit mix of
    (seed, draw, block index). So a chunk of a long signal gets exactly the noise the whole
    signal gets at the same samples, whatever the chunking, batching or device: a sampler fed
    with it (``noise_fn``) gives chunked output equal to whole-signal output wherever the
    network's receptive field fits in the chunk. Offsets may be negative.
    """
    rows = []
    cache: dict[int, torch.Tensor] = {}
    for off in offsets:
        off = int(off)
        if off not in cache:
            first, last = off // block, (off + max(length, 1) - 1) // block
            parts = []
            for k in range(first, last + 1):
                gen = torch.Generator().manual_seed(_mix64(seed, draw, k))
                parts.append(torch.randn(block, generator=gen))
            whole = torch.cat(parts)
            cache[off] = whole[off - first * block: off - first * block + length]
        rows.append(cache[off])
    return torch.stack(rows) if rows else torch.zeros(0, length)


def _mix64(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over a running sum)."""
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for v in values:
        h = (h + (v & mask) + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h & ((1 << 63) - 1)


@torch.no_grad()
def ddpm_sample(denoise: Denoiser, schedule: Schedule, shape: tp.Sequence[int], *,
                prediction: Prediction = "eps", generator: torch.Generator | None = None,
                x_T: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", clip_x0: float | None = None,
                callback: Callback | None = None, noise_fn: NoiseFn | None = None
                ) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. Algorithm 2) over all T steps.

    Each step predicts x̂₀, then draws x_{t−1} ~ N(μ̃ₜ(x_t, x̂₀), β̃ₜ) from the true posterior
    (eq. 6–7); β̃₀ = 0, so the last step returns μ̃₀ = x̂₀. ``clip_x0`` clamps x̂₀ to ±value.
    Starts from ``x_T`` or N(0, I) of ``shape``; returns x₀ ``[*shape]``.
    """
    x = _start(shape, x_T, dtype, device, generator, noise_fn)
    c0, ct = schedule.posterior_mean_coefs
    var = schedule.posterior_variance
    for i, step in enumerate(range(schedule.num_steps - 1, -1, -1)):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        a = _expand(schedule.alphas_cumprod[step], x)
        x0, _ = split_prediction(denoise(x, t), prediction, x, a)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        if callback is not None:
            callback(i, t, x, x0)
        mean = _expand(c0[step], x) * x0 + _expand(ct[step], x) * x
        if step > 0:
            z = _noise(i + 1, x.shape, x.dtype, x.device, generator, noise_fn)
            x = mean + _expand(var[step].sqrt(), x) * z
        else:
            x = mean
    return x


def ddim_timesteps(num_steps: int, steps: int, spacing: Spacing = "trailing") -> torch.Tensor:
    """The ascending subset of steps a ``steps``-step DDIM visits, ``[S]``.

    - ``"uniform"``: latent diffusion's ``make_ddim_timesteps``: range(0, T, T//steps) + 1
      (int64). When T is not a multiple of ``steps`` it has more than ``steps`` entries, and
      it never reaches step T−1.
    - ``"trailing"``: round(arange(T, 0, −T/steps)) − 1, reversed (int64): ends at T−1, the
      noisiest step (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
      Flawed", WACV 2024, Table 2).
    - ``"linspace"``: linspace(0, T−1, steps) as float64 fractional steps; needs a model whose
      step embedding takes fractional steps.
    """
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must lie in [1, {num_steps}], got {steps}")
    if spacing == "uniform":
        return torch.arange(0, num_steps, num_steps // steps, dtype=torch.long) + 1
    if spacing == "trailing":
        ts = torch.round(torch.arange(float(num_steps), 0.0, -num_steps / steps,
                                      dtype=torch.float64)).long() - 1
        return ts.flip(0).contiguous()
    if spacing == "linspace":
        if steps == 1:
            return torch.tensor([float(num_steps - 1)], dtype=torch.float64)
        return torch.linspace(0.0, float(num_steps - 1), steps, dtype=torch.float64)
    raise ValueError(f"unknown spacing {spacing!r} (uniform, trailing or linspace)")


@torch.no_grad()
def ddim_sample(denoise: Denoiser, schedule: Schedule, shape: tp.Sequence[int], *,
                timesteps: torch.Tensor, prediction: Prediction = "eps", eta: float = 0.0,
                final_alpha_cumprod: float | None = 1.0,
                generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                clip_x0: float | None = None, callback: Callback | None = None,
                noise_fn: NoiseFn | None = None) -> torch.Tensor:
    """DDIM (Song et al. eq. 12) over ``timesteps`` (ascending, from :func:`ddim_timesteps`),
    visited from the largest down.

    Step from t to the next smaller visited step p (ᾱ_p; after the smallest step,
    ``final_alpha_cumprod``: 1.0 lands on clean data, None uses ᾱ₀ as latent diffusion does):
    x_p = √ᾱ_p·x̂₀ + √(1 − ᾱ_p − σ²)·ε̂ + σ·z, σ = η·√((1−ᾱ_p)/(1−ᾱₜ)·(1 − ᾱₜ/ᾱ_p)).
    Float ``timesteps`` are fractional steps (ᾱ by :meth:`Schedule.alphas_cumprod_at`).
    Returns the final x ``[*shape]``.
    """
    ts = timesteps.flatten()
    if ts.numel() < 1:
        raise ValueError("ddim_sample needs at least one step")
    if bool((ts[1:] <= ts[:-1]).any()):
        raise ValueError("timesteps must be strictly increasing")
    abar = schedule.alphas_cumprod_at(ts)
    final = schedule.alphas_cumprod[0] if final_alpha_cumprod is None else torch.tensor(
        float(final_alpha_cumprod), dtype=torch.float64)
    abar_prev = torch.cat([final.reshape(1), abar[:-1]])
    sigma = eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)).clamp_min(0).sqrt()
    x = _start(shape, x_T, dtype, device, generator, noise_fn)
    for i, k in enumerate(range(ts.numel() - 1, -1, -1)):
        t = ts[k].to(x.device).expand(x.shape[0])
        a = _expand(abar[k], x)
        x0, eps = split_prediction(denoise(x, t), prediction, x, a)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = eps_from_x0(x, x0, a)
        if callback is not None:
            callback(i, t, x, x0)
        a_p = float(abar_prev[k])
        s = float(sigma[k])
        direction = math.sqrt(max(1.0 - a_p - s * s, 0.0))
        x = math.sqrt(a_p) * x0 + direction * eps
        if s > 0:
            x = x + s * _noise(i + 1, x.shape, x.dtype, x.device, generator, noise_fn)
    return x
