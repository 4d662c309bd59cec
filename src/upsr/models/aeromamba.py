"""AEROMamba: spectral U-Net GAN generator for music super-resolution, 11.025 → 44.1 kHz.

Abreu & Biscainho, "AEROMamba: An efficient architecture for audio super-resolution using
generative adversarial networks and state space models" (2024, arXiv:2411.07364), built on AERO
(Mandel, Tal & Adi, ICASSP 2023) and HDemucs (Défossez, 2021).

Pipeline (shapes for one example, T input samples at 11,025 Hz, frames N = ceil(T/64) + 1):

1. STFT of the low-rate signal with n_fft 512, hop 64 and a Hann(128) window centred in the frame
   (``normalized=True``, reflect-centred): one LR frame per future HR frame. The Nyquist row is
   dropped → 256 bins; complex values become 2 channels → ``[B, 2, 256, N]``; per-example mean/std
   normalisation (unbiased std, +1e-5).
2. Encoder: 4 layers that stride along frequency only (kernel [8, 1], strides 4, 4, 2, 2:
   256 → 64 → 16 → 8 → 4 rows) with channels C, 2C, 4C, 8C (C = 48). Each layer:
   (1×1 ``pre_conv`` on layer 0) → FTB → conv → GroupNorm (layers ≥ 2) → GELU → DConv →
   1×1 rewrite → GroupNorm → GLU. A scaled frequency embedding is added after layer 0.
3. Decoder: starts from zeros at the bottleneck; each layer concatenates the skip, applies a 3×3
   rewrite + GLU, then a transposed conv [8, 1] along frequency (GELU except the last).
4. Un-normalise, append a zero Nyquist row and take the iSTFT with n_fft 512, hop 256,
   Hann(512) at 44.1 kHz; trim to exactly 4·T samples.

**Where Mamba runs.** The paper replaces AERO's BiLSTM and local attention with Mamba in every
encoder block. The released code builds a ``Mamba(d_model=C_layer, d_state=16, d_conv=4,
expand=2)`` per DConv residual layer but never calls it (see the reference notes, §0.1), so the
published weights were trained without it. By default (``official_forward=False``) this module
follows the paper and runs Mamba; ``official_forward=True`` reproduces the released code.

The paper does not say exactly where in the DConv layer Mamba sits. AERO's LSTM/attention sat
inside the residual branch, after the dilated conv and activation, on the compressed C/4 width;
the released Mamba modules are built for the full width C, so they cannot sit on the C/4
bottleneck. We place Mamba at the first point of the branch where the width is C again: after
the 1×1 expansion + GroupNorm + GLU and before the LayerScale, i.e.

    x ← x + LayerScale(Mamba(GLU(GN(Conv1x1(Snake(GN(DilatedConv(x))))))))

so that, exactly like AERO's sequence modules, Mamba mixes along time *inside* the LayerScaled
residual branch, after the local convolutions. It scans each frequency row forward in time
(sequence ``[B·F, T, C]``), which makes the network causal-unbounded towards the past;
``context_s`` records the measured effective reach.
"""

from __future__ import annotations

import dataclasses
import typing as tp
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from upsr.errors import CheckpointError
from upsr.models import register
from upsr.models.base import Restorer
from upsr.models.importers import Overrides

_MIN_PADDED = 320  # shortest padded input (5 hops) for which the reflect-padded STFT exists


class _StatControl:
    """Shared switch of every :class:`_StatNorm` (and the input normalisation) of one model.

    ``mode`` None: ordinary behaviour (each call's own statistics). ``"collect"``: behave as
    ``frozen`` (or ordinarily where nothing is frozen) and add the sums of each norm's input
    over the frames ``frames`` to ``acc``. ``frozen``: per norm key, ``(mean, var)`` of shape
    ``[N, groups]`` (``N`` = the norm's batch rows), used instead of the call's own.
    """

    def __init__(self) -> None:
        self.mode: str | None = None
        self.frames: tuple[int, int] = (0, 0)
        self.acc: dict[str, list[torch.Tensor]] = {}
        self.frozen: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.pending: set[str] = set()  # collect mode: keys not collected yet in this call


def _frame_sums(part: torch.Tensor, dims: tuple[int, ...]) -> list[torch.Tensor]:
    """``[Σx, Σx², count]`` (float64) of ``part`` over ``dims`` and its last (time) axis.

    Per frame, in the input's precision: the sum over ``dims`` (mean ``m_t``), then the sum of
    squares about ``m_t`` (so the within-frame spread keeps its relative precision whatever the
    offset); only these small per-frame results are combined over time in float64:
    Σx² = Σ_t (SS_t + K·m_t²) with K values per frame. No float64 copy of the activation is
    made, and plain sums are used (``var_mean`` over a middle axis is several times slower).
    """
    if part.dtype not in (torch.float32, torch.float64):
        part = part.float()
    k = 1
    for d in dims:
        k *= part.shape[d]
    mean = part.sum(dims, keepdim=True).div_(k)
    spread = (part - mean).square_().sum(dims)  # [..., T']
    m = mean.reshape(spread.shape).double()
    s1 = m.sum(-1) * k
    s2 = (spread.double() + k * m.square()).sum(-1)
    return [s1, s2, torch.full_like(s1, k * part.shape[-1])]


def _add_sums(acc: dict[str, list[torch.Tensor]], key: str, sums: list[torch.Tensor]) -> None:
    prev = acc.get(key)
    acc[key] = sums if prev is None else [p + q for p, q in zip(prev, sums)]


