"""AudioSR's latent diffusion U-Net (the LDM ``openaimodel.UNetModel`` with spatial transformers).

Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (the ADM U-Net),
with the spatial transformers of Rombach et al., CVPR 2022 (§3.3), as AudioSR builds it
(``latent_diffusion/modules/diffusionmodules/openaimodel.py``, ``modules/attention.py``;
haoheliu/versatile_audio_super_resolution @ 034db6c5d761). Input ``[B, 32, T, F]`` = the noisy
latent and the scaled condition concatenated on channels (by the caller); output the
v-prediction ``[B, 16, T, F]``. ``T`` and ``F`` must be multiples of 2^(levels−1).

- Timestep embedding [cos, sin] of ``t·exp(−ln(10⁴)·i/half)`` (cos first), then
  ``time_embed`` = Linear → SiLU → Linear to 4·model_channels.
- ``input_blocks``: conv 3×3, then per level ``num_res_blocks`` × [ResBlock (+ two
  SpatialTransformers where the level's downsampling factor is in ``attention_resolutions``)] and,
  except at the last level, a stride-2 conv. ``middle_block``: ResBlock, ST, ST, ResBlock.
  ``output_blocks``: levels reversed, ``num_res_blocks + 1`` × [ResBlock on cat(h, skip) (+ STs)],
  nearest ×2 + conv 3×3 at the end of each level above 0. ``out``: GroupNorm → SiLU → conv 3×3.
- Both transformers of an attention level are pure self-attention: the ``extra_sa_layer`` one and
  the "context" one, built with ``context_dim`` None (AudioSR passes no context, so its ``attn2``
  attends to x too). Heads are chunks of ``num_head_channels`` (32) channels.
- ResBlock GroupNorms (32 groups, eps 1e-5) are computed in float32; the transformers'
  GroupNorm uses eps 1e-6, their LayerNorms eps 1e-5; the feed-forward is GEGLU with exact GELU.

The published configuration has 258,195,088 parameters (the package prints "DiffusionWrapper
has 258.20 M params").
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upsr.models.audiosr.vae import Upsample  # the same layer: nearest ×2, conv 3×3 (``conv``)

NORM_GROUPS = 32


@dataclass(frozen=True)
class UNetConfig:
    """The official ``unet_config.params``; defaults are the published values. The fixtures'
    small model is ``UNetConfig(model_channels=32, channel_mult=(1, 1, 2),
    attention_resolutions=(4, 2))``."""

    in_channels: int = 32
    out_channels: int = 16
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    num_res_blocks: int = 2
    num_head_channels: int = 32
    transformer_depth: int = 1
    extra_sa_layer: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_resolutions"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        widths = [self.model_channels * m for m in self.channel_mult]
        if not widths or any(w % NORM_GROUPS or w % self.num_head_channels for w in widths):
            raise ValueError(f"UNetConfig: every width model_channels × channel_mult "
                             f"({widths}) must be a multiple of {NORM_GROUPS} (GroupNorm) and of "
                             f"num_head_channels {self.num_head_channels}")

    @classmethod
    def published(cls) -> UNetConfig:
        return cls()

    @classmethod
    def small(cls) -> UNetConfig:
        """The parity fixture's widths (``audiosr_unet.safetensors``): 2,410,192 parameters."""
        return cls(model_channels=32, channel_mult=(1, 1, 2), attention_resolutions=(4, 2))

    @property
    def downsample(self) -> int:
        """Total stride: latent time/frequency sizes must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def as_dict(self) -> dict[str, tp.Any]:
        return dataclasses.asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^(−i/half)``;
    ``t: [B]`` (int or float steps) → ``[B, dim]`` float32 (cos half first, as the official)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 (float64 for float64 inputs) and cast back: the official
    ``GroupNorm32`` for float32/half inputs, also with half-precision parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = None if self.weight is None else self.weight.to(dt)
        b = None if self.bias is None else self.bias.to(dt)
        return F.group_norm(x.to(dt), self.num_groups, w, b, self.eps).type(x.dtype)


class ResBlock(nn.Module):
    """ADM residual block with the timestep embedding added per channel (no scale-shift):
    ``in_layers`` (norm, SiLU, conv 3×3) + Linear(SiLU(emb)), ``out_layers`` (norm, SiLU,
    dropout, conv 3×3), plus the skip (identity or 1×1 conv). ``x: [B, C, H, W]``, ``emb: [B, E]``.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float,
                 out_channels: int | None = None) -> None:
        super().__init__()
        out = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(NORM_GROUPS, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out))
        self.out_layers = nn.Sequential(GroupNorm32(NORM_GROUPS, out), nn.SiLU(),
                                        nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection: nn.Module = (nn.Identity() if out == channels
                                           else nn.Conv2d(channels, out, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``[B, N, C]``; bias-free q/k/v, ``to_out.0`` with
    bias, heads = contiguous chunks of ``head_dim`` channels, scale ``head_dim^−1/2``."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (m(x).view(b, n, self.heads, -1).transpose(1, 2)
                   for m in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """``Linear(dim → 2·inner)`` split into value | gate; ``value · GELU(gate)`` (exact erf)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """``x += attn1(LN x)``; ``x += attn2(LN x)`` (self-attention: no context in AudioSR);
    ``x += FF(LN x)``. Tokens ``[B, N, C]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, heads, head_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6) → 1×1 ``proj_in`` → tokens in (H, W) row-major order → transformer
    blocks → 1×1 ``proj_out`` → + input. ``[B, C, H, W] → [B, C, H, W]``."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        c = t.shape[1]
        t = t.flatten(2).transpose(1, 2)  # [B, H·W, C]
        for block in self.transformer_blocks:
            t = block(t)
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Conv 3×3, stride 2, padding 1 (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class TimestepEmbedSequential(nn.Sequential):
    """A block list whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """``forward(x: [B, in_channels, T, F], t: [B]) → [B, out_channels, T, F]``."""

    def __init__(self, cfg: UNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else UNetConfig()
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))

        def attention(ch: int) -> list[nn.Module]:
            heads = ch // cfg.num_head_channels
            n = 2 if cfg.extra_sa_layer else 1
            return [SpatialTransformer(ch, heads, cfg.num_head_channels, cfg.transformer_depth,
                                       cfg.dropout) for _ in range(n)]

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, cfg.dropout, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, cfg.dropout), *attention(ch), ResBlock(ch, emb_dim, cfg.dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, cfg.dropout, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers += attention(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(NORM_GROUPS, ch), nn.SiLU(),
                                 nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
