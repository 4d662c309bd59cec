"""MambaWave: a DiffWave denoiser with a bidirectional Mamba in every residual layer.

Simone Facchiano, "MambaWave" (course project, simonefacchiano/MambaWave; architecture in
``DiffWave_simone3.py``, hyper-parameters in ``Train_AudioMamba3.py``), built on DiffWave (Kong
et al., "DiffWave: A Versatile Diffusion Model for Audio Synthesis", ICLR 2021, Fig. 2). The
network predicts the noise ε of a noisy 48 kHz waveform given the 24 kHz signal; 1,057,569
parameters; state-dict keys equal the official ones.

Where upsr differs from the official code, on purpose:

- **BiMamba semantics.** Every Mamba is the bidirectional one of the fused CUDA path the model
  was trained with: ``out_proj(y_fwd + flip(y_bwd(flip(·))))`` (:class:`upsr.nn.mamba.BiMamba`).
  The official CPU slow path drops the backward branch; that is not reproduced.
- **One consistent diffusion** (:mod:`upsr.nn.diffusion`). The official training feeds
  ``linspace(1e-6, 0.005, 500)`` as ᾱ (the clean signal is ≤ 7 % of every input) while its
  sampler uses ᾱ = cumprod(1 − linspace(1e-6, 0.006, 1000)), whose indices run past the 500-row
  step table. Here one schedule serves training and sampling: T = 500 steps (the table's
  rows), β = linspace(1e-4, 0.04, 500), so ᾱ falls from 0.9999 to 3.8e-5 at t = 499 (SNR
  −44 dB: the last step is pure noise for practical purposes). The loss is MSE on ε (the
  paper's better model). Samplers: DDIM (default, 25 steps, "trailing" spacing from t = 499),
  DDPM ancestral (all 500 steps), and the official x₀-iteration (``sampler = "official"``:
  x ← x̂₀(x, t) for t = steps − 1 … 0, never re-noised) for comparison.
- **Level.** The official data loader min-max normalises every file to [−1, 1]. ``restore``
  does not rescale: chunks of one file must see one gain, so the model takes audio as it
  comes; training draws a random peak gain per crop (``upsr.train``'s diffusion system).
- **Ratios.** ``ratio`` (default 2, the published 24 → 48 kHz) sets the conditioner's linear
  up-sampling; e.g. ``ratio = 3`` makes a 16 → 48 kHz model.

Noise for sampling comes from :func:`upsr.nn.diffusion.positional_noise`: a function of
(``seed``, draw, absolute sample), so chunked inference sees the noise whole-signal inference
sees, and a seed fixes the output.
"""

from __future__ import annotations

import math
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upsr.checkpoint import check_keys
from upsr.errors import CheckpointError, UsageError
from upsr.models import register
from upsr.models.base import Restorer
from upsr.nn import diffusion as diff
from upsr.nn.mamba import BiMamba

SAMPLERS = ("ddim", "ddpm", "official")

# Effective two-sided reach of the sampler, measured (see MambaWave.context_s).
CONTEXT_S = 1.0


