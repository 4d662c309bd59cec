"""Per-system training parts: discriminators, losses with weights, optimisers, schedules.

The three GAN systems differ only in these tables; the loop (:mod:`upsr.train.loop`) is
shared. Facts from ``reference/official-implementations.md`` §1.2, §4.2, §5.2:

- **AEROMamba**: MelGAN multi-scale discriminator (3 scales, ndf 16), hinge loss; generator
  loss MR-STFT (0.5 sc + 0.5 log-mag) + hinge + 100 × 4/(n_layers+1)/num_D × feature-matching
  L1; Adam 3e-4, betas (0.9, 0.999), both networks.
- **Apollo**: multi-frequency discriminator (7 STFT windows), LSGAN averaged over them;
  generator loss freq-MAE + LSGAN + relative feature matching, all × 1; AdamW G 1e-3, D 1e-4
  betas (0.5, 0.99), weight decay 0.01, clip 5; StepLR(2 epochs, 0.98).
- **Wave-U-Mamba**: HiFi-GAN MPD + MSD, LSGAN summed; generator loss LSGAN + 45 × mel L1 (with
  gradients, as the paper says) + 10 × A-weighted mel MR-STFT; AdamW 2e-4 betas (0.6, 0.99),
  clip G 3 / D 2; 5 epochs warm-up then × 0.999 per epoch.

The recipes in ``recipes/`` write these numbers out; this module turns a recipe's
``[discriminator]``, ``[losses]``, ``[optim.*]`` and ``[schedule]`` into modules.

Diffusion systems (MambaWave; AudioSR's latent diffusion) have no discriminator: their loss
is :class:`DiffusionLoss`, the denoising objective of Ho et al. (2020, eq. 14, "L_simple") for
whatever the model predicts (ε, v or x₀), over the model's own :class:`~upsr.nn.diffusion.
Schedule`, so training and sampling cannot disagree.
"""

from __future__ import annotations

import inspect
import typing as tp

import torch
from torch import nn

from upsr.errors import UsageError
from upsr.nn import diffusion as diff
from upsr.nn import discriminators as D
from upsr.nn import losses as L
from upsr.train.recipe import DiscriminatorSection, OptimizerSection, Recipe, ScheduleSection

DiscOutput = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


class HiFiGANDiscriminator(nn.Module):
    """HiFi-GAN's MPD and MSD side by side (Kong et al. 2020), as Wave-U-Mamba trains them:
    their outputs are concatenated, so the adversarial and feature-matching sums run over all
    5 + 3 sub-discriminators. Options: ``periods``, ``channels`` (MPD), ``num_scales``,
    ``width`` (MSD). ``x: [B, 1, T]``."""

    def __init__(self, periods: tp.Sequence[int] = D.HIFIGAN_PERIODS,
                 channels: tp.Sequence[int] = (32, 128, 512, 1024, 1024),
                 num_scales: int = 3, width: int = 128) -> None:
        super().__init__()
        self.mpd = D.MultiPeriodDiscriminator(periods, channels)
        self.msd = D.MultiScaleDiscriminator(num_scales, width)

    def forward(self, x: torch.Tensor) -> DiscOutput:
        lp, fp = self.mpd(x)
        ls, fs = self.msd(x)
        return lp + ls, fp + fs


_DISCRIMINATORS: dict[str, tp.Callable[..., nn.Module]] = {
    "melgan": D.MelGANMultiScaleDiscriminator,
    "hifigan": HiFiGANDiscriminator,
    "multi_frequency": D.MultiFrequencyDiscriminator,
    "patch": D.PatchDiscriminator,  # mel images: AudioSR's VAE stage only
}


def build_discriminator(section: DiscriminatorSection, channels: int) -> nn.Module:
    """The recipe's discriminator; ``options`` are checked against its constructor.

    ``multi_frequency`` sees all ``channels`` of the clean signal at once (Apollo's is
    stereo); the others are mono and get channels folded into the batch.
    """
    ctor = _DISCRIMINATORS[section.kind]
    params = inspect.signature(ctor).parameters
    for key in section.options:
        if key not in params or key == "self":
            raise UsageError(f"recipe discriminator.options.{key}: unknown option for "
                             f"{section.kind!r} (allowed: {', '.join(params)})")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in section.options.items()}
    if section.kind == "multi_frequency":
        opts.setdefault("channels", channels)
        if opts["channels"] != channels:
            raise UsageError(f"recipe discriminator.options.channels: {opts['channels']} "
                             f"differs from data.channels {channels}")
    try:
        return ctor(**opts)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"recipe discriminator.options: {exc}") from None


def disc_input(disc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x: [B, C, T]`` → what ``disc`` takes: ``[B, C, T]`` for a multi-channel
    discriminator, ``[B·C, 1, T]`` for a mono one."""
    inner = getattr(disc, "module", disc)
    if getattr(inner, "channels", 1) == x.shape[1]:
        return x
    return x.reshape(-1, 1, x.shape[-1])


class GeneratorLoss(nn.Module):
    """Weighted sum of the recipe's reconstruction terms (on waveforms ``[B, C, T]``).

    Names: ``stft_aero`` (AEROMamba's MR-STFT), ``stft_wave_u_mamba`` (auraloss mel MR-STFT
    with A-weighting, 48 kHz), ``mel`` (Wave-U-Mamba's power-mel L1 — differentiable),
    ``freq_mae`` (Apollo), ``l1`` (waveform). ``adversarial`` and ``feature_matching``
    weights are read by the loop.
    """

    def __init__(self, weights: tp.Mapping[str, float]) -> None:
        super().__init__()
        self.weights = {k: w for k, w in weights.items()
                        if k not in ("adversarial", "feature_matching", "diffusion") and w > 0}
        self.terms = nn.ModuleDict()
        if "stft_aero" in self.weights:
            self.terms["stft_aero"] = L.aeromamba_stft_loss()
        if "stft_wave_u_mamba" in self.weights:
            self.terms["stft_wave_u_mamba"] = L.wave_u_mamba_stft_loss()
        if "mel" in self.weights:
            self.terms["mel"] = L.wave_u_mamba_mel_loss()

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each weighted term (unweighted values, for logging) and ``total`` (weighted)."""
        out: dict[str, torch.Tensor] = {}
        total = est.new_zeros(())
        for name, w in self.weights.items():
            if name == "freq_mae":
                value = L.freq_mae(est, ref)
            elif name == "l1":
                value = (est - ref).abs().mean()
            else:
                value = self.terms[name](est, ref)
            out[name] = value
            total = total + w * value
        out["total"] = total
        return out


def adversarial_losses(section: DiscriminatorSection
                       ) -> tuple[tp.Callable[..., torch.Tensor], tp.Callable[..., torch.Tensor],
                                  tp.Callable[..., torch.Tensor]]:
    """``(d_loss(real, fake), g_loss(fake), feature_matching(fake_feats, real_feats))``."""
    red = section.reduction
    if section.adversarial == "hinge":
        def d_loss(r: tp.Any, f: tp.Any) -> torch.Tensor:
            return L.hinge_d_loss(r, f, red)

        def g_loss(f: tp.Any) -> torch.Tensor:
            return L.hinge_g_loss(f, red)
    else:
        def d_loss(r: tp.Any, f: tp.Any) -> torch.Tensor:
            return L.lsgan_d_loss(r, f, red)

        def g_loss(f: tp.Any) -> torch.Tensor:
            return L.lsgan_g_loss(f, red)
    fm = L.feature_matching_l1 if section.feature_matching == "l1" else \
        L.feature_matching_relative
    return d_loss, g_loss, fm


def build_optimizer(params: tp.Iterable[torch.nn.Parameter],
                    section: OptimizerSection) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if section.name == "adam" else torch.optim.AdamW
    return cls(params, lr=section.lr, betas=section.betas, eps=section.eps,
               weight_decay=section.weight_decay)


def lr_factor(section: ScheduleSection, units: int) -> float:
    """Multiplier of the base learning rate after ``units`` completed epochs/steps.

    Linear warm-up over ``warmup`` units (``(u+1)/warmup``), then ``none`` (1),
    ``step`` (``gamma ** ((u − warmup) // step_size)``) or ``exponential``
    (``gamma ** (u − warmup)``).
    """
    if units < section.warmup:
        return (units + 1) / section.warmup
    u = units - section.warmup
    if section.kind == "step":
        return section.gamma ** (u // section.step_size)
    if section.kind == "exponential":
        return section.gamma ** u
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer,
                    section: ScheduleSection) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; the loop steps it once per ``unit``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda u: lr_factor(section, u))


def check_recipe_model(recipe: Recipe, model: tp.Any) -> None:
    """Losses that fix a sample rate must match the model's output rate."""
    fixed = {"stft_wave_u_mamba": 48000, "mel": 48000}
    for name, sr in fixed.items():
        if recipe.losses.get(name, 0) > 0 and recipe.data.sample_rate != sr:
            raise UsageError(f"recipe losses.{name}: defined at {sr} Hz, but "
                             f"data.sample_rate is {recipe.data.sample_rate}")
    out_rate = getattr(model, "out_rate", None)
    if out_rate is not None and out_rate != recipe.data.sample_rate:
        raise UsageError(f"recipe data.sample_rate {recipe.data.sample_rate} differs from the "
                         f"model's output rate {out_rate} Hz")


class DiffusionModel(tp.Protocol):
    """What :class:`DiffusionLoss` needs from a model whose class sets ``diffusion = True``.

    - ``schedule``: its :class:`~upsr.nn.diffusion.Schedule` (the one its sampler uses);
    - ``prediction``: what ``denoise`` returns, ``"eps"``, ``"v"`` or ``"x0"``;
    - ``diffusion_inputs(hr [B, C, T], lr [B, C, T_lr]) -> (x0, cond)``: the clean state the
      diffusion runs on (a waveform, or a latent) and the condition, including any training
      augmentation;
    - ``denoise(x_t, t [B], cond) -> prediction`` (the network; gradients flow).

    A model may instead define ``training_loss(hr [B, C, T], lr [B, C, T_lr], generator)``
    returning the scalar loss (``generator`` is None: the global RNG, which the run seeds and
    saves); :class:`DiffusionLoss` then calls it.
    """

    schedule: diff.Schedule
    prediction: diff.Prediction

    def diffusion_inputs(self, hr: torch.Tensor,
                         lr: torch.Tensor) -> tuple[torch.Tensor, tp.Any]: ...

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: tp.Any) -> torch.Tensor: ...


class DiffusionLoss(nn.Module):
    """``forward(hr, lr) -> MSE(denoise(x_t, t, cond), target)``, with t ~ U{0, …, T−1} per
    item, ε ~ N(0, I) and x_t = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε (the model's schedule). Wraps the model
    so that DDP sees the network's forward. Draws from the global torch RNG (seeded and saved
    with the run)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        own = getattr(self.model, "training_loss", None)
        if own is not None:  # a model with its own objective (e.g. a latent diffusion)
            return tp.cast(torch.Tensor, own(hr, lr, None))
        m = tp.cast(DiffusionModel, self.model)
        x0, cond = m.diffusion_inputs(hr, lr)
        x0 = x0.float()
        t = torch.randint(0, m.schedule.num_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = diff.q_sample(m.schedule, x0, t, noise)
        a = m.schedule.alphas_cumprod_at(t).to(device=x0.device, dtype=x0.dtype)
        a = a.view(-1, *([1] * (x0.dim() - 1)))
        target = diff.target(m.prediction, x0, noise, a)
        pred = m.denoise(x_t, t, cond)
        return torch.mean((pred.float() - target) ** 2)
