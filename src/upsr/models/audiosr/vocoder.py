"""AudioSR's 48 kHz HiFi-GAN vocoder: log-mel ``[B, 256, T]`` → waveform ``[B, 1, 480·T + 16]``.

Kong et al., "HiFi-GAN: Generative Adversarial Networks for Efficient and High Fidelity Speech
Synthesis", NeurIPS 2020 (generator, Fig. 1, ResBlock type 1), with AudioSR's 48 kHz settings
(``audiosr/hifigan/models.py`` ``Generator`` and ``audiosr/utilities/model.py``
``get_vocoder_config_48k``; haoheliu/versatile_audio_super_resolution @ 034db6c5d761):

- ``conv_pre``: conv k7 (256 mels → ``upsample_initial_channel``);
- five stages, channel count halving each: leaky ReLU (slope 0.1) → ``ConvTranspose1d``
  (kernel k, stride u, padding (k−u)//2) → the **mean** of 4 ResBlocks (kernels 3, 7, 11, 15,
  dilations 1, 3, 5). Rates 6·5·4·2·2 = 480 = the mel hop; the ×5 stage (k 10, padding 2)
  yields 5L+1 samples, hence the 16 extra samples at the end;
- leaky ReLU with PyTorch's *default* slope 0.01 (as the official code calls it) → ``conv_post``
  (k7 → 1 channel) → tanh.

The official loader removes weight norm right after construction, so checkpoints and this
module hold plain ``weight``/``bias`` tensors (same keys). Fine-tuning as HiFi-GAN trains may
re-parametrize with :meth:`Vocoder.apply_weight_norm` and fold it back with
:func:`upsr.nn.layers.remove_norms`. The published configuration has 190,281,889 parameters.
"""

from __future__ import annotations

import dataclasses
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upsr.nn.layers import weight_norm

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class VocoderConfig:
    """``get_vocoder_config_48k()`` (ResBlock type "1", the only type AudioSR uses). The
    fixtures' small model is ``VocoderConfig(upsample_initial_channel=128)``."""

    num_mels: int = 256
    upsample_rates: tuple[int, ...] = (6, 5, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (12, 10, 8, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 15)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 4

    def __post_init__(self) -> None:
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "resblock_dilation_sizes",
                           tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes))
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("VocoderConfig: upsample_rates and upsample_kernel_sizes differ in "
                             "length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("VocoderConfig: resblock_kernel_sizes and resblock_dilation_sizes "
                             "differ in length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError(f"VocoderConfig: upsample_initial_channel "
                             f"{self.upsample_initial_channel} must be divisible by "
                             f"2^{len(self.upsample_rates)}")

    @classmethod
    def published(cls) -> VocoderConfig:
        return cls()

    @classmethod
    def small(cls) -> VocoderConfig:
        """The parity fixture's widths (``audiosr_vocoder.safetensors``): 1,534,649 parameters."""
        return cls(upsample_initial_channel=128)

    @property
    def hop(self) -> int:
        """Samples per mel frame (480 at 48 kHz)."""
        hop = 1
        for u in self.upsample_rates:
            hop *= u
        return hop

    def as_dict(self) -> dict[str, tp.Any]:
        return dataclasses.asdict(self)


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock type 1: for each dilation d, ``x ← x + conv2(lrelu(conv1_d(lrelu(x))))``
    with "same" padding (k·d − d)/2 and slope 0.1. ``[B, C, L] → [B, C, L]``."""

    def __init__(self, channels: int, kernel_size: int, dilations: tp.Sequence[int]) -> None:
        super().__init__()
        k = kernel_size
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, k, dilation=d, padding=(k * d - d) // 2)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, k, padding=(k - 1) // 2) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class Vocoder(nn.Module):
    """48 kHz HiFi-GAN generator. ``forward(mel: [B, num_mels, frames])`` →
    ``[B, 1, hop·frames + 16]`` in [−1, 1] (for the published rates)."""

    def __init__(self, cfg: VocoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else VocoderConfig()
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, stride=u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes,
                                           strict=True)))
        self.resblocks = nn.ModuleList(
            ResBlock1(c0 // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(self.ups), 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n = len(self.cfg.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            xs = self.resblocks[i * n](x)
            for j in range(1, n):
                xs = xs + self.resblocks[i * n + j](x)
            x = xs / n
        # The official generator calls F.leaky_relu(x) here: PyTorch's default slope 0.01.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))

    def apply_weight_norm(self) -> Vocoder:
        """Weight-norm every conv (as HiFi-GAN trains), keeping the current effective weights;
        :func:`upsr.nn.layers.remove_norms` folds it back. Returns ``self``."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
                weight_norm(module)
        return self