@dataclass(frozen=True)
class MambaWaveConfig:
    """Published configuration (``Train_AudioMamba3.py``: ``Params``) plus the diffusion.

    Network: ``residual_channels`` 32, ``residual_layers`` 11, dilation 2^(i mod
    ``dilation_cycle_length``), BiMamba(d_model 2·C, ``d_state`` 14, ``d_conv`` 4, ``expand``
    2), step table of ``diffusion_steps`` rows (the official ``len(noise_schedule)`` = 500).
    Diffusion: linear β from ``beta_start`` to ``beta_end`` over ``diffusion_steps``.
    Sampling (inference-only, overridable): ``sampler`` ddim | ddpm | official, ``steps``
    (DDIM/official), ``spacing`` (DDIM: ``trailing`` integer steps ending at t = T−1, or
    ``linspace``: fractional steps, which the step table blends), ``eta`` (DDIM), ``seed``,
    ``clip`` (DDIM/DDPM clamp each x̂₀ to
    ±clip, the waveform's range; 0: off). Training: each pair is scaled by a gain drawn
    log-uniformly in [−``train_gain_db``, 0] dB, so the model meets the levels ``restore``
    is given (it does not normalise).
    """

    residual_channels: int = 32
    residual_layers: int = 11
    dilation_cycle_length: int = 5000
    d_state: int = 14
    d_conv: int = 4
    expand: int = 2
    ratio: int = 2
    out_rate: int = 48000
    diffusion_steps: int = 500
    beta_start: float = 1e-4
    beta_end: float = 0.04
    sampler: str = "ddim"
    steps: int = 25
    spacing: str = "trailing"
    eta: float = 0.0
    seed: int = 0
    clip: float = 1.0
    train_gain_db: float = 20.0

    def __post_init__(self) -> None:
        if self.residual_channels < 1 or self.residual_layers < 1:
            raise ValueError("residual_channels and residual_layers must be >= 1")
        if self.ratio < 1 or self.out_rate % self.ratio:
            raise ValueError(f"ratio must be >= 1 and divide out_rate {self.out_rate}")
        if self.diffusion_steps < 2:
            raise ValueError("diffusion_steps must be >= 2")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError("need 0 < beta_start <= beta_end < 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got "
                             f"{self.sampler!r}")
        if not 1 <= self.steps <= self.diffusion_steps:
            raise ValueError(f"steps must lie in [1, {self.diffusion_steps}]")
        if self.spacing not in ("trailing", "linspace", "uniform"):
            raise ValueError(f"spacing must be trailing, linspace or uniform, got "
                             f"{self.spacing!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError("eta must lie in [0, 1]")
        if self.clip < 0:
            raise ValueError("clip must be >= 0")
        if self.train_gain_db < 0:
            raise ValueError("train_gain_db must be >= 0")

    @property
    def in_rate(self) -> int:
        return self.out_rate // self.ratio

    def schedule(self) -> diff.Schedule:
        """The one schedule of training and sampling."""
        return diff.Schedule.linear(self.diffusion_steps, self.beta_start, self.beta_end)


def _conv1d(c_in: int, c_out: int, kernel: int, **kwargs: tp.Any) -> nn.Conv1d:
    """DiffWave's ``Conv1d``: kaiming-normal weight (default bias init)."""
    conv = nn.Conv1d(c_in, c_out, kernel, **kwargs)
    nn.init.kaiming_normal_(conv.weight)
    return conv


def step_table(rows: int) -> torch.Tensor:
    """The sinusoidal step table ``[rows, 128]`` = [sin(64) | cos(64)] of t·10^(4i/63).

    Built in float32 with exactly the official operations: the arguments reach 5·10⁶, so the
    float32 rounding of the frequencies and products decides the values (a float64 table
    differs by up to 0.36).
    """
    steps = torch.arange(rows).unsqueeze(1)
    dims = torch.arange(64).unsqueeze(0)
    table = steps * 10.0 ** (dims * 4.0 / 63.0)
    return torch.cat([torch.sin(table), torch.cos(table)], dim=1)


class DiffusionEmbedding(nn.Module):
    """Step t → 512-d: table row (fractional t: linear blend of rows ⌊t⌋, ⌈t⌉) → Linear 128→512
    → SiLU → Linear 512→512 → SiLU. ``t: [B]`` → ``[B, 512]``."""

    embedding: torch.Tensor

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.register_buffer("embedding", step_table(rows), persistent=False)
        self.projection1 = nn.Linear(128, 512)
        self.projection2 = nn.Linear(512, 512)

    def lookup(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype in (torch.int32, torch.int64):
            return self.embedding[t]
        low_idx = torch.floor(t).long()
        high_idx = torch.ceil(t).long()
        low = self.embedding[low_idx]
        high = self.embedding[high_idx]
        return low + (high - low) * (t - low_idx).unsqueeze(-1).to(low.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.lookup(t)
        x = F.silu(self.projection1(x))
        return F.silu(self.projection2(x))


def _bimamba_channels_first(mamba: BiMamba, y: torch.Tensor) -> torch.Tensor:
    """``BiMamba(yᵀ)ᵀ`` for ``y: [N, D, T]`` (channels first).

    At inference on the CPU scan backend (float32, no autocast, no projection biases: the
    published config) the block reads ``y`` where it lies: ``in_proj`` is one batched product
    on ``y``'s transposed view (no copy into ``[N, T, D]``), both directions run the
    channel-last kernels of :class:`upsr.nn.mamba.BiMamba` on its output as in
    ``BiMamba._forward_channel_last``, and ``out_proj`` is a batched product that writes
    ``[N, D, T]`` directly (no transpose back). Elsewhere (or with hooks on the block): the
    block between two transposes."""
    from upsr.nn.scan import resolve_backend

    m = mamba
    yt = y.transpose(1, 2)
    if (y.dtype != torch.float32 or torch.is_autocast_enabled(y.device.type)
            or m._forward_hooks or m._forward_pre_hooks  # hooks see the block's own call
            or m.in_proj.bias is not None or m.out_proj.bias is not None
            or not m._use_channel_last(yt, resolve_backend(m.backend, y.device))):
        return m(yt).transpose(1, 2)
    N = y.shape[0]
    w_in = m.in_proj.weight.t()  # [D, 2·Di]
    xz = torch.bmm(yt, w_in.expand(N, *w_in.shape))  # [N, T, 2·Di]
    h = m._branch_channel_last(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D,
                               reverse=False, out=None)
    h = m._branch_channel_last(xz, m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b,
                               reverse=True, out=h)  # [N, T, Di], both directions summed
    w_out = m.out_proj.weight  # [D, Di]
    return torch.bmm(w_out.expand(N, *w_out.shape), h.transpose(1, 2))


class ResidualBlock(nn.Module):
    """One residual layer: ``x [B, C, T]``, conditioner ``[B, C, ≥T]``, step ``[B, 512]`` →
    ((x + residual)/√2, skip), both ``[B, C, T]``."""

    def __init__(self, channels: int, dilation: int, cfg: MambaWaveConfig) -> None:
        super().__init__()
        self.dilated_conv = _conv1d(channels, 2 * channels, 3, padding=dilation,
                                    dilation=dilation)
        self.norm_layer = nn.BatchNorm1d(2 * channels)
        self.diffusion_projection = nn.Linear(512, channels)
        self.conditioner_projection = _conv1d(channels, 2 * channels, 1)
        self.output_projection = _conv1d(channels, 2 * channels, 1)
        self.mamba = BiMamba(2 * channels, d_state=cfg.d_state, d_conv=cfg.d_conv,
                             expand=cfg.expand)

    def forward(self, x: torch.Tensor, conditioner: torch.Tensor,
                step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x + self.diffusion_projection(step).unsqueeze(-1)
        y = self.norm_layer(self.dilated_conv(y))
        y = _bimamba_channels_first(self.mamba, y)
        y = y + F.relu(self.conditioner_projection(conditioner))[..., :y.shape[-1]]
        gate, filt = torch.chunk(y, 2, dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))
        residual, skip = torch.chunk(y, 2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


def convert_official(obj: tp.Any) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    """An official training checkpoint (``{model_state_dict, optimizer_state_dict, epoch,
    loss}``, or a bare state dict) → (config overrides, state dict). Keys are the official
    ones; a missing, misshapen or extra key is a CheckpointError naming it. The config is
    inferred from the shapes (channels, layers, d_state); the official dilation cycle 5000
    and 500-step table are assumed."""
    state = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError("not a MambaWave checkpoint: expected a dict with "
                              "'model_state_dict' (or a state dict of tensors)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        channels = int(state["input_projection.weight"].shape[0])
        layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("residual_layers."))
        d_state = int(state["residual_layers.0.mamba.A_log"].shape[1])
    except (KeyError, ValueError, IndexError):
        raise CheckpointError("not a MambaWave checkpoint: missing 'input_projection.weight', "
                              "'residual_layers.*' or 'residual_layers.0.mamba.A_log'") from None
    overrides = {"residual_channels": channels, "residual_layers": layers, "d_state": d_state}
    cfg = MambaWaveConfig(**overrides)  # type: ignore[arg-type]
    with torch.device("meta"):
        expected = MambaWave(cfg).state_dict()
    check_keys(state, expected, "mambawave")
    out = {k: v.detach().clone().to(expected[k].dtype) for k, v in state.items()}
    return overrides, out


@register("mambawave", "MambaWave (Facchiano; DiffWave + bidirectional Mamba)",
          importer=convert_official)
class MambaWave(Restorer):
    """MambaWave: ``restore(x: [B, T] at out_rate/ratio) -> [B, ratio·T]`` by sampling.

    ``forward(x_t [B, T], conditioning [B, ceil(T/ratio)], t [B]) -> ε̂ [B, T]`` is the
    official ``DiffWave.forward`` (t int64 indexes the step table, float t blends rows).
    """

    config_cls = MambaWaveConfig
    channels = "mono"
    diffusion: tp.ClassVar[bool] = True
    uses_offsets: tp.ClassVar[bool] = True
    prediction: tp.ClassVar[diff.Prediction] = "eps"
    config: MambaWaveConfig

    def __init__(self, config: MambaWaveConfig) -> None:
        super().__init__(config)
        cfg = config
        c = cfg.residual_channels
        self.in_rate = cfg.in_rate
        self.out_rate = cfg.out_rate
        self.input_projection = _conv1d(1, c, 1)
        self.conditioning_projection = _conv1d(1, c, 1)
        self.conditioning_norm = nn.BatchNorm1d(c)
        self.diffusion_embedding = DiffusionEmbedding(cfg.diffusion_steps)
        self.residual_layers = nn.ModuleList(
            ResidualBlock(c, 2 ** (i % cfg.dilation_cycle_length), cfg)
            for i in range(cfg.residual_layers))
        self.skip_projection = _conv1d(c, c, 1)
        self.output_projection = _conv1d(c, 1, 1)
        nn.init.zeros_(self.output_projection.weight)
        self._schedule: diff.Schedule | None = None

    @property
    def schedule(self) -> diff.Schedule:
        if self._schedule is None:
            self._schedule = self.config.schedule()
        return self._schedule

    @property
    def context_s(self) -> float:
        """1.0 s each side, from measurement (``benchmarks/mambawave_context.py``).

        Each denoiser pass reaches ±4,094 samples (85 ms) through the dilated convs and, in
        principle, the whole signal through the BiMamba (decaying like exp(Δ·A) per sample in
        each direction); a sampler compounds this over its steps. Measured with trained-like
        weights (the parity fixture's randomisation: A = −U(0.25, 20), Δ log-uniform in
        [1e-3, 0.5], random BatchNorm statistics), 11 layers, d_state 14 and 4 channels (the
        reach is set by the dilations and decay rates, not the width), 0.6 s of music-like
        24 kHz audio with its first 0.15 s cut, positional noise: with DDIM 8 steps the
        largest |Δy|/rms per 50 ms window is below 1e-3 after 0.10 s, below 1e-4 after
        0.20 s and 1.2e-6 at 0.40 s; with DDIM 25 steps below 1e-4 after 0.20 s and 8e-6 at
        0.40 s. One denoiser pass of the published width (32 channels, 0.5 s, 0.1 s cut):
        below 1e-3 after 0.15 s, below 1e-4 after 0.25 s. 1.0 s is four to five times the
        1e-4 points. Many more steps or trained weights with slower state decay would need
        more: measure a new checkpoint before relying on chunked output to better than 1e-4.
        """
        return CONTEXT_S

    def conditioner(self, conditioning: torch.Tensor) -> torch.Tensor:
        """``[B, Tc]`` → ``[B, C, ratio·Tc]``: 1×1 conv, linear ×ratio, BatchNorm."""
        h = self.conditioning_projection(conditioning.unsqueeze(1))
        h = F.interpolate(h, scale_factor=self.config.ratio, mode="linear",
                          align_corners=False)
        return self.conditioning_norm(h)

    def forward(self, x_t: torch.Tensor, conditioning: torch.Tensor,
                t: torch.Tensor, conditioner: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ for ``x_t [B, T]``; ``conditioner`` (from :meth:`conditioner`) may be passed to
        skip recomputing it at every sampler step."""
        cond = self.conditioner(conditioning) if conditioner is None else conditioner
        if cond.shape[-1] < x_t.shape[-1]:
            raise UsageError(f"mambawave: conditioning covers {cond.shape[-1]} samples, the "
                             f"signal has {x_t.shape[-1]}")
        x = F.relu(self.input_projection(x_t.unsqueeze(1)))
        step = self.diffusion_embedding(t)
        skips = None
        for layer in self.residual_layers:
            x, skip = layer(x, cond, step)
            skips = skip if skips is None else skips + skip
        assert skips is not None
        h = skips / math.sqrt(len(self.residual_layers))
        h = F.relu(self.skip_projection(h))
        return self.output_projection(h).squeeze(1)

    # -- training (upsr.train.systems.DiffusionLoss) ------------------------------------------

    def diffusion_inputs(self, hr: torch.Tensor,
                         lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hr [B, 1, T]``, ``lr [B, 1, T/ratio]`` → (x₀ ``[B, T]``, conditioning
        ``[B, T/ratio]``), both scaled by one random gain per item (``train_gain_db``)."""
        if hr.shape[1] != 1 or lr.shape[1] != 1:
            raise UsageError("mambawave trains on mono pairs (data.channels = 1)")
        db = torch.rand(hr.shape[0], 1, device=hr.device) * -self.config.train_gain_db
        gain = 10.0 ** (db / 20.0)
        return hr[:, 0] * gain, lr[:, 0] * gain

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.forward(x_t, cond, t)

    # -- sampling ---------------------------------------------------------------------------

    def sample(self, conditioning: torch.Tensor, offsets: tp.Sequence[int] | None = None,
               sampler: str | None = None, steps: int | None = None,
               seed: int | None = None, eta: float | None = None) -> torch.Tensor:
        """Draw ``[B, ratio·Tc]`` given ``conditioning [B, Tc]`` (config values by default).

        ``offsets``: the absolute index, at the input rate, of each row's first sample (0 by
        default); the noise depends on it (see module docstring).
        """
        cfg = self.config
        sampler = sampler or cfg.sampler
        steps = steps or cfg.steps
        seed = cfg.seed if seed is None else seed
        eta = cfg.eta if eta is None else eta
        b, tc = conditioning.shape
        length = tc * cfg.ratio
        offs = [0] * b if offsets is None else [int(o) * cfg.ratio for o in offsets]
        dtype = conditioning.dtype if conditioning.dtype.is_floating_point else torch.float32
        cond = self.conditioner(conditioning)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.forward(x, conditioning, t, cond).to(x.dtype)

        def noise_fn(draw: int) -> torch.Tensor:
            return diff.positional_noise(seed, offs, length, draw)

        shape = (b, length)
        dev = conditioning.device
        clip = cfg.clip or None
        if sampler == "ddpm":
            return diff.ddpm_sample(denoise, self.schedule, shape, dtype=dtype, device=dev,
                                         noise_fn=noise_fn, clip_x0=clip)
        if sampler == "official":
            x = noise_fn(0).to(device=dev, dtype=dtype)
            return official_sample(denoise, self.schedule.alphas_cumprod, x, steps)
        ts = diff.ddim_timesteps(self.schedule.num_steps, steps,
                                 tp.cast(diff.Spacing, cfg.spacing))
        return diff.ddim_sample(denoise, self.schedule, shape, timesteps=ts, eta=eta,
                                     dtype=dtype, device=dev, noise_fn=noise_fn, clip_x0=clip)

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None,
                offsets: tp.Sequence[int] | None = None) -> torch.Tensor:
        """``x: [B, T]`` at ``in_rate`` → ``[B, ratio·T]`` at ``out_rate`` (the configured
        sampler). ``offsets`` as in :meth:`sample` (the engine passes each chunk's start)."""
        if x.dim() != 2:
            raise UsageError(f"mambawave: restore expects [batch, samples], got shape "
                             f"{tuple(x.shape)}")
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], 0)
        return self.sample(x, offsets)


@torch.no_grad()
def official_sample(denoise: diff.Denoiser, alphas_cumprod: torch.Tensor, x: torch.Tensor,
                    steps: int) -> torch.Tensor:
    """The official ``DiffWave.sample`` loop: for t = steps − 1 … 0 (passed as float),
    x ← (x − √(1−ᾱₜ)·ε̂(x, t))/√ᾱₜ. Every step replaces x by an x₀ estimate and no noise is
    re-injected, so this is not DDPM; with the official ᾱ (cumprod(1 − linspace(1e-6, 0.006,
    1000))) it visits the *least* noisy steps. Kept for comparison only."""
    for t in range(steps - 1, -1, -1):
        a = alphas_cumprod[t].to(x.dtype)
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        x = diff.x0_from_eps(x, denoise(x, tt), a)
    return x
