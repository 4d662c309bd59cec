"""Wave-U-Mamba: a waveform U-Net with Mamba blocks for speech super-resolution to 48 kHz.

Lee & Kim, "Wave-U-Mamba: An End-To-End Framework For High-Quality And Efficient Speech Super
Resolution" (ICASSP 2025, arXiv 2409.09337); official code ``infected4098/Wave-U-Mamba``
(``modules/waveumamba.py``, class ``WaveUmamba``). The network consumes the low-resolution
signal *already resampled to 48 kHz* and returns ``tanh(head(...)) + input`` at 48 kHz:

- **down path** (4 blocks, 1 → 32 → 64 → 128 → 256 channels): right-padded conv (k 4) → LN →
  LeakyReLU(0.1) → residual [right-padded conv → LN → LeakyReLU] → AvgPool(2, 2) →
  2 × [x + Mamba(LN(x))]; between blocks LN + LeakyReLU(0.1);
- **bottleneck**: the same with k 3 convs, no pooling and 3 Mamba blocks, then LN;
- **up path** (4 stages): LeakyReLU(0.1) → + skip (the raw down-block outputs, deepest first)
  → weight-normed ConvTranspose1d (×2) → 2 Mamba blocks → HiFi-GAN ResBlock (k 3, d 1, 3);
- **head**: LeakyReLU(0.01) → weight-normed Conv1d(16 → 1, k 7) → tanh → + input.

The 19 Mamba modules are :class:`upsr.nn.mamba.Mamba` (d_state 16, d_conv 4, expand 2),
causal in time. Module names equal the official ones except for weight norm, which uses
``torch.nn.utils.parametrizations.weight_norm`` (``parametrizations.weight.original0/1``
instead of ``weight_g/weight_v``); :func:`convert_official` maps them. The official
``init_weights`` call on the weight-normed layers only rewrites a derived ``weight`` tensor that
weight norm recomputes from ``g`` and ``v`` on every forward, so it has no effect; the default
init here is therefore plain PyTorch init + weight norm, as in the official model.
"""

from __future__ import annotations

import functools
import math
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from upsr.checkpoint import check_keys
from upsr.errors import CheckpointError, UsageError
from upsr.models import register
from upsr.models.base import Restorer
from upsr.models.importers import Overrides
from upsr.nn.scan import resolve_backend

LRELU_SLOPE = 0.1  # every LeakyReLU except the one before the output conv (PyTorch's 0.01)
STAGES = 4  # down blocks = up stages; each halves / doubles the time axis
STRIDE = 2**STAGES  # input length granularity (4 × AvgPool(2) and 4 × ConvTranspose ×2)
UP_KERNELS = (4, 4, 8, 8)  # ConvTranspose1d kernel sizes, stride 2, padding (k - 2) // 2
RES_KERNEL = 3  # HiFi-GAN ResBlock kernel and dilations
RES_DILATIONS = (1, 3)
POST_KERNEL = 7
# Mamba projections run as bf16 GEMMs under bf16 autocast (the scan, conv, x_proj and the
# residual stream stay float32; see WaveUMamba)
MAMBA_BF16 = ("in_proj", "out_proj")
_WEIGHT_CACHE = "_upsr_conv_weight"  # instance attribute (not state): (key, weight)


def _cached_without_grad(layer: nn.Module, sources: tuple[torch.Tensor, ...],
                         compute: tp.Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, kept on ``layer`` and reused while no gradient is needed and none of
    ``sources`` changed. The key is their version counters, storage and dtype, so an in-place
    update (``load_state_dict``, an optimiser step) or a move (``.to``) recomputes it. With grad
    enabled (training), and for tensors made under ``inference_mode`` (no version counter), it
    is computed every time."""
    if torch.is_grad_enabled() or any(t.is_inference() for t in sources):
        return compute()
    key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
    cached = layer.__dict__.get(_WEIGHT_CACHE)
    if cached is not None and cached[0] == key:
        return tp.cast(torch.Tensor, cached[1])
    value = compute()
    layer.__dict__[_WEIGHT_CACHE] = (key, value)
    return value


def conv_weight_2d(layer: tp.Any) -> torch.Tensor:
    """A Conv1d/ConvTranspose1d weight ``[A, B, k]`` (weight norm applied where the layer has
    it) as a channels-last ``[A, B, 1, k]`` conv2d weight; computed once per parameter version
    for inference (the 21 weight-normed layers recomputed it on every forward)."""
    if parametrize.is_parametrized(layer, "weight"):
        param = layer.parametrizations.weight
        sources: tuple[torch.Tensor, ...] = (param.original0, param.original1)
    else:
        sources = (layer.weight,)
    return _cached_without_grad(
        layer, sources,
        lambda: layer.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last))


def conv1d(layer: tp.Any, x: torch.Tensor, right_pad: bool = False) -> torch.Tensor:
    """``layer(x)`` for a Conv1d (zero padding), ``x: [B, C, L]``, run as a channels-last
    conv2d: the result is ``[B, C_out, L_out]`` with the channels innermost in memory
    (``[B, L, C]``), the layout LayerNorm over channels and the Mamba blocks read without a
    copy. ``right_pad``: ``k - 1`` zeros on the right only (the down path's padding; computed
    as ``k - 1`` each side with the first ``k - 1`` outputs dropped)."""
    k = layer.kernel_size[0]
    pad = k - 1 if right_pad else layer.padding[0]
    y = F.conv2d(x.unsqueeze(2), conv_weight_2d(layer), layer.bias, (1, layer.stride[0]),
                 (0, pad), (1, layer.dilation[0]), layer.groups).squeeze(2)
    return y[..., k - 1:] if right_pad else y


def conv_transpose1d(layer: tp.Any, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a ConvTranspose1d, channels-last as :func:`conv1d`."""
    return F.conv_transpose2d(x.unsqueeze(2), conv_weight_2d(layer), layer.bias,
                              (1, layer.stride[0]), (0, layer.padding[0]),
                              (0, layer.output_padding[0]), layer.groups,
                              (1, layer.dilation[0])).squeeze(2)


def float32_region(fn: tp.Callable[[torch.Tensor], torch.Tensor],
                   x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` in float32 also under autocast (see :class:`WaveUMamba`: the layers whose
    bf16 rounding moved the output spectrum most)."""
    if not torch.is_autocast_enabled(x.device.type):
        return fn(x)
    with torch.autocast(x.device.type, enabled=False):
        return fn(x.float())


@dataclass(frozen=True)
class WaveUMambaConfig:
    """Wave-U-Mamba generator; defaults are the published model (4,203,714 parameters).

    ``channels``: the four down-block widths (the official class hard-codes 32, 64, 128, 256;
    the up path mirrors them and ends at ``channels[0] // 2``); ``down_kernel``/
    ``bottleneck_kernel``: conv kernel sizes; ``down_mambas``/``bottleneck_mambas``/
    ``up_mambas``: pre-LN residual Mamba blocks per stage; ``d_state``, ``d_conv``,
    ``expand``: the Mamba settings (the only fields the official ``cfgs.json`` feeds in).
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    down_kernel: int = 4
    bottleneck_kernel: int = 3
    down_mambas: int = 2
    bottleneck_mambas: int = 3
    up_mambas: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def __post_init__(self) -> None:
        if len(self.channels) != STAGES or any(c < 2 or c % 2 for c in self.channels):
            raise ValueError(f"channels must be {STAGES} even widths >= 2, got "
                             f"{self.channels!r}")
        for key in ("down_kernel", "bottleneck_kernel", "d_state", "d_conv", "expand"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("down_mambas", "bottleneck_mambas", "up_mambas"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")

    @property
    def up_channels(self) -> tuple[int, ...]:
        """Output widths of the four up stages (official: 128, 64, 32, 16)."""
        return tuple(reversed(self.channels[:-1])) + (self.channels[0] // 2,)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, L]`` (eps 1e-5), the official
    ``modules.normalization.LayerNorm`` (its ``nn.LayerNorm`` lives in ``.layernorm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layernorm(x.transpose(1, 2)).transpose(1, 2)


class TimeMamba(nn.Module):
    """A Mamba over ``[B, D, L]`` (channels first): the official ``MambaBlock``."""

    def __init__(self, d_model: int, cfg: WaveUMambaConfig) -> None:
        super().__init__()
        from upsr.nn.mamba import Mamba

        self.mamba = Mamba(d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mamba(x.transpose(1, 2)).transpose(1, 2)


def _has_forward_hooks(module: nn.Module) -> bool:
    """Whether a forward (pre-)hook is registered on ``module``, a submodule or globally."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class MambaStack(nn.Module):
    """``n`` pre-LN residual Mamba blocks, ``x ← x + Mamba(LN(x))`` on ``[B, C, L]``
    (block ``j`` is ``blocks.j.0`` = LN, ``blocks.j.1`` = Mamba, as in the official
    ``Mambablocks``)."""

    def __init__(self, channels: int, n: int, cfg: WaveUMambaConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(ChannelLayerNorm(channels), TimeMamba(channels, cfg)) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L] -> [B, C, L]``, computed on the ``[B, L, C]`` view: for a channel-last
        ``x`` (the model's layout, see :func:`conv1d`) not one copy (the block-by-block
        official layout transposes four times and copies twice per block).

        Inference on CPU (no autograd, float32 or bf16 autocast) runs each block as
        :func:`upsr.nn.mamba_chunked.mamba_chunked`: LayerNorm, Mamba and the residual add
        chunk by chunk in time, the stack's output one buffer updated in place (the same
        math as ``x ← x + block(x)``, float32 rounding apart). Elsewhere (training, float64,
        other devices, forward hooks on the blocks) they run one after the other as
        modules."""
        if not self.blocks:
            return x
        h = x.transpose(1, 2)  # [B, L, C]: contiguous when x is channel-last
        if self._chunked(h):
            return self._forward_chunked(h).transpose(1, 2)
        for block in self.blocks:
            norm, mamba = self._parts(block)
            # float32 under autocast (see WaveUMamba); Mamba's output first: the sum takes its
            # contiguous [B, L, C] layout
            h = float32_region(mamba.mamba, norm.layernorm(h)) + h
        return h.transpose(1, 2)

    @staticmethod
    def _parts(block: nn.Module) -> tuple[ChannelLayerNorm, TimeMamba]:
        return tp.cast(tuple[ChannelLayerNorm, TimeMamba], tuple(tp.cast(nn.Sequential, block)))

    def _chunked(self, h: torch.Tensor) -> bool:
        """Whether the blocks take Mamba's CPU inference path (then: the chunked one) and no
        forward hook waits for their modules' inputs or outputs (which it would not see)."""
        if h.dtype not in (torch.float32, torch.bfloat16) or _has_forward_hooks(self.blocks):
            return False
        mamba = self._parts(self.blocks[0])[1].mamba
        return mamba._use_channel_last(h, resolve_backend(mamba.backend, h.device))

    def _forward_chunked(self, h: torch.Tensor) -> torch.Tensor:
        """The stack on ``h: [B, L, C]`` with :func:`mamba_chunked`; float32 result (the
        blocks are float32 regions under autocast, see :class:`WaveUMamba`)."""
        from upsr.nn.mamba_chunked import mamba_chunked

        bf16 = torch.is_autocast_enabled("cpu") and (
            torch.get_autocast_dtype("cpu") == torch.bfloat16)
        proj = {name: torch.bfloat16 if bf16 and name in MAMBA_BF16 else torch.float32
                for name in ("in_proj", "out_proj")}
        src = h.float().contiguous()
        out: torch.Tensor | None = None
        for block in self.blocks:
            norm, mamba = self._parts(block)
            out = mamba_chunked(mamba.mamba, src, src if out is not None else None,
                                norm=norm.layernorm, residual=src, proj_dtype=proj["in_proj"],
                                out_proj_dtype=proj["out_proj"])
            src = out
        assert out is not None
        return out


class DownBlock(nn.Module):
    """Conv stage of the encoder: ``[B, C_in, L] -> [B, C_out, L / 2]`` (``pool``) or
    ``[B, C_out, L]`` (the bottleneck).

    Both convs are padded with ``k - 1`` zeros on the right only, so output sample ``t`` sees
    input samples ``t … t + k - 1`` (the official padding). The second conv is residual.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, n_mambas: int, pool: bool,
                 cfg: WaveUMambaConfig) -> None:
        super().__init__()
        self.kernel = kernel
        self.pool = pool
        self.mambablocks = MambaStack(c_out, n_mambas, cfg)
        self.convs = nn.ModuleList([nn.Conv1d(c_out, c_out, kernel)])
        self.convlns = nn.ModuleList([ChannelLayerNorm(c_out)])
        self.init_conv = nn.Conv1d(c_in, c_out, kernel)
        self.init_ln = ChannelLayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv1d(self.init_conv, x, right_pad=True)
        x = F.leaky_relu(self.init_ln(x), LRELU_SLOPE)
        for conv, ln in zip(self.convs, self.convlns, strict=True):
            y = conv1d(conv, x, right_pad=True)
            x = x + F.leaky_relu(ln(y), LRELU_SLOPE)
        if self.pool:  # AvgPool1d(2, 2), channels-last
            x = F.avg_pool2d(x.unsqueeze(2), (1, 2), (1, 2)).squeeze(2)
        return self.mambablocks(x)


class Encoder(nn.Module):
    """The official ``Downsamplestem``: ``[B, 1, L] -> ([B, C_last, L/16], skips)``.

    ``skips`` = [input, down-block outputs 0…3] (raw block outputs, before the inter-stage LN).
    The bottleneck output gets its LN but no activation.
    """

    def __init__(self, cfg: WaveUMambaConfig) -> None:
        super().__init__()
        widths = (1,) + cfg.channels
        self.cnn_stem = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], cfg.down_kernel, cfg.down_mambas, True, cfg)
            for i in range(STAGES))
        self.cnn_stem.append(DownBlock(widths[-1], widths[-1], cfg.bottleneck_kernel,
                                       cfg.bottleneck_mambas, False, cfg))
        self.ln_stem = nn.ModuleList(ChannelLayerNorm(c) for c in widths[1:] + widths[-1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [x]
        last = len(self.cnn_stem) - 1
        for i, (block, ln) in enumerate(zip(self.cnn_stem, self.ln_stem, strict=True)):
            x = block(x)
            if i < last:
                skips.append(x)
                x = F.leaky_relu(ln(x), LRELU_SLOPE)
            else:
                x = ln(x)
        return x, skips


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1 (Kong et al., 2020): for each dilation ``d``,
    ``x ← x + conv2(lrelu(conv1_d(lrelu(x))))``, "same" padding, weight norm; ``[B, C, L]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = RES_KERNEL
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, k, dilation=d, padding=d * (k - 1) // 2))
            for d in RES_DILATIONS)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, k, padding=(k - 1) // 2))
            for _ in RES_DILATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            y = F.leaky_relu(conv1d(c1, F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)
            x = x + conv1d(c2, y)
        return x


# Effective receptive field, seconds each side at 48 kHz (measured; see WaveUMamba).
CONTEXT_S = 1.0

_DDP_PREFIX = "module."
# old-style ``torch.nn.utils.weight_norm`` names -> ``parametrizations.weight_norm`` names
_WEIGHT_NORM_KEYS = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


def _generator_state(obj: tp.Any) -> dict[str, torch.Tensor]:
    """The generator state dict of an official container, ``module.`` prefixes removed."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"wave-u-mamba: expected the official checkpoint dict, got "
                              f"{type(obj).__name__}")
    if "generator" not in obj and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # the official loader accepts this wrapping too
    if "generator" not in obj:
        if any(k in obj for k in ("mpd", "msd", "optim_g", "optim_d")):
            raise CheckpointError("wave-u-mamba: this is the official training-state file "
                                  "(discriminators/optimisers, 'do_*'); import the generator "
                                  "file ('g_*') instead")
        raise CheckpointError(f"wave-u-mamba: official checkpoint has no 'generator' entry "
                              f"(found: {', '.join(map(str, list(obj)[:5])) or 'nothing'})")
    raw = obj["generator"]
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError("wave-u-mamba: 'generator' is not a dict of tensors")
    # DDP saves prefix every key with 'module.'; a plain save has no prefix. Mixed is corrupt.
    prefixed = [str(k).startswith(_DDP_PREFIX) for k in raw]
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = str(key)
        if any(prefixed) and not key.startswith(_DDP_PREFIX):
            raise CheckpointError(f"wave-u-mamba: unexpected key {key!r} (every other key has "
                                  f"the DDP prefix {_DDP_PREFIX!r})")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"wave-u-mamba: key {key!r} is not a tensor")
        state[key[len(_DDP_PREFIX):] if any(prefixed) else key] = value
    return state


def _infer_config(state: dict[str, torch.Tensor]) -> dict[str, tp.Any]:
    """Config fields read off the official weights (so reduced or variant checkpoints load)."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"wave-u-mamba: missing key {key!r}")
        return state[key]

    def count(prefix: str) -> int:
        idx = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
        return len(idx)

    channels = tuple(int(need(f"emb.cnn_stem.{i}.init_conv.weight").shape[0])
                     for i in range(STAGES))
    a_log = need("emb.cnn_stem.0.mambablocks.blocks.0.1.mamba.A_log")
    conv = need("emb.cnn_stem.0.mambablocks.blocks.0.1.mamba.conv1d.weight")
    return {
        "channels": channels,
        "down_kernel": int(need("emb.cnn_stem.0.init_conv.weight").shape[-1]),
        "bottleneck_kernel": int(need(f"emb.cnn_stem.{STAGES}.init_conv.weight").shape[-1]),
        "down_mambas": count("emb.cnn_stem.0.mambablocks.blocks."),
        "bottleneck_mambas": count(f"emb.cnn_stem.{STAGES}.mambablocks.blocks."),
        "up_mambas": count("mambablocks.0.blocks."),
        "d_state": int(a_log.shape[1]),
        "d_conv": int(conv.shape[-1]),
        "expand": max(1, int(a_log.shape[0]) // channels[0]),
    }


def convert_official(obj: tp.Any) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    """Official Wave-U-Mamba checkpoint -> ``(WaveUMambaConfig overrides, upsr state dict)``.

    ``obj`` is the safe-unpickled ``{'generator': state_dict}`` the official ``train.py``
    writes (``g_XXXXXXXX``; DDP ``module.`` prefixes are stripped; an unprefixed state dict is
    accepted too). Old-style weight-norm keys ``<layer>.weight_g``/``weight_v`` become
    ``<layer>.parametrizations.weight.original0``/``original1`` (same tensors: ``g`` has the
    size of dim 0 — in_channels for the ConvTranspose1d layers — and ``v`` is the weight
    shape). The architecture is read off the weights. A missing, unknown or misshapen key is a
    :class:`CheckpointError` naming the official key.
    """
    state = _generator_state(obj)
    overrides = _infer_config(state)
    try:
        config = WaveUMambaConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"wave-u-mamba: the weights describe no valid model ({exc})"
                              ) from None
    out: dict[str, torch.Tensor] = {}
    official_name: dict[str, str] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        new = f"{head}.{_WEIGHT_NORM_KEYS[leaf]}" if leaf in _WEIGHT_NORM_KEYS else key
        out[new] = value.detach().to(torch.float32)
        official_name[new] = key
    def official(key: str) -> str:
        return official_name.get(key) or key.replace(
            _WEIGHT_NORM_KEYS["weight_g"], "weight_g").replace(
            _WEIGHT_NORM_KEYS["weight_v"], "weight_v")

    check_keys(out, WaveUMamba(config).state_dict(), "wave-u-mamba", official)
    return Overrides(overrides, inferred=list(overrides)), out


@register("wave-u-mamba", "Wave-U-Mamba (Lee & Kim, ICASSP 2025)", importer=convert_official)
class WaveUMamba(Restorer):
    """Wave-U-Mamba generator: ``restore(x: [B, T]) -> [B, T]`` at 48 kHz, any ``T``.

    ``x`` is the low-resolution signal already resampled to 48 kHz (``in_rate = None``).
    Inputs are zero-padded on the right to a multiple of ``align`` = 16 samples and the
    output is cropped back to ``T``.

    ``align`` = 16: the four stride-2 poolings make the network equivariant only to shifts by
    multiples of 16 samples, so chunked inference equals whole-signal inference only when
    chunk starts fall on multiples of 16 (counted from the signal start); one sample off
    changes the output by ~10 % of its RMS.

    ``context_s`` = 1.0 s, from measurement. The Mamba blocks are causal recurrences, so every
    output depends in principle on all earlier input; in practice each state decays like
    ``exp(Δ·A)`` per step, and the slowest states (small |A|, small Δ) at the 3 kHz bottleneck
    leave a long, roughly 1/t tail. Measured with the published config by running 3–4.5 s of
    band-limited (< 4 kHz) audio, peak 0.5, with its first 0.25 s cut off, and taking the largest
    ``|y_cut - y_whole| / rms(y_whole)`` per 50 ms after the cut:

    - default init (music-like input): below 1e-4 after 0.10 s, below 1e-5 after 0.48 s;
    - realistic random weights (the parity fixture's: A = −U(0.25, 20), Δ log-uniform in
      [1e-3, 0.5], LayerNorm gains U(0.5, 1.5)): below 1e-4 after 0.26 s (music-like) and
      0.27 s (noise), below 1e-5 after 1.0 s; another realistic draw on a narrower model with
      the same blocks: 9.6e-5 at 0.5 s, 3.4e-5 at 1 s (``tests/models/test_wave_u_mamba.py``);
    - to the right (right-padded convs, transposed convs, ResBlocks) the reach is finite:
      176 samples (3.7 ms) above 1e-4.

    1.0 s is about twice the slowest measured 1e-4 point and ~1e-5 for the fixture weights. It
    is a constant because the reach is set by the Mamba decay rates (weights), not by the
    widths. Trained weights with slower state decay would need more: measure a new checkpoint
    before relying on chunked output to better than 1e-4.

    Under bf16 autocast the four transposed convolutions (``ups``) and the output conv
    (``conv_post``) stay in float32 (:func:`float32_region`); the other convolutions (down
    path, bottleneck, ResBlocks) and the Mamba blocks' ``in_proj``/``out_proj`` (``MAMBA_BF16``)
    run in bf16, while the blocks' LayerNorms, causal conv, ``x_proj``, scan (state included)
    and the residual stream stay float32. Measured with ``benchmarks/bf16_error.py``'s method
    (10 s of real music, seeded weights): all layers in bf16 moved the LSD by 0.0206 (rel. L2
    4.35e-3), above ``--precision auto``'s 0.01 bound; with ``ups`` and ``conv_post`` in
    float32, 0.0051 (2.28e-3); as now, 0.0030 (1.95e-3; the Mamba projections in float32 as
    well: 0.0028 / 1.93e-3; ``upsr.infer.precision.BF16_ERRORS``). Keeping one group at a time
    in float32 (4 s excerpt; 0.0232 with none): output conv 0.0159, ``ups`` 0.0165, Mamba
    ``out_proj`` 0.0166, down-path convs 0.0178, ResBlocks 0.0208, bottleneck convs or Mamba
    ``in_proj`` no change; ``ups`` + output conv 0.0062. (Before the chunked blocks, bf16
    projections did not pay: the casts of the full-length float32 scan tensors cost more than
    the GEMMs saved; inside a chunk the casts run on cached data.)
    """

    config_cls = WaveUMambaConfig
    channels = "mono"
    in_rate = None
    out_rate = 48000
    config: WaveUMambaConfig

    def __init__(self, config: WaveUMambaConfig) -> None:
        super().__init__(config)
        cfg = config
        self.emb = Encoder(cfg)
        ins = tuple(reversed(cfg.channels))
        outs = cfg.up_channels
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(c_in, c_out, k, 2, padding=(k - 2) // 2))
            for c_in, c_out, k in zip(ins, outs, UP_KERNELS, strict=True))
        self.mambablocks = nn.ModuleList(MambaStack(c, cfg.up_mambas, cfg) for c in outs)
        self.resblocks = nn.ModuleList(ResBlock(c) for c in outs)
        self.conv_post = weight_norm(
            nn.Conv1d(outs[-1], 1, POST_KERNEL, padding=(POST_KERNEL - 1) // 2))

    @property
    def context_s(self) -> float:
        return CONTEXT_S

    @property
    def align(self) -> int:
        return STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The official ``WaveUmamba.forward``: ``x: [B, 1, L]`` (L a multiple of 16) ->
        ``[B, 1, L]``."""
        h, skips = self.emb(x)
        skips = skips[::-1]  # deepest first; skips[-1] is the input waveform
        for i, up in enumerate(self.ups):
            h = F.leaky_relu(h, LRELU_SLOPE) + skips[i]
            h = float32_region(functools.partial(conv_transpose1d, up), h)
            h = self.mambablocks[i](h)
            h = self.resblocks[i](h)
        # PyTorch's default slope 0.01, as official
        h = float32_region(functools.partial(conv1d, self.conv_post), F.leaky_relu(h))
        return torch.tanh(h) + skips[-1]

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:
        """``x: [B, T]`` at 48 kHz -> ``[B, T]``; any ``T`` (zero-padded to a multiple of 16
        on the right, cropped back)."""
        if x.dim() != 2:
            raise UsageError(f"wave-u-mamba: restore expects [batch, samples], got shape "
                             f"{tuple(x.shape)}")
        length = x.shape[-1]
        if length == 0:
            return x.clone()
        padded = math.ceil(length / STRIDE) * STRIDE
        y = self.forward(F.pad(x, (0, padded - length)).unsqueeze(1))
        return y[:, 0, :length]
