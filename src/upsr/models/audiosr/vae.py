"""AudioSR's mel VAE: the LDM ``AutoencoderKL`` on log-mel images (Liu et al., 2023, §3.1).

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022
(§3, the KL-regularised autoencoder), as AudioSR's ``audiosr/latent_encoder/autoencoder.py``
and ``latent_diffusion/modules/diffusionmodules/model.py`` build it (haoheliu/versatile_audio_
super_resolution @ 034db6c5d761). The image is the natural-log mel ``[B, 1, frames, 256]``
(time on dim 2, mel on dim 3); the latent is ``[B, 16, frames/8, 32]``.

- ``encoder``: conv 3×3, then per level ``num_res_blocks`` ResnetBlocks and (except the last
  level) a Downsample (zero pad right/bottom by one, conv 3×3 stride 2, no padding); a middle of
  ResnetBlock → single-head self-attention → ResnetBlock; GroupNorm → swish → conv 3×3 to
  ``2·z_channels`` (mean and log-variance).
- ``quant_conv`` (1×1, 2z → 2·embed_dim) gives the moments of a diagonal Gaussian whose
  log-variance is clamped to [−30, 20]; ``post_quant_conv`` (1×1, embed_dim → z) precedes the
  decoder.
- ``decoder``: conv 3×3 from z, the same middle, then the levels deepest first with
  ``num_res_blocks + 1`` blocks and (above level 0) nearest ×2 + conv 3×3; GroupNorm → swish →
  conv 3×3 to one channel; no tanh. ``decoder.up.0`` is the *highest*-resolution level, as in the
  official module list (filled by prepending).

Every GroupNorm has 32 groups and eps 1e-6; the nonlinearity is ``x·sigmoid(x)``. The published
configuration (``VAEConfig()``) has 223,535,569 parameters; the official module also carries the
48 kHz vocoder, which upsr keeps as a separate network (:mod:`upsr.models.audiosr.vocoder`).
"""

from __future__ import annotations

import dataclasses
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
NORM_GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class VAEConfig:
    """The official ``first_stage_config`` ddconfig; defaults are the published values.

    ``attn_resolutions`` lists the feature-map sizes (``resolution`` halved per level) whose
    blocks get self-attention (none in AudioSR; the middle attention is always there).
    ``dropout`` acts only in training. The fixtures' small model is
    ``VAEConfig(ch=32, ch_mult=(1, 2, 2, 2))``.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.1
    in_channels: int = 1
    out_ch: int = 1
    resolution: int = 256
    z_channels: int = 16
    embed_dim: int = 16
    double_z: bool = True

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not self.ch_mult or min(self.ch_mult) < 1 or self.ch < 1:
            raise ValueError(f"VAEConfig: ch {self.ch} and ch_mult {self.ch_mult} must be positive")
        if any((self.ch * m) % NORM_GROUPS for m in (1, *self.ch_mult)):
            raise ValueError(f"VAEConfig: every channel count (ch × ch_mult) must be a multiple "
                             f"of {NORM_GROUPS} (GroupNorm groups); got ch {self.ch}, "
                             f"ch_mult {self.ch_mult}")

    @classmethod
    def published(cls) -> VAEConfig:
        return cls()

    @classmethod
    def small(cls) -> VAEConfig:
        """The parity fixtures' widths (``audiosr_vae.safetensors``): 1,753,521 parameters."""
        return cls(ch=32, ch_mult=(1, 2, 2, 2))

    @property
    def downsample(self) -> int:
        """Latent stride in time and frequency (8 for four levels)."""
        return 2 ** (len(self.ch_mult) - 1)

    def as_dict(self) -> dict[str, tp.Any]:
        return dataclasses.asdict(self)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv 3×3 → norm2 → swish → dropout → conv 3×3, plus the input (through a
    1×1 ``nin_shortcut`` when the channel count changes). ``[B, C_in, H, W] → [B, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions: GroupNorm, 1×1 q/k/v,
    ``softmax(qᵀk / √C)``, 1×1 ``proj_out``, residual. ``[B, C, H, W] → [B, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (m(hn).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C], scale C^-1/2
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad one column right and one row at the bottom, then conv 3×3 stride 2 (no padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then conv 3×3 with padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (one per block or empty) and an
    optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock],
                 downsample: Downsample | None = None, upsample: Upsample | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.downsample = downsample
        self.upsample = upsample

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class Encoder(nn.Module):
    """Mel image ``[B, in_channels, T, F]`` → ``[B, 2·z_channels, T/8, F/8]`` (for 4 levels)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.ch
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(cfg.ch_mult):
            block_in = ch * in_mult[level]
            block_out = ch * mult
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            last = level == len(cfg.ch_mult) - 1
            down = None if last else Downsample(block_in)
            self.down.append(_Level(blocks, attn, downsample=down))
            if not last:
                res //= 2
        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl in tp.cast("list[_Level]", self.down):
            h = lvl.run_blocks(h)
            if lvl.downsample is not None:
                h = lvl.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, z_channels, T/8, F/8]`` → mel image ``[B, out_ch, T, F]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.ch
        levels = len(cfg.ch_mult)
        block_in = ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout)
        up: list[_Level] = []
        for level in reversed(range(levels)):
            block_out = ch * cfg.ch_mult[level]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            # up[0] is the highest resolution, as in the official list (filled by prepending)
            up.insert(0, _Level(blocks, attn, upsample=Upsample(block_in) if level else None))
            if level:
                res *= 2
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for lvl in tp.cast("list[_Level]", self.up[::-1]):
            h = lvl.run_blocks(h)
            if lvl.upsample is not None:
                h = lvl.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class DiagonalGaussian:
    """The posterior ``N(mean, exp(logvar))`` from ``moments: [B, 2·E, H, W]`` (first half mean,
    second half log-variance, clamped to [−30, 20] as the official class does)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.moments = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """``mean + std·ε``. ε is drawn in float32 on the generator's device (CPU when none is
        given, as the official ``torch.randn(shape)`` does, so a seed gives the same ε on any
        device), or taken from ``noise``."""
        if noise is None:
            device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(self.mean.shape, generator=generator, device=device,
                                dtype=torch.float32)
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) summed over C, H, W: ``[B]`` (the VAE training regulariser)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """AudioSR's mel VAE (without its vocoder). ``encode(mel: [B, 1, T, 256])`` →
    :class:`DiagonalGaussian` over ``[B, embed_dim, T/8, 32]``; ``decode(z)`` → ``[B, 1, T, 256]``.
    ``T`` must be a multiple of :attr:`VAEConfig.downsample` for ``decode(encode(x))`` to keep it.
    """

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else VAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z2 = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_conv = nn.Conv2d(z2, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(mel)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, mel: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction (from a posterior sample, or the mean) and the posterior."""
        posterior = self.encode(mel)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior
