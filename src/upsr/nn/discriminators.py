"""GAN discriminators used by AEROMamba, Apollo and Wave-U-Mamba.

Every discriminator here takes a waveform batch ``x: [B, C, T]`` and returns

    ``(logits, features)``

- ``logits``: ``list[Tensor]``, one per sub-discriminator (period, scale or window), each the raw
  output of its last convolution (``[B, 1, ...]``; no flattening, no sigmoid). The adversarial
  losses in :mod:`upsr.nn.losses` reduce each with a mean, so the trailing shape does not matter.
- ``features``: ``list[list[Tensor]]``, for each sub-discriminator the activations after every
  hidden layer (post-LeakyReLU), **excluding** the logits. Feature-matching losses pair them
  element by element between a real and a generated batch.

(HiFi-GAN's own ``feature_loss`` also matched its logits; Wave-U-Mamba never calls it, and
AEROMamba's MelGAN and Apollo's losses exclude the last layer, so the logits stay out here.)

Module and parameter names mirror the official code so official discriminator states map onto
these with :func:`upsr.nn.layers.legacy_norm_keys_to_parametrized` only.
"""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F
from torch import nn

from upsr.nn.layers import spectral_norm, weight_norm

DiscOutput = tuple[list[torch.Tensor], list[list[torch.Tensor]]]

HIFIGAN_PERIODS = (2, 3, 5, 7, 11)
APOLLO_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)


def _check_input(x: torch.Tensor, channels: int, who: str) -> None:
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"{who} expects a waveform batch [B, {channels}, T], got "
                         f"{tuple(x.shape)}")


def _norm(use_spectral_norm: bool) -> tp.Callable[[nn.Module], nn.Module]:
    return spectral_norm if use_spectral_norm else weight_norm


class PeriodDiscriminator(nn.Module):
    """One HiFi-GAN period discriminator: fold ``T`` into ``[T/p, p]`` and run 2-D convolutions
    that see only every p-th sample (Kong et al., "HiFi-GAN", NeurIPS 2020, §2.2).

    Channels 1→32→128→512→1024→1024 (kernel (5,1), stride (3,1) except the last), then a (3,1)
    conv to one logit channel; weight norm; LeakyReLU 0.1. Shape ``x: [B, 1, T]`` → logits
    ``[B, 1, ~T/(81·p), p]``, 5 feature maps. Inputs whose length is not a multiple of ``p`` are
    reflect-padded on the right, as in the official code.
    """

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3,
                 channels: tp.Sequence[int] = (32, 128, 512, 1024, 1024),
                 use_spectral_norm: bool = False) -> None:
        super().__init__()
        self.period = period
        norm = _norm(use_spectral_norm)
        pad = (kernel_size - 1) // 2
        chans = [1, *channels]
        convs = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            s = stride if i < len(channels) - 1 else 1
            convs.append(norm(nn.Conv2d(c_in, c_out, (kernel_size, 1), (s, 1), (pad, 0))))
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        return self.conv_post(x), feats


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN multi-period discriminator (MPD), periods 2, 3, 5, 7, 11 (Kong et al. 2020).

    This is the form Wave-U-Mamba trains with (its ``modules/discriminator.py``, taken from
    BigVGAN with ``d_mult = 1``): 41,105,770 parameters with weight norm (41,092,165 in the
    convolutions plus 13,605 weight-norm gains; the reference's counted "41.1 M").
    Input ``[B, 1, T]``; output as described in the module docstring (5 sub-discriminators).
    """

    def __init__(self, periods: tp.Sequence[int] = HIFIGAN_PERIODS,
                 channels: tp.Sequence[int] = (32, 128, 512, 1024, 1024)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, channels=channels) for p in periods])

    def forward(self, x: torch.Tensor) -> DiscOutput:
        _check_input(x, 1, "MultiPeriodDiscriminator")
        logits, feats = [], []
        for d in self.discriminators:
            logit, fmap = d(x)
            logits.append(logit)
            feats.append(fmap)
        return logits, feats


class ScaleDiscriminator(nn.Module):
    """One HiFi-GAN scale discriminator (the MelGAN-style grouped strided 1-D stack of Kong et
    al. 2020, §2.3): channels 1→128→128→256→512→1024→1024→1024 with kernels 15/41×5/5, strides
    1,2,2,4,4,1,1, groups 1,4,16,16,16,16,1, then a k3 conv to one logit channel; LeakyReLU 0.1.
    ``width`` scales every hidden channel count (default 128 = HiFi-GAN V1).
    Shape ``x: [B, 1, T]`` → logits ``[B, 1, ~T/64]``, 7 feature maps.
    """

    def __init__(self, use_spectral_norm: bool = False, width: int = 128) -> None:
        super().__init__()
        norm = _norm(use_spectral_norm)
        w = width
        spec = [  # (in, out, kernel, stride, groups)
            (1, w, 15, 1, 1),
            (w, w, 41, 2, 4),
            (w, 2 * w, 41, 2, 16),
            (2 * w, 4 * w, 41, 4, 16),
            (4 * w, 8 * w, 41, 4, 16),
            (8 * w, 8 * w, 41, 1, 16),
            (8 * w, 8 * w, 5, 1, 1),
        ]
        self.convs = nn.ModuleList(
            [norm(nn.Conv1d(ci, co, k, s, padding=(k - 1) // 2, groups=g))
             for ci, co, k, s, g in spec])
        self.conv_post = norm(nn.Conv1d(8 * w, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        return self.conv_post(x), feats


class MultiScaleDiscriminator(nn.Module):
    """HiFi-GAN multi-scale discriminator (MSD): three scale discriminators on the raw signal
    and on ×2 and ×4 average-pooled copies (``AvgPool1d(4, 2, padding=2)``); the first uses
    spectral norm, the others weight norm (Kong et al. 2020, §2.3).

    As Wave-U-Mamba trains it: 29,618,821 parameters (29,610,627 in the convolutions plus 8,194
    weight-norm gains of the two weight-normed copies; spectral norm adds only buffers), the
    reference's counted "29.6 M". Input ``[B, 1, T]``; 3 sub-discriminators.
    """

    def __init__(self, num_scales: int = 3, width: int = 128) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(use_spectral_norm=(i == 0), width=width)
             for i in range(num_scales)])
        self.meanpools = nn.ModuleList(
            [nn.AvgPool1d(4, 2, padding=2) for _ in range(num_scales - 1)])

    def forward(self, x: torch.Tensor) -> DiscOutput:
        _check_input(x, 1, "MultiScaleDiscriminator")
        logits, feats = [], []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.meanpools[i - 1](x)
            logit, fmap = d(x)
            logits.append(logit)
            feats.append(fmap)
        return logits, feats


class MelGANScaleDiscriminator(nn.Module):
    """One MelGAN discriminator block (Kumar et al., "MelGAN", NeurIPS 2019, §2.2 and Appendix
    A; AERO's ``NLayerDiscriminator``): reflect-pad 7 → k15 conv to ``ndf`` → ``n_layers``
    grouped strided convs (kernel ``10·s+1``, stride ``s``, groups ``c_in/4``, channels ×s up to
    ``ndf·s^(n_layers−1)``) → k5 conv → k3 conv to one logit channel. Weight norm, LeakyReLU 0.2.
    Shape ``x: [B, 1, T]`` → logits ``[B, 1, ~T/s^n_layers]``, ``n_layers + 2`` feature maps.
    """

    def __init__(self, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4) -> None:
        super().__init__()
        s = downsampling_factor
        max_nf = ndf * s ** (n_layers - 1)
        layers: dict[str, nn.Module] = {
            "layer_0": nn.Sequential(nn.ReflectionPad1d(7), weight_norm(nn.Conv1d(1, ndf, 15)),
                                     nn.LeakyReLU(0.2)),
        }
        nf = ndf
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * s, max_nf)
            layers[f"layer_{n}"] = nn.Sequential(
                weight_norm(nn.Conv1d(nf_prev, nf, s * 10 + 1, s, padding=s * 5,
                                      groups=nf_prev // 4)),
                nn.LeakyReLU(0.2))
        nf_out = min(nf * 2, max_nf)
        layers[f"layer_{n_layers + 1}"] = nn.Sequential(
            weight_norm(nn.Conv1d(nf, nf_out, 5, 1, padding=2)), nn.LeakyReLU(0.2))
        layers[f"layer_{n_layers + 2}"] = weight_norm(nn.Conv1d(nf_out, 1, 3, 1, padding=1))
        self.model = nn.ModuleDict(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.model.values():
            x = layer(x)
            feats.append(x)
        return feats[-1], feats[:-1]


class MelGANMultiScaleDiscriminator(nn.Module):
    """MelGAN multi-scale discriminator as AEROMamba trains it (Kumar et al. 2019; AERO's
    ``Discriminator``): ``num_D`` blocks on the signal and on successively
    ``AvgPool1d(4, 2, padding=1, count_include_pad=False)``-downsampled copies.

    Defaults ``num_D 3, ndf 16, n_layers 4, downsampling 4``: channels 16→64→256→1024→1024,
    16,924,086 parameters (the reference's counted figure). AERO's ``weights_init`` (N(0, 0.02)
    on conv weights) writes into the recomputed ``weight`` of its hook-style weight-normed
    convs, which the next forward overwrites, so the effective initialisation is PyTorch's
    default — which is what this module uses. Input ``[B, 1, T]``; ``num_D`` sub-discriminators.
    """

    def __init__(self, num_D: int = 3, ndf: int = 16, n_layers: int = 4,
                 downsampling_factor: int = 4) -> None:
        super().__init__()
        self.model = nn.ModuleDict(
            {f"disc_{i}": MelGANScaleDiscriminator(ndf, n_layers, downsampling_factor)
             for i in range(num_D)})
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> DiscOutput:
        _check_input(x, 1, "MelGANMultiScaleDiscriminator")
        logits, feats = [], []
        for i, d in enumerate(self.model.values()):
            if i:
                x = self.downsample(x)
            logit, fmap = d(x)
            logits.append(logit)
            feats.append(fmap)
        return logits, feats


class FrequencyDiscriminator(nn.Module):
    """One Apollo spectral discriminator: six spectral-normed 3×3 Conv2d (channels
    ``hidden·(1,2,4,8,16,32)``, strides 1,2,1,2,1,2 in both axes) with LeakyReLU 0.2, then a 3×3
    conv to one logit channel (Li & Luo, "Apollo", ICASSP 2025, §2.3; ``frequencydis.py``).
    Shape ``[B, in_channels, F, frames]`` → logits ``[B, 1, ~F/8, ~frames/8]``, 6 feature maps.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 8) -> None:
        super().__init__()
        h = hidden_channels
        chans = [in_channels, h, 2 * h, 4 * h, 8 * h, 16 * h, 32 * h]
        blocks: list[nn.Module] = [
            nn.Sequential(spectral_norm(nn.Conv2d(ci, co, 3, stride=1 + (i % 2), padding=1)),
                          nn.LeakyReLU(0.2))
            for i, (ci, co) in enumerate(zip(chans[:-1], chans[1:]))]
        blocks.append(nn.Conv2d(chans[-1], 1, 3, padding=1))
        self.discriminator = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.discriminator:
            x = block(x)
            feats.append(x)
        return feats[-1], feats[:-1]


class MultiFrequencyDiscriminator(nn.Module):
    """Apollo's multi-frequency discriminator (Li & Luo, ICASSP 2025; official
    ``MultiFrequencyDiscriminator(nch=2, window=[32, …, 2048])``).

    The batch is power-normalised per example (``x / sqrt(Σ_{c,t} x² + eps)``), then for each
    window length ``w`` a centred STFT (Hann(w), hop ``w/2``, reflect padding) gives the real and
    imaginary parts of every channel, stacked ``[re_0, im_0, re_1, im_1, …]`` into
    ``2·channels`` input planes ``[B, 2C, w/2+1, frames]`` of a :class:`FrequencyDiscriminator`.
    Default (stereo, 7 windows, hidden 8): 2,771,503 parameters, the reference's counted figure.
    Input ``[B, channels, T]``; one sub-discriminator per window.
    """

    def __init__(self, channels: int = 2, windows: tp.Sequence[int] = APOLLO_WINDOWS,
                 hidden_channels: int = 8) -> None:
        super().__init__()
        self.channels = channels
        self.windows = tuple(windows)
        self.eps = torch.finfo(torch.float32).eps
        self.discriminators = nn.ModuleList(
            [FrequencyDiscriminator(2 * channels, hidden_channels) for _ in self.windows])

    def forward(self, x: torch.Tensor) -> DiscOutput:
        _check_input(x, self.channels, "MultiFrequencyDiscriminator")
        b, c, t = x.shape
        x = x / (x.pow(2).sum((1, 2), keepdim=True) + self.eps).sqrt()
        flat = x.reshape(b * c, t).float()
        logits, feats = [], []
        for win, d in zip(self.windows, self.discriminators):
            spec = torch.stft(flat, win, win // 2, window=torch.hann_window(win, device=x.device),
                              center=True, pad_mode="reflect", return_complex=True)
            planes = torch.stack([spec.real, spec.imag], dim=1)  # [B·C, 2, F, frames]
            planes = planes.reshape(b, 2 * c, *planes.shape[-2:]).to(x.dtype)
            logit, fmap = d(planes)
            logits.append(logit)
            feats.append(fmap)
        return logits, feats


class PatchDiscriminator(nn.Module):
    """The PatchGAN image discriminator of pix2pix (Isola et al., CVPR 2017) as LDM's
    ``NLayerDiscriminator`` trains the AutoencoderKL (Rombach et al., 2022; AudioLDM/AudioSR's
    mel VAE): conv 4×4 stride 2 + LeakyReLU 0.2, ``n_layers − 1`` × (conv stride 2, BatchNorm,
    LeakyReLU) with widths ``ndf · min(2ⁿ, 8)``, one more at stride 1, then a 4×4 conv to one
    logit channel; convolutions N(0, 0.02), BatchNorm weights N(1, 0.02) (LDM's
    ``weights_init``). Input: an image batch ``x: [B, in_channels, H, W]`` (a mel:
    ``[B, 1, frames, mels]``), not a waveform. Returns one logit map and the activations after
    every LeakyReLU, as the waveform discriminators here do."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1 (got {n_layers})")
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 1),
                                                 nn.LeakyReLU(0.2))]
        prev = 1
        for n in range(1, n_layers + 1):
            mult = min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(nn.Sequential(
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)))
            prev = mult
        self.layers = nn.ModuleList(layers)
        self.conv_post = nn.Conv2d(ndf * prev, 1, 4, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> DiscOutput:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchDiscriminator expects an image batch "
                             f"[B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return [self.conv_post(x)], [feats]
