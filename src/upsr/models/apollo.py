"""Apollo: band-split Roformer + TCN restoration of MP3-compressed music at 44.1 kHz.

Li, Luo et al., "Apollo: Band-sequence modeling for high-quality audio restoration" (ICASSP
2025); official code ``JusperLee/Apollo`` (``look2hear/models/apollo.py``). The generator
works on an STFT (20 ms periodic Hann window = n_fft, hop = half a window, centred, reflect
padding): the ``win/2 + 1`` bins are split into 80 bands (79 of ``win_samples // 160`` bins,
the rest in the last), each band is divided by its norm and embedded, ``layer`` BSNets
alternate a Roformer across the bands of each frame with a convolutional block (the "TCN")
along the frames of each band, and a per-band head predicts the complex spectrum directly (no
mask), which the inverse STFT turns back into samples of the input's length.

Parameter names equal the official ones, so ``convert_official`` checks keys rather than
mapping them; the RoPE tables are recomputed here (not stored) and checked against the
official buffers on import. Channels are processed independently (``channels = "mono"``), as
the official generator does by folding channels into the batch.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upsr.checkpoint import check_keys
from upsr.errors import CheckpointError, UsageError
from upsr.models import register
from upsr.models.base import Restorer
from upsr.models.importers import Overrides
from upsr.nn.roformer import (
    LOW_PRECISION,
    RMSNorm,
    RoformerBlock,
    Workspace,
    rms_normalize,
    rms_scale,
    rope_tables,
)

N_BANDS = 80  # official: 79 equal bands + 1 band holding the remaining bins
N_HEADS = 8  # band Roformer heads
ROPE_POSITIONS = 100  # length of the official RoPE tables (``window=100``)
TIME_KERNEL = 7  # depthwise time convolution of the TCN blocks
TIME_BLOCKS = 3  # TCN blocks per BSNet


@dataclass(frozen=True)
class ApolloConfig:
    """Apollo generator; the defaults are the published ``configs/apollo.yaml``.

    ``sr``: sample rate in Hz; ``win``: STFT window in ms (n_fft = hop·2 = ``sr·win // 1000``
    samples); ``feature_dim``: channels per band; ``layer``: number of BSNets.
    """

    sr: int = 44100
    win: int = 20
    feature_dim: int = 256
    layer: int = 6

    def __post_init__(self) -> None:
        win_samples = self.sr * self.win // 1000
        if self.sr <= 0 or self.win <= 0:
            raise ValueError(f"sr and win must be positive, got sr={self.sr}, win={self.win}")
        if win_samples // 160 < 1 or win_samples // 2 + 1 <= (N_BANDS - 1) * (win_samples // 160):
            raise ValueError(f"a {self.win} ms window at {self.sr} Hz ({win_samples} samples) "
                             f"is too short for {N_BANDS} bands")
        if self.feature_dim <= 0 or self.feature_dim % (2 * N_HEADS):
            raise ValueError(f"feature_dim must be a positive multiple of {2 * N_HEADS} "
                             f"(8 heads with an even RoPE size), got {self.feature_dim}")
        if self.layer < 1:
            raise ValueError(f"layer must be >= 1, got {self.layer}")

    @property
    def win_samples(self) -> int:
        return self.sr * self.win // 1000

    @property
    def hop(self) -> int:
        return self.win_samples // 2

    @property
    def n_bins(self) -> int:
        return self.win_samples // 2 + 1

    @property
    def band_widths(self) -> tuple[int, ...]:
        width = self.win_samples // 160
        return (width,) * (N_BANDS - 1) + (self.n_bins - width * (N_BANDS - 1),)


class TimeConvBlock(nn.Module):
    """Residual ``x + W2 · SiLU(W1 · RMSNorm(DWConv_k(x)))`` along time (official
    ``ConvActNorm1d``, non-causal); ``conv.{0,1,2,4}`` keep the official names (index 3 is the
    SiLU).

    ``forward(x: [N, C, T])`` is the official layout, run through the ``conv`` modules as
    written; ``forward_frames(x: [B, T, K, C])`` computes the same function channel-last, with
    the 1×1 convolutions as single ``F.linear`` GEMMs over all bands and frames (2–3× less
    time on a 2-core CPU than oneDNN's 1×1 convolutions on the band-folded layout).
    """

    def __init__(self, channels: int, hidden: int, kernel: int = TIME_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels),
            RMSNorm(channels, dim=1),
            nn.Conv1d(channels, hidden, 1),
            nn.SiLU(),
            nn.Conv1d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)

    def forward_frames(self, x: torch.Tensor, workspace: Workspace | None = None
                       ) -> torch.Tensor:
        if x.dtype in LOW_PRECISION and not torch.is_grad_enabled():
            return self._forward_frames_low_precision(x, workspace or Workspace())
        b, t, k, c = x.shape
        conv: tp.Any = self.conv
        dw, norm, up, down = conv[0], conv[1], conv[2], conv[4]
        # depthwise conv along frames as kernel-size shifted multiply-adds on the zero-padded
        # channel-last tensor: no transposes, and faster than oneDNN's depthwise kernel here
        half = (dw.weight.shape[-1] - 1) // 2
        xp = F.pad(x, (0, 0, 0, 0, half, half))
        taps = dw.weight.squeeze(1)  # [C, kernel]
        y = torch.addcmul(dw.bias, xp[:, :t], taps[:, 0])
        for j in range(1, taps.shape[-1]):
            y.addcmul_(xp[:, j:j + t], taps[:, j])
        y = rms_normalize(y, norm.eps)
        y = F.silu(F.linear(y, up.weight.squeeze(-1) * norm.weight, up.bias),
                   inplace=not torch.is_grad_enabled())
        return torch.addmm(down.bias, y.reshape(-1, y.shape[-1]),
                           down.weight.squeeze(-1).t()).reshape(x.shape).add_(x)

    def _forward_frames_low_precision(self, x: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """Inference in ``x``'s dtype (bf16/fp16), without autocast (``x`` is not modified):
        the depthwise convolution as oneDNN's channel-last (NHWC) 2-D convolution with a
        ``kernel × 1`` filter, which reads ``[B, T, K, C]`` as ``[B, C, T, K]`` in place (in
        bf16 ~15× faster than the shifted multiply-adds), the RMSNorm statistic in float32,
        the hidden layer in ``ws`` (name ``hidden``), the residual add fused into the last
        GEMM, whose result overwrites the convolution's output."""
        c = x.shape[-1]
        dt = x.dtype
        conv: tp.Any = self.conv
        dw, norm, up, down = conv[0], conv[1], conv[2], conv[4]
        half = (dw.weight.shape[-1] - 1) // 2
        y = F.conv2d(x.permute(0, 3, 1, 2), dw.weight.unsqueeze(-1).to(dt), dw.bias.to(dt),
                     padding=(half, 0), groups=c).permute(0, 2, 3, 1)
        y = y.contiguous().view(-1, c)  # no copy: oneDNN returns the NHWC layout it was given
        y.mul_(rms_scale(y, norm.eps))
        w_up = (up.weight.squeeze(-1) * norm.weight).to(dt)
        h = torch.addmm(up.bias.to(dt), y, w_up.t(),
                        out=ws.get("hidden", (y.shape[0], w_up.shape[0]), x))
        h = F.silu(h, inplace=True)
        out = torch.addmm(x.reshape(-1, c), h, down.weight.squeeze(-1).t().to(dt), out=y)
        return out.add_(down.bias.to(dt)).view(x.shape)


class TimeConvStack(nn.Module):
    """The "TCN" of a BSNet (official ``ICB``): three :class:`TimeConvBlock` with 4× hidden."""

    def __init__(self, channels: int, kernel: int = TIME_KERNEL) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(TimeConvBlock(channels, 4 * channels, kernel)
                                      for _ in range(TIME_BLOCKS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_frames(self, x: torch.Tensor, workspace: Workspace | None = None
                       ) -> torch.Tensor:
        for block in tp.cast(tp.Iterable[TimeConvBlock], self.blocks):
            x = block.forward_frames(x, workspace)
        return x


class BSNet(nn.Module):
    """One band-sequence block: Roformer across bands, then the TCN along frames.

    ``forward(x: [B, K, C, T]) -> [B, K, C, T]`` (K bands, C channels, T frames) in the official
    layout; ``forward_frames(x: [B, T, K, C])`` is the same function channel-last, the layout
    :class:`Apollo` keeps between blocks so that both halves run as plain GEMMs.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.band_net = RoformerBlock(feature_dim, num_heads=N_HEADS,
                                      max_positions=ROPE_POSITIONS, causal=False)
        self.seq_net = TimeConvStack(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_frames(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward_frames(self, x: torch.Tensor, workspace: Workspace | None = None
                       ) -> torch.Tensor:
        """``workspace``: scratch tensors shared by the blocks (bf16/fp16 inference only)."""
        b, t, k, c = x.shape
        y = self.band_net(x.reshape(b * t, k, c), workspace).reshape(b, t, k, c)
        return self.seq_net.forward_frames(y, workspace)


def _band_groups(widths: tp.Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of equal-width bands as ``(first band, band count, first bin)``."""
    groups: list[tuple[int, int, int]] = []
    band, start = 0, 0
    while band < len(widths):
        run = 1
        while band + run < len(widths) and widths[band + run] == widths[band]:
            run += 1
        groups.append((band, run, start))
        start += widths[band] * run
        band += run
    return groups


def _autocast_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """``torch.bfloat16`` when ``x`` is on the CPU, a CPU bf16 autocast is active and no
    gradient is recorded (inference), else None.

    Apollo then runs the BSNet stack explicitly in bf16 rather than letting autocast cast each
    op's inputs: the band embedding, the head and the (i)STFT stay float32, the residual
    stream between the blocks is bf16 (as it already was under autocast, whose GEMMs return
    bf16), and the blocks' own low-precision paths keep every normalisation statistic and the
    attention softmax in float32. Training under autocast (gradients on) keeps the float32
    code with autocast's casts. fp16 autocast is left to autocast (a float16 residual stream
    could overflow). On CUDA autocast alone is used: what this path saves (per-op casts, the
    slow depthwise multiply-adds, page faults of fresh buffers) is a CPU cost, and the path has
    not been run on a GPU.
    """
    if (x.device.type != "cpu" or torch.is_grad_enabled()
            or not torch.is_autocast_enabled("cpu")):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if dtype == torch.bfloat16 else None


# -- official checkpoints -------------------------------------------------------------------
_LIGHTNING_MODEL = "audio_model."
_LIGHTNING_DROP = "discriminator."
_MODEL_ARGS = ("sr", "win", "feature_dim", "layer")
# Official ``get_model_args()`` returns only the channel count; it does not shape the model.
_MODEL_ARGS_IGNORED = ("n_sample_rate",)


def _official_state(obj: tp.Any) -> tuple[dict[str, torch.Tensor], dict[str, tp.Any]]:
    """The bare generator state and the model args of an official container."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"apollo: expected the official checkpoint dict, got "
                              f"{type(obj).__name__}")
    if "state_dict" not in obj:
        raise CheckpointError("apollo: official checkpoint has no 'state_dict' entry")
    name = obj.get("model_name")
    if name is not None and name != "Apollo":
        raise CheckpointError(f"apollo: checkpoint holds model_name {name!r}, not 'Apollo'")
    raw = obj["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError("apollo: 'state_dict' is not a dict of tensors")
    args = obj.get("model_args") or {}
    if not isinstance(args, dict):
        raise CheckpointError("apollo: 'model_args' is not a dict")
    lightning = any(k.startswith(_LIGHTNING_MODEL) for k in raw)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if lightning:
            if key.startswith(_LIGHTNING_DROP):
                continue  # the GAN discriminator is training-only
            if not key.startswith(_LIGHTNING_MODEL):
                raise CheckpointError(f"apollo: unexpected key {key!r} in a Lightning "
                                      f"checkpoint (expected 'audio_model.*' or "
                                      f"'discriminator.*')")
            key = key[len(_LIGHTNING_MODEL):]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"apollo: key {key!r} is not a tensor")
        state[key] = value
    return state, args


def convert_official(obj: tp.Any) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    """Official Apollo checkpoint -> ``(ApolloConfig overrides, upsr state dict)``.

    Accepts the released ``{model_name, state_dict, model_args, infos}`` dict and Lightning
    checkpoints (``audio_model.*`` generator keys; ``discriminator.*`` keys are dropped).
    ``model_args`` keys ``sr``/``win``/``feature_dim``/``layer`` become config fields;
    otherwise they are read off the weights (the released file's model_args hold only
    ``n_sample_rate``; community checkpoints often hold nothing): ``feature_dim`` from the band
    embedding, ``layer`` from the BSNet count, ``sr``/``win`` from the band split
    (:func:`_infer_window`). The returned :class:`Overrides` list the inferred fields. The
    RoPE buffers ``net.{i}.band_net.cos_freq`` / ``sin_freq`` must equal the tables this module
    computes (they are not stored in upsr checkpoints). Any other key must belong to the
    model; a missing or unknown key is a :class:`CheckpointError` naming it.
    """
    state, args = _official_state(obj)
    overrides: dict[str, tp.Any] = {}
    for key, value in args.items():
        if key in _MODEL_ARGS:
            overrides[key] = value
        elif key not in _MODEL_ARGS_IGNORED:
            raise CheckpointError(f"apollo: unknown model_args entry {key!r} (known: "
                                  f"{', '.join(_MODEL_ARGS + _MODEL_ARGS_IGNORED)})")
    if "BN.0.1.weight" not in state:
        raise CheckpointError("apollo: missing key 'BN.0.1.weight'")
    inferred = {
        "feature_dim": int(state["BN.0.1.weight"].shape[0]),
        "layer": len({k.split(".")[1] for k in state if k.startswith("net.")}),
    }
    notes: list[str] = []
    if "sr" not in overrides or "win" not in overrides:
        rate, win, note = _infer_window(state, overrides.get("sr"), overrides.get("win"))
        inferred |= {"sr": rate, "win": win}
        if note:
            notes.append(note)
    for key, value in inferred.items():
        if key in overrides and overrides[key] != value:
            raise CheckpointError(f"apollo: model_args {key}={overrides[key]!r} disagrees "
                                  f"with the weights ({value})")
        overrides[key] = value
    try:
        config = ApolloConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"apollo: model_args describe no valid model ({exc})") from None
    head_dim = config.feature_dim // N_HEADS
    cos, sin = rope_tables(ROPE_POSITIONS, head_dim)
    out: dict[str, torch.Tensor] = {}
    for i in range(config.layer):
        for buf, ref in (("cos_freq", cos), ("sin_freq", sin)):
            key = f"net.{i}.band_net.{buf}"
            if key not in state:
                raise CheckpointError(f"apollo: missing key {key!r}")
            got = state[key]
            if tuple(got.shape) != tuple(ref.shape) or not torch.allclose(
                    got.float(), ref, rtol=0.0, atol=1e-5):
                raise CheckpointError(f"apollo: buffer {key!r} differs from the RoPE table "
                                      f"(theta 10000, {ROPE_POSITIONS} positions, head dim "
                                      f"{head_dim}); the checkpoint is not a standard Apollo")
    for key, value in state.items():
        if key.endswith(("band_net.cos_freq", "band_net.sin_freq")):
            continue
        out[key] = value.detach().to(torch.float32)
    with torch.device("meta"):  # the expected keys and shapes, without allocating weights
        expected = Apollo(config).state_dict()
    check_keys(out, expected, "apollo")
    shape_keys = [k for k in ("sr", "win", "feature_dim", "layer")
                  if k in inferred and k not in args]
    return Overrides(overrides, inferred=shape_keys, notes=notes), out


# sample rates tried, in order, when a checkpoint's band split fixes only sr·win
_RATES_HZ = (44100, 48000, 32000, 22050, 24000, 16000, 88200, 96000)


def _infer_window(state: tp.Mapping[str, torch.Tensor], sr: int | None,
                  win: int | None) -> tuple[int, int, str]:
    """``(sr, win, note)`` from the band split in the embedding shapes.

    ``BN.{i}.0.weight`` has ``2·w_i + 1`` entries: the first band's width ``w`` is
    ``win_samples // 160`` and the bins add up to ``win_samples // 2 + 1``, which fixes the
    window length in samples. Only the product ``sr·win/1000`` is in the weights, so a given
    ``sr`` (or ``win``) is kept and otherwise 44.1 kHz (then 48, 32, … kHz) is assumed; the
    note says so.
    """
    widths = []
    i = 0
    while f"BN.{i}.0.weight" in state:
        n = int(state[f"BN.{i}.0.weight"].shape[0])
        if n < 3 or n % 2 == 0:
            raise CheckpointError(f"apollo: key 'BN.{i}.0.weight' has {n} entries; a band "
                                  f"embedding has 2·width + 1")
        widths.append((n - 1) // 2)
        i += 1
    if len(widths) != N_BANDS:
        raise CheckpointError(f"apollo: the checkpoint has {len(widths)} bands; Apollo splits "
                              f"the spectrum into {N_BANDS}")
    n_bins = sum(widths)
    lengths = {2 * (n_bins - 1), 2 * (n_bins - 1) + 1}
    fits = [(r, w) for r in ((sr,) if sr else _RATES_HZ) for w in ((win,) if win else
                                                                     range(1, 1001))
            if r * w // 1000 in lengths and (r * w // 1000) // 160 == widths[0]]
    if not fits:
        raise CheckpointError(f"apollo: no sample rate and window (ms) give the band split of "
                              f"this checkpoint (first band {widths[0]} bins, {n_bins} bins); "
                              f"its model_args must name sr and win")
    rate, length = fits[0]
    note = "" if sr else (f"sr={rate} assumed: the weights fix only the window "
                          f"({rate * length // 1000} samples)")
    return rate, length, note


@register("apollo", "Apollo (ICASSP 2025)", importer=convert_official)
class Apollo(Restorer):
    """Apollo generator: ``restore(x: [B, T]) -> [B, T]`` at ``sr`` (44.1 kHz), any ``T``.

    ``context_s`` is the exact receptive field: an input sample reaches the two frames whose
    windows cover it, every TCN block spreads a frame by ``(kernel-1)/2`` frames, and each
    output sample is overlap-added from two frames, so the reach is
    ``(layer·3·3 + 2) · hop`` samples (0.56 s for the published config).
    ``align`` is the STFT hop: chunk starts must fall on multiples of it for chunked inference
    to equal whole-signal inference (the frame grid is anchored at sample 0).
    """

    config_cls = ApolloConfig
    channels = "mono"
    config: ApolloConfig
    window: torch.Tensor

    def __init__(self, config: ApolloConfig) -> None:
        super().__init__(config)
        self.in_rate = self.out_rate = config.sr
        widths = config.band_widths
        self.band_widths = widths
        self.BN = nn.ModuleList(
            nn.Sequential(RMSNorm(2 * w + 1, dim=1), nn.Conv1d(2 * w + 1, config.feature_dim, 1))
            for w in widths)
        self.net = nn.Sequential(*(BSNet(config.feature_dim) for _ in range(config.layer)))
        self.output = nn.ModuleList(
            nn.Sequential(RMSNorm(config.feature_dim, dim=1),
                          nn.Conv1d(config.feature_dim, 4 * w, 1), nn.GLU(dim=1))
            for w in widths)
        self.register_buffer("window", torch.hann_window(config.win_samples), persistent=False)
        self._groups = _band_groups(widths)

    # -- contract ----------------------------------------------------------------------------
    @property
    def align(self) -> int:
        """Chunk starts must be multiples of the STFT hop (441 samples at 44.1 kHz)."""
        return self.config.hop

    @property
    def receptive_field(self) -> int:
        """Samples each side of an input sample that its change can reach in the output."""
        frames = self.config.layer * TIME_BLOCKS * (TIME_KERNEL - 1) // 2
        return (frames + 2) * self.config.hop

    @property
    def context_s(self) -> float:
        return self.receptive_field / self.config.sr

    # -- stages (public so parity tests can compare the official intermediates) --------------
    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, T]`` (T > hop) -> complex ``[B, F, frames]``, frames = T // hop + 1."""
        return torch.stft(x, n_fft=self.config.win_samples, hop_length=self.config.hop,
                          window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """Band embedding: complex ``[B, F, T]`` -> ``[B, K, C, T]``.

        Per band: bins divided by ``sqrt(Σ|X|² + eps)`` (eps = float32 machine epsilon), then
        ``[real, imag, log norm]`` -> RMSNorm -> 1×1 conv. Equal-width bands are embedded
        together with one batched matmul instead of a Python loop over bands.
        """
        eps = torch.finfo(torch.float32).eps
        out = []
        for first, count, bin0 in self._groups:
            w = self.band_widths[first]
            band = spec[:, bin0:bin0 + w * count].unflatten(1, (count, w))  # [B, n, w, T]
            norm = (band.real.square() + band.imag.square()).sum(2, keepdim=True).add(eps).sqrt()
            feat = torch.cat([band.real / norm, band.imag / norm, norm.log()], 2)  # [B,n,2w+1,T]
            mods: tp.Any = self.BN[first:first + count]
            g = torch.stack([m[0].weight for m in mods])  # [n, 2w+1]
            wt = torch.stack([m[1].weight.squeeze(-1) for m in mods])  # [n, C, 2w+1]
            bias = torch.stack([m[1].bias for m in mods])  # [n, C]
            feat = feat * torch.rsqrt(feat.square().mean(2, keepdim=True) + 1e-5)
            wt = wt * g[:, None, :]  # RMSNorm gain folded into the embedding weights
            out.append(torch.einsum("nci,bnit->bnct", wt, feat) + bias[None, :, :, None])
        return torch.cat(out, 1)

    def run_net(self, feature: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The BSNet stack, ``[B, K, C, T] -> [B, K, C, T]`` (official ``self.net``), computed
        channel-last ``[B, T, K, C]`` throughout: one layout change in, one out.

        ``dtype`` (bf16/fp16; inference only): the stack runs in that dtype (the layout change
        casts) and returns it; see :meth:`forward`."""
        x = feature.permute(0, 3, 1, 2)
        x = x.contiguous() if dtype is None else x.to(dtype, memory_format=torch.contiguous_format)
        workspace = None if dtype is None else Workspace()
        for block in tp.cast(tp.Iterable[BSNet], self.net):
            x = block.forward_frames(x, workspace)
        return x.permute(0, 2, 3, 1)

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """Per-band output: ``[B, K, C, T]`` -> complex spectrum ``[B, F, T]``.

        RMSNorm -> 1×1 conv to 4·w -> GLU (first half × sigmoid(second)) -> w real parts then
        w imaginary parts, used directly as the spectrum.
        """
        out = []
        for first, count, _ in self._groups:
            w = self.band_widths[first]
            mods: tp.Any = self.output[first:first + count]
            g = torch.stack([m[0].weight for m in mods])  # [n, C]
            wt = torch.stack([m[1].weight.squeeze(-1) for m in mods])  # [n, 4w, C]
            bias = torch.stack([m[1].bias for m in mods])  # [n, 4w]
            f = feature[:, first:first + count]
            f = f * torch.rsqrt(f.square().mean(2, keepdim=True) + 1e-5)
            wt = wt * g[:, None, :]  # RMSNorm gain folded into the head weights
            y = torch.einsum("noc,bnct->bnot", wt, f) + bias[None, :, :, None]
            y = F.glu(y, dim=2).unflatten(2, (2, w))  # [B, n, 2, w, T]
            out.append(torch.complex(y[:, :, 0], y[:, :, 1]).flatten(1, 2))
        return torch.cat(out, 1)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(spec, n_fft=self.config.win_samples, hop_length=self.config.hop,
                           window=self.window, center=True, length=length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, T]`` float -> ``[B, T]``; inputs of at most ``hop`` samples (too short for
        the centred reflect-padded STFT) are zero-padded to ``hop + 1`` and cropped back."""
        if x.dim() != 2:
            raise UsageError(f"apollo: restore expects [batch, samples], got shape "
                             f"{tuple(x.shape)}")
        length = x.shape[-1]
        if length == 0:
            return x.clone()
        if length <= self.config.hop:
            x = F.pad(x, (0, self.config.hop + 1 - length))
        spec = self.stft(x)
        low = _autocast_low_precision(x)
        if low is None:
            est = self.head(self.run_net(self.features(spec)))
        else:  # bf16 autocast at inference: see _autocast_low_precision
            with torch.autocast("cpu", enabled=False):
                est = self.head(self.run_net(self.features(spec), low).float())
        return self.istft(est, x.shape[-1])[:, :length]

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:
        return self.forward(x)