class _StatNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over ``[N, C, ..., T]`` (time last) that can collect its statistics
    over chosen frames and replay given ones (same parameters and state-dict keys)."""

    ctl: _StatControl | None = None
    key: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctl = self.ctl
        if ctl is None or ctl.mode is None:
            return super().forward(x)
        N, T = x.shape[0], x.shape[-1]
        xs = x.reshape(N, self.num_groups, -1, T)
        if ctl.mode == "collect":
            a, b = ctl.frames
            _add_sums(ctl.acc, self.key, _frame_sums(xs[..., a:b], (2,)))
            ctl.pending.discard(self.key)
        if ctl.frozen is None or self.key not in ctl.frozen:
            return super().forward(x)
        mean, var = ctl.frozen[self.key]
        # y = (x - mean) / sqrt(var + eps) · w + b as one multiply-add per element:
        # scale = w / sqrt(var + eps), shift = b - mean · scale, per (row, channel)
        # (for a bf16 ``x``, in float32, with the output rounded to bf16 once)
        C = x.shape[1]
        work = torch.promote_types(x.dtype, torch.float32)
        inv = torch.rsqrt(var.to(work) + self.eps)  # [N, G]
        scale = self.weight.view(1, self.num_groups, C // self.num_groups) * inv[..., None]
        shift = self.bias.view(1, self.num_groups, -1) - mean.to(work)[..., None] * scale
        shape = [N, C] + [1] * (x.dim() - 2)
        if x.dtype == work:
            return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))
        return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape),
                             out=torch.empty_like(x))


RowStats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # norm key -> (mean, var) [R, groups]


@dataclass(frozen=True)
class AEROMambaConfig:
    """Hyper-parameters; defaults are the published ``conf/experiment/aeromamba.yaml``.

    ``hop_length`` is the *output* hop (44.1 kHz samples); the input STFT uses
    ``hop_length // scale`` and a window of ``n_fft // scale`` with ``scale = hr_sr / lr_sr``.
    """

    channels: int = 48
    growth: int = 2
    n_fft: int = 512
    hop_length: int = 256
    strides: tuple[int, ...] = (4, 4, 2, 2)
    kernel_size: int = 8
    context: int = 1  # decoder rewrite conv is (1 + 2·context) square
    norm_starts: int = 2
    norm_groups: int = 4
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    dconv_depth: int = 2
    dconv_comp: int = 4
    dconv_init: float = 1e-3
    rescale: float = 0.1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    lr_sr: int = 11025
    hr_sr: int = 44100
    official_forward: bool = False

    def __post_init__(self) -> None:
        if self.hr_sr % self.lr_sr:
            raise ValueError(f"hr_sr {self.hr_sr} must be a multiple of lr_sr {self.lr_sr}")
        if self.n_fft % self.scale or self.hop_length % self.scale:
            raise ValueError("n_fft and hop_length must be multiples of hr_sr / lr_sr")
        freqs = self.n_fft // 2
        for s in self.strides:
            if freqs % s:
                raise ValueError(f"strides {self.strides} do not divide {self.n_fft // 2} bins")
            freqs //= s
        if self.channels < self.norm_groups or self.channels % self.dconv_comp:
            raise ValueError("channels must be >= norm_groups and a multiple of dconv_comp")

    @property
    def scale(self) -> int:
        return self.hr_sr // self.lr_sr

    @property
    def in_hop(self) -> int:
        """Input STFT hop in LR samples (64 for the published config)."""
        return self.hop_length // self.scale

    @property
    def reach_frames(self) -> int:
        """Frames of time context each side that the convolutions see (no Mamba).

        Per encoder layer: FTB Conv1d k9 (±4) and the DConv dilated k3 convs (±2^d each);
        per decoder layer: the (1+2·context)² rewrite (±context). Published config: 32.
        """
        dconv = sum(2 ** d for d in range(self.dconv_depth))
        return len(self.strides) * (4 + dconv + self.context)

    @property
    def context_s(self) -> float:
        """Seconds of real input each side a chunk needs so that its kept centre equals
        whole-signal inference, given the same normalisation statistics (see :class:`AEROMamba`).

        Without Mamba: the structural conv reach plus one frame for the input STFT window and one
        for the output iSTFT window, (32 + 2)·64 / 11025 = 0.197 s for the published config.
        Perturbing one input sample (statistics frozen) changes outputs up to 0.14 s away with
        random weights (ReLU zeros in the FTB cut some paths), never beyond this bound.
        With Mamba: the forward scan is causal and unbounded in principle; :data:`MAMBA_REACH_S`
        more seconds are added (measured, see there).
        """
        local = (self.reach_frames + 2) * self.in_hop / self.lr_sr
        if self.official_forward:
            return local
        return local + MAMBA_REACH_S


# Effective reach of the forward Mamba scan, in seconds of input, beyond the conv reach.
# Measured with mamba_ssm's initialisation (Δ log-uniform in [1e-3, 0.1], A = -1..-16) and
# LayerScales of 0.05-0.5 (channels 4, music-like input, statistics frozen): a one-sample
# perturbation's effect falls to the float32 noise floor (~1e-3 of its peak) within 0.5 s
# downstream; dropping all input older than D seconds changes the output by 3e-6 (D = 0.2 s),
# 1.3e-6 (1 s), 8.7e-7 (2 s), 6.7e-7 (4 s), 5.6e-7 (8 s, the noise floor) relative L2. 2 s keeps
# chunked inference within 2x of that floor; trained weights with slower dynamics (smaller Δ)
# would reach further, the scan itself never forgets completely.
MAMBA_REACH_S = 2.0


def _inference(module: nn.Module) -> bool:
    """Whether ``module`` may take its inference path: no autograd graph is being recorded and
    it is in eval mode (BatchNorms use their running statistics, which fold into the convs).

    The inference paths compute the same function as the training paths with fewer passes
    over memory (folded BatchNorms, in-place activations, no concatenation or transpose
    copies); they differ from them only by float rounding (``tests/models/test_aeromamba.py``
    compares both). Not under CPU autocast: there its in-place sums and bias additions would
    round to bf16 where the plain path's convolutions accumulate in float32 (the tiny model's
    bf16 error rose from <2 % to 2.3 % relative L2, the published one's dLSD 0.0064 → 0.0089)."""
    return (not module.training and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def _low_precision(module: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """``torch.bfloat16`` where ``module`` may take its inference path (eval mode, no autograd)
    on a CPU tensor ``x`` under a CPU bf16 autocast, else None.

    The model then runs with autocast off and chooses the precision per op itself (see
    :meth:`AEROMamba._run`). In bf16: the decoder's 3×3 rewrite convolutions and transposed
    convs (nearly all of the network's FLOPs) and, in the encoder layers without GroupNorm
    (the first two: the widest activations), the FTB's frequency mixing and fusion products
    and the strided conv; each conv/product sums in float32 (oneDNN/MKL) and adds its bias
    before rounding its output once. In float32: the STFT, the input normalisation, the
    encoder layers with GroupNorm (a bf16 conv output with a large mean relative to its
    spread loses its spread to rounding, which the norm then amplifies: the tiny recipe's
    bf16 error rose from 0.35 % to 5 % relative L2 with them in bf16), every DConv branch
    with Mamba and the residual stream, every normalisation statistic, the last decoder
    layer's transposed conv and the iSTFT. Plain per-op autocast also rounds those (error
    about 2x larger); the float32 inference path under autocast rounded its in-place sums
    and bias additions as well (see :func:`_inference`)."""
    if (module.training or torch.is_grad_enabled() or x.device.type != "cpu"
            or not torch.is_autocast_enabled("cpu")):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if dtype == torch.bfloat16 else None


def _cast(holder: nn.Module, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Parameter ``t`` of ``holder`` in ``dtype``, made once and kept on ``holder`` (not in
    its state dict) until ``t`` changes: a new tensor (``load_state_dict`` into a moved
    model, ``.to()``) or an in-place update (``load_state_dict``, an optimiser step) bumps its
    data pointer or version. Saves re-rounding ~14 M decoder weights on every call. (Not for
    a parameter made under ``inference_mode``, which has no version: cast on every call.
    Writes through ``.data`` bypass the version counter and so are not seen.)"""
    if t.is_inference():  # made under inference_mode: no version counter to check
        return t.to(dtype)
    cache: dict[str, tuple[tuple[int, int, torch.dtype], torch.Tensor]]
    cache = holder.__dict__.setdefault("_cast_cache", {})
    tag = (t.data_ptr(), t._version, dtype)
    hit = cache.get(name)
    if hit is not None and hit[0] == tag:
        return hit[1]
    with torch.inference_mode(False):  # a normal tensor, usable outside inference mode
        out = t.detach().to(dtype)
    cache[name] = (tag, out)
    return out


def _fold_bn(block: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one conv, for ``block = (conv, bn, ...)``:
    eval-mode BatchNorm is per-channel ``(y - mean) / sqrt(var + eps) · γ + β``."""
    conv = tp.cast(nn.Conv1d | nn.Conv2d, block[0])
    bn = tp.cast(nn.BatchNorm1d | nn.BatchNorm2d, block[1])
    weight, bias = conv.weight, tp.cast(torch.Tensor, conv.bias)
    mean, var = tp.cast(torch.Tensor, bn.running_mean), tp.cast(torch.Tensor, bn.running_var)
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    shape = [-1] + [1] * (weight.dim() - 1)
    return weight * scale.view(shape), (bias - mean) * scale + bn.bias


def _pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution ``conv`` (1-D or 2-D) over ``x: [N, C, ...]`` as one matrix product
    per row (``[C_out, C] @ [C, ...]``), without the reorders of a convolution primitive."""
    weight, bias = tp.cast(torch.Tensor, conv.weight), tp.cast(torch.Tensor, conv.bias)
    w = weight.reshape(weight.shape[0], weight.shape[1])
    y = _bmm(w, x.reshape(x.shape[0], x.shape[1], -1))
    y = y.add_(bias[:, None].to(y.dtype))
    return y.view(x.shape[0], w.shape[0], *x.shape[2:])


def _bmm(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w @ x[n]`` for every ``n``: ``w: [M, K]``, ``x: [N, K, L]`` → ``[N, M, L]``.
    (``torch.matmul`` folds this case into one product on a transposed copy of ``x`` and
    copies the result back; a batched product reads ``x`` where it lies.)"""
    w = w.to(x.dtype)
    return torch.bmm(w.expand(x.shape[0], *w.shape), x)


def _snake_(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """:class:`Snake` ``x + sin²(a·x)/a`` computed in place in ``x`` (which is returned); ``a``
    broadcasts against ``x``. Only for tensors nothing else holds and no autograd records."""
    t = torch.mul(x, a)
    t.sin_().square_()
    return x.addcmul_(t, a.reciprocal())


def _mamba_residual(mamba: nn.Module, y: torch.Tensor, x: torch.Tensor,
                    gain: torch.Tensor) -> torch.Tensor:
    """``x + gain · Mamba(yᵀ)ᵀ`` for ``x, y: [N, C, T]`` (channels first), ``gain: [C]``, at
    inference (no autograd, float32).

    On the CPU scan backend without projection biases (the published config), the Mamba
    block reads ``y`` where it lies and writes the residual sum directly: ``in_proj`` is one
    batched product on ``y``'s transposed view (no copy of ``y`` into ``[N, T, C]``), the
    channel-last conv/scan kernels of :class:`upsr.nn.mamba.Mamba` run on its ``[N, T, 2·Di]``
    output as in ``Mamba._forward_channel_last``, and ``out_proj`` with the LayerScale folded in
    is one batched product added into ``x`` (no ``[N, T, C]`` output and transpose back).
    Elsewhere (with hooks on the block, or a block tiny enough for :mod:`upsr.nn.small_scan`):
    its own forward between two transposes."""
    from upsr.nn.mamba import Mamba
    from upsr.nn.scan import resolve_backend

    m = tp.cast(Mamba, mamba)
    yt = y.transpose(1, 2)
    if (y.dtype != torch.float32 or m.in_proj.bias is not None or m.out_proj.bias is not None
            or m._forward_hooks or m._forward_pre_hooks  # hooks see the block's own call
            or m._use_small_torch(yt)  # tiny widths: plain torch, numba never loaded
            or not m._use_channel_last(yt, resolve_backend(m.backend, y.device))):
        return torch.addcmul(x, gain[:, None].to(y.dtype), m(yt).transpose(1, 2))
    N = y.shape[0]
    w_in = m.in_proj.weight.t()  # [C, 2·Di]
    xz = torch.bmm(yt, w_in.expand(N, *w_in.shape))  # [N, T, 2·Di]
    h = m._branch_channel_last(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D,
                               reverse=False, out=None)  # [N, T, Di]
    w_out = m.out_proj.weight * gain[:, None]  # [C, Di]
    return torch.baddbmm(x, w_out.expand(N, *w_out.shape), h.transpose(1, 2))


class Snake(nn.Module):
    """Snake activation x + sin²(αx)/α (Liu et al., 2020) with one α per frequency row.

    AERO's variant: α has shape ``[F]`` and broadcasts over the frequency axis of a DConv input;
    α is initialised from an exponential distribution with rate 0.1 (mean 10).
    """

    def __init__(self, freqs: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(freqs).exponential_(0.1))  # rate 0.1

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``x: [B·F, C, T]`` with rows ordered (batch, freq) → same shape."""
        a = self.a.repeat(batch)[:, None, None]
        return x + (1.0 / a) * torch.sin(x * a).pow(2)


class LayerScale(nn.Module):
    """Per-channel residual scale (Touvron et al., 2021); ``x: [N, C, T]``."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale[:, None] * x


class DConvLayer(nn.Module):
    """One residual layer of the DConv branch (HDemucs/AERO), with AEROMamba's Mamba."""

    def __init__(self, channels: int, hidden: int, freqs: int, dilation: int,
                 init: float, cfg: AEROMambaConfig) -> None:
        super().__init__()
        from upsr.nn.mamba import Mamba

        self.conv1 = nn.Sequential(
            nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
            _StatNorm(1, hidden))
        self.act = Snake(freqs)
        self.conv2 = nn.Sequential(
            nn.Conv1d(hidden, 2 * channels, 1), _StatNorm(1, 2 * channels), nn.GLU(1),
            LayerScale(channels, init))
        self.mamba = Mamba(channels, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)
        self.run_mamba = not cfg.official_forward

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """``x: [B·F, C, T]`` → same shape."""
        conv, norm, glu, scale = self.conv2
        if _inference(self):  # in-place Snake, 1×1 conv as a matmul, fused residual
            y = self.conv1[1](self.conv1[0](x))
            y = _snake_(y, self.act.a.repeat(batch)[:, None, None].to(y.dtype))
            y = glu(norm(_pointwise(conv, y)))
            gain = tp.cast(LayerScale, scale).scale
            if self.run_mamba:
                return _mamba_residual(self.mamba, y, x, gain)
            return torch.addcmul(x, gain[:, None].to(y.dtype), y)
        y = self.act(self.conv1(x), batch)
        y = glu(norm(conv(y)))
        if self.run_mamba:
            y = self.mamba(y.transpose(1, 2)).transpose(1, 2)
        return x + scale(y)


class DConv(nn.Module):
    """Residual branch of dilated time convolutions run per frequency row; ``[B, C, F, T]``."""

    def __init__(self, channels: int, freqs: int, cfg: AEROMambaConfig) -> None:
        super().__init__()
        hidden = channels // cfg.dconv_comp
        self.layers = nn.ModuleList(
            DConvLayer(channels, hidden, freqs, 2 ** d, cfg.dconv_init, cfg)
            for d in range(cfg.dconv_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, Fr, T = x.shape
        if x.dtype == torch.bfloat16:  # the low-precision encoder: float32 from here on
            y = x.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
            y = y.view(B * Fr, C, T)
        else:
            y = x.permute(0, 2, 1, 3).reshape(B * Fr, C, T)
        for layer in self.layers:
            y = layer(y, B)
        return y.view(B, Fr, C, T).permute(0, 2, 1, 3)


class FTB(nn.Module):
    """Frequency transformation block (Yin et al., "PHASEN", AAAI 2020), as used by AERO.

    ``x: [B, C, F, T]`` → same shape: a 5-channel squeeze, a k9 time conv over all 5·F rows that
    gives one attention weight per (channel, frame), a learnt F×F mixing along frequency, then
    a 1×1 fusion with the input. BatchNorms use their running statistics in eval mode.
    """

    def __init__(self, channels: int, freqs: int, r_channels: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, r_channels, 1),
                                   nn.BatchNorm2d(r_channels), nn.ReLU())
        self.conv1d = nn.Sequential(nn.Conv1d(r_channels * freqs, channels, 9, padding=4),
                                    nn.BatchNorm1d(channels), nn.ReLU())
        self.freq_fc = nn.Linear(freqs, freqs, bias=False)
        self.conv2 = nn.Sequential(nn.Conv2d(2 * channels, channels, 1),
                                   nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _inference(self):
            return self._inference(x)
        B, C, Fr, T = x.shape
        a = self.conv1(x).reshape(B, -1, T)
        att = self.conv1d(a).view(B, C, 1, T) * x
        att = self.freq_fc(att.transpose(2, 3)).transpose(2, 3)
        return self.conv2(torch.cat([att, x], dim=1))

    def _low(self, x: torch.Tensor, low: torch.dtype) -> torch.Tensor:
        """:meth:`_inference` with the products over the big activation in ``low`` (bf16):
        the frequency mixing (``freq_fc``, most of the block's FLOPs) on ``x`` rounded to
        ``low``, and the fusion conv as two products whose first one starts from the bias, so
        the output is rounded twice. The attention branch (squeeze, k9 time conv, ReLUs) runs
        in float32 on ``x``. Returns ``[B, C, F, T]`` in ``low``."""
        B, C, Fr, T = x.shape
        w, b = _fold_bn(self.conv1)
        a = F.conv2d(x, w, b).relu_().reshape(B, -1, T)
        w, b = _fold_bn(self.conv1d)
        a = F.conv1d(a, w, b, padding=tp.cast(nn.Conv1d, self.conv1d[0]).padding).relu_()
        xl = x.to(low).view(B, C, Fr * T)
        fc = _cast(self, "freq_fc", self.freq_fc.weight, low)
        att = _bmm(fc, xl.view(B * C, Fr, T)).view(B, C, Fr, T)
        att = att.mul_(a[:, :, None].to(low)).view(B, C, Fr * T)
        w, b = _fold_bn(self.conv2)
        w = w.reshape(C, 2 * C).to(low)
        y = torch.baddbmm(b.to(low)[:, None], w[:, :C].expand(B, C, C), att)
        y = y.baddbmm_(w[:, C:].expand(B, C, C), xl)
        return y.relu_().view(B, C, Fr, T)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in eval mode without autograd: BatchNorms folded into the convs; the
        frequency mixing ``W·(a ⊙ x)`` taken as ``a ⊙ (W·x)`` (``a`` is constant along
        frequency) on ``x``'s own layout, no transposes; the fusion conv on ``[att, x]`` as
        two matrix products into one output, no concatenation."""
        B, C, Fr, T = x.shape
        w, b = _fold_bn(self.conv1)
        a = F.conv2d(x, w, b).relu_().reshape(B, -1, T)
        w, b = _fold_bn(self.conv1d)
        a = F.conv1d(a, w, b, padding=tp.cast(nn.Conv1d, self.conv1d[0]).padding)
        a = a.relu_()  # [B, C, T]
        att = _bmm(self.freq_fc.weight, x.reshape(B * C, Fr, T)).view(B, C, Fr, T)
        att = att.mul_(a[:, :, None].to(att.dtype)).view(B, C, Fr * T)
        w, b = _fold_bn(self.conv2)
        w = w.reshape(C, 2 * C).to(att.dtype)
        y = _bmm(w[:, :C], att)
        y = y.baddbmm_(w[:, C:].expand(B, C, C), x.reshape(B, C, Fr * T).to(y.dtype))
        return y.add_(b[:, None].to(y.dtype)).relu_().view(B, C, Fr, T)


def _group_norm(groups: int, channels: int, on: bool) -> nn.Module:
    return _StatNorm(groups, channels) if on else nn.Identity()


class EncoderLayer(nn.Module):
    """HDemucs frequency encoder layer with AERO's FTB and AEROMamba's DConv; ``[B, C, F, T]``."""

    def __init__(self, index: int, chin: int, chout: int, freqs: int, stride: int,
                 cfg: AEROMambaConfig) -> None:
        super().__init__()
        norm = index >= cfg.norm_starts
        self.normed = norm
        k = cfg.kernel_size
        if index == 0:
            self.pre_conv = nn.Conv2d(chin, chout, 1)
            chin = chout
        self.freq_attn_block = FTB(chin, freqs)
        self.conv = nn.Conv2d(chin, chout, (k, 1), (stride, 1), ((k - stride) // 2, 0))
        self.norm1 = _group_norm(cfg.norm_groups, chout, norm)
        self.rewrite = nn.Conv2d(chout, 2 * chout, 1)
        self.norm2 = _group_norm(cfg.norm_groups, 2 * chout, norm)
        self.dconv = DConv(chout, freqs // stride, cfg)

    def forward(self, x: torch.Tensor, low: torch.dtype | None = None) -> torch.Tensor:
        """``low`` (inference only, see :func:`_low_precision`): the FTB's products and the
        strided conv in that dtype, the rest (DConv with Mamba, the 1×1 rewrite, norms, GLU,
        the float32 output) as without."""
        if hasattr(self, "pre_conv"):
            x = self.pre_conv(x)
        if low is None or self.normed:
            x = self.freq_attn_block(x)
            x = F.gelu(self.norm1(self.conv(x)))
        else:  # FTB → strided conv → GELU in low precision; DConv takes float32 again
            x = tp.cast(FTB, self.freq_attn_block)._low(x, low)
            conv = self.conv
            x = F.conv2d(x, _cast(self, "conv", conv.weight, low),
                         _cast(self, "conv_bias", tp.cast(torch.Tensor, conv.bias), low),
                         conv.stride, conv.padding)
            x = F.gelu(self.norm1(x))
        x = self.dconv(x)
        return F.glu(self.norm2(self.rewrite(x)), dim=1)


# A transposed conv with at most this many (output channel, kernel row) pairs runs as a matrix
# product and an overlap-add (the network's last layer: 2 channels × 8 rows), wider ones as
# one ordinary conv per stride phase (benchmarks/aeromamba_cpu.py: torch's ConvTranspose2d
# took ~5x / 1.1-1.7x longer at 1 thread).
_FEW_ROWS = 64


def _freq_conv_transpose(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a ConvTranspose2d with kernel ``[k, 1]`` and stride ``[s, 1]`` (no
    padding; ``s`` divides ``k``) over ``x: [B, C, F, T]`` → ``[B, C_out, (F-1)·s + k, T]``.

    Output row ``s·f + r`` (phase ``r``) is ``Σ_m W[:, :, r + s·m]ᵀ x[f - m]``, ``m < k/s``: an
    ordinary convolution along frequency with ``k/s`` taps (flipped) and ``C_out·s`` outputs,
    whose phases are then interleaved. For few outputs, one product ``[C_out·k, C] @ [C, F·T]``
    instead, each kernel row ``j`` added at output rows ``j, j + s, ...``."""
    B, C, Fr, T = x.shape
    weight, bias = conv.weight, tp.cast(torch.Tensor, conv.bias)
    cout, k, s = weight.shape[1], weight.shape[2], conv.stride[0]
    if cout * k <= _FEW_ROWS:
        w = weight[..., 0].permute(1, 2, 0).reshape(cout * k, C)
        cols = _bmm(w, x.reshape(B, C, Fr * T)).view(B, cout, k, Fr, T)
        out = bias.to(cols.dtype).view(1, cout, 1, 1).expand(
            B, cout, (Fr - 1) * s + k, T).clone()
        for j in range(k):
            out[:, :, j:j + s * (Fr - 1) + 1:s] += cols[:, :, j]
        return out
    q = k // s
    w = weight[..., 0].view(C, cout, q, s).flip(2).permute(1, 3, 0, 2).reshape(cout * s, C, q, 1)
    y = F.conv2d(x, w.to(x.dtype), bias.repeat_interleave(s).to(x.dtype),
                 padding=(q - 1, 0))  # [B, C_out·s, F+q-1, T]
    rows = y.shape[2]
    return y.view(B, cout, s, rows, T).transpose(2, 3).reshape(B, cout, rows * s, T)


class DecoderLayer(nn.Module):
    """HDemucs frequency decoder layer: concat skip → rewrite 3×3 → GLU → transposed conv."""

    def __init__(self, index: int, chin: int, chout: int, stride: int,
                 cfg: AEROMambaConfig) -> None:
        super().__init__()
        norm = index >= cfg.norm_starts
        k, c = cfg.kernel_size, cfg.context
        self.pad = (k - stride) // 2
        self.last = index == 0
        self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * c, 1, c)
        self.norm1 = _group_norm(cfg.norm_groups, 2 * chin, norm)
        self.conv_tr = nn.ConvTranspose2d(chin, chout, (k, 1), (stride, 1))
        self.norm2 = _group_norm(cfg.norm_groups, chout, norm)

    def forward(self, x: torch.Tensor | None, skip: torch.Tensor,
                low: torch.dtype | None = None) -> torch.Tensor:
        """``x``: previous decoder output ``[B, C, F, T]``, or None for the bottleneck, where the
        official code feeds zeros; ``skip``: the encoder output of the same level. ``low``
        (inference only, see :func:`_low_precision`): run the convolutions in that dtype; the
        output is then in ``low`` too, except the last layer's (float32)."""
        if low is not None:
            return self._low(x, skip, low)
        if x is None:
            # cat([0, skip]) through the rewrite conv = the skip half of its weights: the same
            # result without the zero half's FLOPs (19% of the network's at 48 channels)
            half = self.rewrite.in_channels // 2
            r = F.conv2d(skip, self.rewrite.weight[:, half:], self.rewrite.bias,
                         padding=self.rewrite.padding)
        else:
            r = self.rewrite(torch.cat([x, skip], dim=1))
        y = F.glu(self.norm1(r), dim=1)
        k, s = self.conv_tr.kernel_size[0], self.conv_tr.stride[0]
        fast = k % s == 0 and _inference(self)
        z = self.norm2(_freq_conv_transpose(self.conv_tr, y) if fast else self.conv_tr(y))
        if self.pad:
            z = z[..., self.pad:-self.pad, :]
        return z if self.last else F.gelu(z)

    def _low(self, x: torch.Tensor | None, skip: torch.Tensor, low: torch.dtype
             ) -> torch.Tensor:
        """:meth:`forward` at inference with both convolutions in ``low`` (bf16): their inputs
        and weights are rounded to ``low``, oneDNN sums in float32 and adds the bias before
        rounding the output once; the GroupNorms take their statistics in float32 (torch's
        CPU kernel and :class:`_StatNorm`'s frozen path both do) and GLU/GELU compute in float32
        internally, rounding their outputs once. The last layer (the network's output
        spectrum, 2 channels) runs its transposed conv in float32."""
        C = skip.shape[1]
        conv = self.rewrite
        w = _cast(self, "rewrite", conv.weight if x is not None else conv.weight[:, C:], low)
        b = _cast(self, "rewrite_bias", tp.cast(torch.Tensor, conv.bias), low)
        if x is None:  # the bottleneck: only the skip half of the weights (see forward)
            h = skip.to(low)
        else:  # [x, skip] in one low-precision buffer: no float32 concatenation
            h = skip.new_empty(skip.shape[0], 2 * C, *skip.shape[2:], dtype=low)
            h[:, :C].copy_(x)
            h[:, C:].copy_(skip)
        y = F.glu(self.norm1(F.conv2d(h, w, b, padding=conv.padding)), dim=1)
        if self.last:
            y = y.float()
        tr = self.conv_tr
        if self.last:  # float32 (the network's output), as in forward
            k, s = tr.kernel_size[0], tr.stride[0]
            z = _freq_conv_transpose(tr, y) if k % s == 0 else tr(y)
        else:  # oneDNN's bf16 transposed conv: 1.2-1.35x faster than the per-phase convs
            z = F.conv_transpose2d(y, _cast(self, "conv_tr", tr.weight, low),
                                   _cast(self, "conv_tr_bias", tp.cast(torch.Tensor, tr.bias),
                                         low), tr.stride)
        z = self.norm2(z)
        if self.pad:
            z = z[..., self.pad:-self.pad, :]
        return z if self.last else F.gelu(z)


class ScaledEmbedding(nn.Module):
    """Frequency embedding with a boosted learning rate (stored weight = value / scale)."""

    def __init__(self, num: int, dim: int, scale: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        # smooth init: cumulative sum of Gaussians normalised by sqrt(n), as in HDemucs
        w = torch.cumsum(self.embedding.weight.data, dim=0)
        w = w / torch.arange(1, num + 1, dtype=w.dtype).sqrt()[:, None]
        self.embedding.weight.data[:] = w / scale
        self.scale = scale

    def forward(self) -> torch.Tensor:
        """The embedding table ``[num, dim]`` (every row, in order)."""
        return self.embedding.weight * self.scale


# --- official checkpoints ---------------------------------------------------------------------

# Official constructor arguments that map onto our config, and the values the others must have
# (the AEROMamba architecture this module implements).
_ARG_MAP = {"channels": "channels", "growth": "growth", "nfft": "n_fft",
            "hop_length": "hop_length", "strides": "strides", "kernel_size": "kernel_size",
            "context": "context", "norm_starts": "norm_starts", "norm_groups": "norm_groups",
            "freq_emb": "freq_emb", "emb_scale": "emb_scale", "dconv_depth": "dconv_depth",
            "dconv_comp": "dconv_comp", "dconv_init": "dconv_init", "rescale": "rescale",
            "lr_sr": "lr_sr", "hr_sr": "hr_sr"}
_ARG_FIXED: dict[str, tp.Any] = {
    "in_channels": 1, "out_channels": 1, "cac": True, "rewrite": True, "hybrid": False,
    "context_enc": 0, "enc_freq_attn": 0, "dconv_mode": 1, "dconv_mamba": 0,
    "spec_upsample": True, "act_func": "snake", "emb_smooth": True}
_ARG_IGNORED = {"end_iters", "hybrid_old", "debug", "audio_channels", "channels_time",
                "wiener_iters", "wiener_residual", "multi_freqs", "multi_freqs_depth",
                "time_stride", "samplerate", "segment", "freq_ends", "dconv_lstm",
                "dconv_time_attn", "name", "model"}


def config_from_official_args(args: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """Config overrides from the official ``Aero(**kwargs)`` arguments.

    Arguments for features AEROMamba does not use must have AEROMamba's values (e.g. no LSTM or
    attention in DConv: ``dconv_lstm``/``dconv_time_attn`` >= the number of layers).
    """
    out: dict[str, tp.Any] = {}
    for key, value in args.items():
        if key in _ARG_MAP:
            out[_ARG_MAP[key]] = tuple(value) if isinstance(value, list) else value
        elif key in _ARG_FIXED:
            if value != _ARG_FIXED[key]:
                raise CheckpointError(f"official argument {key!r} = {value!r} is not "
                                      f"AEROMamba's ({_ARG_FIXED[key]!r}); not supported")
        elif key not in _ARG_IGNORED:
            raise CheckpointError(f"unknown official argument {key!r}")
    depth = len(out.get("strides", AEROMambaConfig.strides))
    for key in ("dconv_lstm", "dconv_time_attn"):
        if key in args and int(args[key]) < depth:
            raise CheckpointError(f"official argument {key!r} = {args[key]!r} enables AERO's "
                                  f"LSTM/attention, which AEROMamba replaces; not supported")
    return out


def _plain(obj: tp.Any) -> tp.Any:
    """Plain Python data from an unpickled config value: OmegaConf containers and value nodes
    arrive as inert placeholders whose ``state`` holds ``_content`` (dict/list) or ``_val``."""
    state = getattr(obj, "state", None)
    if isinstance(state, dict) and "_content" in state:
        obj = state["_content"]
    elif isinstance(state, dict) and "_val" in state:
        obj = state["_val"]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def convert_official(obj: tp.Any) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    """Official AEROMamba checkpoint (safely unpickled) → (config overrides, upsr state dict).

    Accepts ``checkpoint.th`` (``{"models": {"generator": {class, args, kwargs, state}}, ...}``;
    the last state is used, as the official ``predict.py`` does by default) or
    ``generator_best.th`` (the ``{class, args, kwargs, state}`` dict itself). The config comes
    from ``kwargs`` where it is readable, else from the state's shapes; the result always sets
    ``official_forward=True`` because the published weights were trained with the released
    code, which never ran its Mamba layers (their weights are kept, untrained).
    """
    if not isinstance(obj, dict):
        raise CheckpointError("not an AEROMamba checkpoint (expected a dict)")
    package = obj
    if "models" in obj:
        models = obj["models"]
        if not isinstance(models, dict) or "generator" not in models:
            raise CheckpointError("AEROMamba checkpoint: missing key 'models.generator'")
        package = models["generator"]
    if not isinstance(package, dict) or "state" not in package:
        raise CheckpointError("AEROMamba checkpoint: missing key 'state'")
    state = package["state"]
    if not isinstance(state, dict):
        raise CheckpointError("AEROMamba checkpoint: 'state' is not a state dict")
    overrides: dict[str, tp.Any] = {}
    inferred: list[str] = []
    kwargs = _plain(package.get("kwargs"))
    if isinstance(kwargs, dict) and kwargs and all(isinstance(k, str) for k in kwargs):
        overrides = config_from_official_args(kwargs)
    else:  # keep only what differs from the published config; print every inferred field
        shapes = _widths_from_shapes(state)
        published = dataclasses.asdict(AEROMambaConfig())
        overrides = {k: v for k, v in shapes.items() if v != published[k] or k == "channels"}
        inferred = list(shapes)
    overrides["official_forward"] = True
    cfg_fields = {f.name for f in dataclasses.fields(AEROMambaConfig)}
    if set(overrides) - cfg_fields:  # pragma: no cover - _ARG_MAP only names fields
        raise CheckpointError(f"bad config key {sorted(set(overrides) - cfg_fields)[0]!r}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"AEROMamba checkpoint: key {key!r} is not a tensor")
        out[key] = value
    expected = _expected_keys(overrides)
    for key in out:
        if key not in expected:
            raise CheckpointError(f"AEROMamba checkpoint: unexpected key {key!r}")
    for key in expected:
        if key not in out:
            raise CheckpointError(f"AEROMamba checkpoint: missing key {key!r}")
    return Overrides(overrides, inferred=inferred), out


def _widths_from_shapes(state: tp.Mapping[str, tp.Any]) -> dict[str, tp.Any]:
    """Widths of a checkpoint whose constructor arguments are unreadable, from its shapes:
    ``channels`` (``encoder.0.pre_conv`` outputs), ``growth`` (``encoder.1.conv`` outputs /
    channels), ``dconv_depth`` (residual layers in ``encoder.0.dconv``), ``dconv_comp``
    (channels / the first DConv conv's outputs) and the Mamba ``d_state``/``expand``/
    ``d_conv``. Every other field keeps the published value; the key check then decides."""
    def shape(key: str) -> tuple[int, ...]:
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"AEROMamba checkpoint: missing key {key!r}")
        return tuple(value.shape)

    channels = shape("encoder.0.pre_conv.weight")[0]
    out: dict[str, tp.Any] = {"channels": channels}
    if "encoder.1.conv.weight" in state:
        out["growth"] = max(1, shape("encoder.1.conv.weight")[0] // channels)
    prefix = "encoder.0.dconv.layers."
    depth = len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})
    if depth:
        out["dconv_depth"] = depth
        out["dconv_comp"] = max(1, channels // shape(prefix + "0.conv1.0.weight")[0])
    if prefix + "0.mamba.A_log" in state:
        inner, d_state = shape(prefix + "0.mamba.A_log")
        out |= {"d_state": d_state, "expand": max(1, inner // channels),
                "d_conv": shape(prefix + "0.mamba.conv1d.weight")[-1]}
    return out


def _expected_keys(overrides: dict[str, tp.Any]) -> list[str]:
    """State keys of the model these overrides describe."""
    from upsr.models.base import make_config

    cfg = make_config(AEROMambaConfig, overrides, what="aeromamba")
    return list(AEROMamba(cfg).state_dict())


@register("aeromamba", "AEROMamba (Abreu & Biscainho, 2024)",
          importer=convert_official)
class AEROMamba(Restorer):
    """AEROMamba generator: ``restore(x [B, T] at 11,025 Hz) -> [B, 4T] at 44.1 kHz``.

    Default: the paper (Mamba runs in every DConv layer, placement in the module docstring).
    ``official_forward=True``: the released code (Mamba built, never called), which is how the
    published checkpoints were trained; :func:`convert_official` selects it.

    Chunking: like the official model, the network normalises its input spectrum by the
    whole-signal mean/std and its GroupNorms (encoder/decoder layers >= 2, every DConv layer)
    average over the whole time axis, so every output sample depends a little on the whole
    signal. ``context_s`` covers the local (convolutional and recurrent) reach: with the same
    statistics, chunks with that much context reproduce whole-signal inference to < 1e-5; with
    each chunk's own statistics (as the official ``predict.py`` runs 10-s chunks) kept regions
    differ from whole-signal inference by about 1-3 % relative L2 on music-like test signals
    (up to 17 % on a short final chunk), random weights, 8-channel config. Chunks must start at
    multiples of ``align`` (64 input samples) so their STFT frames fall where the whole
    signal's do.
    """

    config_cls = AEROMambaConfig
    channels = "mono"
    #: the engine runs :meth:`collect_statistics` passes over the whole signal first
    global_statistics: tp.ClassVar[bool] = True

    def __init__(self, config: AEROMambaConfig) -> None:
        super().__init__(config)
        cfg = config
        self.in_rate = cfg.lr_sr
        self.out_rate = cfg.hr_sr
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        freqs = cfg.n_fft // 2
        chin, chout = 2, cfg.channels
        for index, stride in enumerate(cfg.strides):
            self.encoder.append(EncoderLayer(index, chin, chout, freqs, stride, cfg))
            dec_out = 2 if index == 0 else chin
            self.decoder.insert(0, DecoderLayer(index, 2 * chout, dec_out, stride, cfg))
            if index == 0:
                self.freq_emb = ScaledEmbedding(freqs // stride, chout, cfg.emb_scale)
            freqs //= stride
            chin, chout = chout, int(cfg.growth * chout)
        if cfg.rescale:
            _rescale_conv1d(self, cfg.rescale)
        self._ctl = _StatControl()
        for name, mod in self.named_modules():
            if isinstance(mod, _StatNorm):
                mod.ctl, mod.key = self._ctl, name

    @property
    def context_s(self) -> float:  # type: ignore[override]
        return self.config.context_s

    @property
    def align(self) -> int:
        """Chunks must start at multiples of the input hop so their STFT frames coincide with
        the whole signal's (the engine reads this)."""
        return self.config.in_hop

    def _statistics(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean and unbiased std of the spectrum ``z: [B, 2, F, N]`` (``[B,1,1,1]``
        each), used to normalise the network input and undone on its output (or the frozen
        whole-signal ones, see :meth:`collect_statistics`)."""
        ctl = self._ctl
        if ctl.mode == "collect":
            a, b = ctl.frames
            _add_sums(ctl.acc, "input", [v[:, None] for v in _frame_sums(z[..., a:b], (1, 2))])
        if ctl.mode is not None and ctl.frozen is not None and "input" in ctl.frozen:
            mean, std = ctl.frozen["input"]
            return (mean.to(z.dtype).reshape(-1, 1, 1, 1), std.to(z.dtype).reshape(-1, 1, 1, 1))
        return z.mean(dim=(1, 2, 3), keepdim=True), z.std(dim=(1, 2, 3), keepdim=True)

    # -- two-pass inference: whole-signal statistics first, then chunks ---------------------
    def collect_statistics(self, x: torch.Tensor, keep: tuple[int, int], last: bool,
                           acc: dict[str, list[torch.Tensor]] | None,
                           frozen: list[RowStats] | None) -> dict[str, list[torch.Tensor]]:
        """Run the chunk ``x [B, n]`` (rows: one channel of one signal each) and add, for the
        input spectrum and every GroupNorm, the sums of its input over the STFT frames of the
        kept input samples ``keep = (lo, hi)`` (the frames centred there; with ``last``, every
        frame to the signal's end) to ``acc``. Normalisation uses ``frozen`` per-row statistics
        where given, the chunk's own otherwise. Chunks that partition the signal then sum to
        the whole-signal statistics (exactly, when ``frozen`` already holds them)."""
        hop = self.config.in_hop
        a = -(-keep[0] // hop)
        b = -(-x.shape[-1] // hop) + 1 if last else -(-keep[1] // hop)
        ctl = self._ctl
        ctl.mode, ctl.frames, ctl.acc = "collect", (a, b), acc if acc is not None else {}
        ctl.frozen = _stack(frozen) if frozen else None
        ctl.pending = {m.key for m in self.modules() if isinstance(m, _StatNorm)}
        try:
            with torch.no_grad():
                self._run(x, None)
        finally:
            ctl.mode, ctl.frozen, ctl.pending = None, None, set()
        return ctl.acc

    @staticmethod
    def finish_statistics(acc: dict[str, list[torch.Tensor]]) -> list[RowStats]:
        """Sums from :meth:`collect_statistics` → per-row statistics: the input spectrum's mean
        and unbiased std, each GroupNorm's per-group mean and (biased) variance."""
        rows = acc["input"][0].shape[0]
        out: list[RowStats] = [{} for _ in range(rows)]
        for key, (s1, s2, n) in acc.items():
            mean = s1 / n
            if key == "input":
                second = ((s2 - s1 * mean) / (n - 1).clamp(min=1)).clamp(min=0).sqrt()
            else:
                second = (s2 / n - mean.square()).clamp(min=0)
            mean = mean.reshape(rows, -1, mean.shape[-1])
            second = second.reshape(rows, -1, second.shape[-1])
            for r in range(rows):
                out[r][key] = (mean[r], second[r])
        return out

    def use_statistics(self, rows: list[RowStats] | None) -> None:
        """Normalise the next calls with these per-row statistics (None: each call's own)."""
        self._ctl.mode = "frozen" if rows else None
        self._ctl.frozen = _stack(rows) if rows else None

    def _spec(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, T']`` (T' a multiple of the input hop) → ``[B, 2, F, N]`` real/imag."""
        cfg = self.config
        win = cfg.n_fft // cfg.scale
        z = torch.stft(x, cfg.n_fft, cfg.in_hop, win_length=win,
                       window=torch.hann_window(win, device=x.device, dtype=x.dtype),
                       normalized=True, center=True, return_complex=True, pad_mode="reflect")
        return torch.view_as_real(z[:, :-1]).permute(0, 3, 1, 2)

    def _ispec(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, 2, F, N]`` real/imag → ``[B, hop·(N-1)]`` at the output rate."""
        cfg = self.config
        B, _, Fr, N = z.shape  # one buffer for the complex spectrum with its zero top bin
        buf = z.new_empty(B, Fr + 1, N, 2)
        buf[:, :Fr].copy_(z.permute(0, 2, 3, 1))
        buf[:, Fr].zero_()
        zc = torch.view_as_complex(buf)
        return torch.istft(zc, cfg.n_fft, cfg.hop_length, win_length=cfg.n_fft,
                           window=torch.hann_window(cfg.n_fft, device=z.device,
                                                    dtype=z.real.dtype),
                           normalized=True, center=True)

    def forward(self, x: torch.Tensor, intermediates: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """``x: [B, T]`` LR audio → ``[B, scale·T]``; fills ``intermediates`` when given
        (``spec_in``, ``encoder.{k}.out``, ``spec_out`` as in the parity fixture)."""
        low = _low_precision(self, x)
        if low is None:
            y = self._run(x, intermediates)
        else:  # bf16 autocast at inference: the model picks each op's precision itself
            with torch.autocast("cpu", enabled=False):
                y = self._run(x, intermediates, low)
        assert y is not None
        return y

    def _collected(self) -> bool:
        """In a statistics pass, whether every normalisation has collected its sums: the
        layers after the last GroupNorm cannot change them, so the pass stops there."""
        ctl = self._ctl
        return ctl.mode == "collect" and not ctl.pending

    def _run(self, x: torch.Tensor, intermediates: dict[str, torch.Tensor] | None,
             low: torch.dtype | None = None) -> torch.Tensor | None:
        """:meth:`forward`; None where a statistics pass stopped early (:meth:`_collected`).
        ``low``: the decoder's convolutions in that dtype (:func:`_low_precision`)."""
        cfg = self.config
        B, length = x.shape
        if length == 0:
            return x.new_zeros(B, 0)
        padded = max(-(-length // cfg.in_hop) * cfg.in_hop, _MIN_PADDED)
        x = F.pad(x, (0, padded - length))
        z = self._spec(x)
        if intermediates is not None:
            intermediates["spec_in"] = z
        mean, std = self._statistics(z)
        if self._collected():
            return None
        h = (z - mean) / (1e-5 + std)
        del z, x  # not needed again: their memory serves the layers
        skips = []
        for idx, enc in enumerate(self.encoder):
            h = enc(h, low)
            if intermediates is not None:
                intermediates[f"encoder.{idx}.out"] = h
            if idx == 0:
                h = h + cfg.freq_emb * self.freq_emb().t()[None, :, :, None]
            skips.append(h)
        out: torch.Tensor | None = None  # the decoder starts from zeros at the bottleneck
        for dec in self.decoder:
            if self._collected():
                return None
            out = dec(out, skips.pop(), low)
        assert out is not None
        if self._collected():
            return None
        # float32 (the last decoder layer's output is, see _low); in place at inference
        h = out * std + mean if out.requires_grad else out.mul_(std).add_(mean)
        del out
        if intermediates is not None:
            intermediates["spec_out"] = h
        return self._ispec(h)[:, :length * cfg.scale]

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:
        """``x: [B, T]`` at ``in_rate`` → ``[B, 4T]`` at ``out_rate``."""
        return self.forward(x)


def _stack(rows: list[RowStats]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-row statistics → per norm ``[rows·R, groups]`` in batch-major order."""
    return {key: (torch.cat([r[key][0] for r in rows]), torch.cat([r[key][1] for r in rows]))
            for key in rows[0]}


def _rescale_conv1d(module: nn.Module, reference: float) -> None:
    """HDemucs init: scale every Conv1d/ConvTranspose1d so its weight std is sqrt(std·ref).

    Only 1-D convs are touched (as in the official code): DConv, FTB's time conv and the
    Mamba depthwise convs.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
            std = sub.weight.std().detach()
            scale = (std / reference) ** 0.5
            sub.weight.data /= scale
            if sub.bias is not None:
                sub.bias.data /= scale
