"""Mel scale, mel filterbanks and mel spectrograms, without librosa.

The filterbank follows the construction of Slaney's Auditory Toolbox (Slaney 1998, "Auditory
Toolbox, version 2", Interval Research tech. report #1998-010), which is also librosa's
default (``librosa.filters.mel(..., htk=False, norm="slaney")``): triangular filters whose
corners are equally spaced on the mel scale, evaluated at the FFT bin centre frequencies, each
scaled by ``2 / (upper corner - lower corner)`` so that every triangle has unit area in Hz.
The HTK scale (``2595 log10(1 + f/700)``, Young et al., "The HTK Book") is available with
``htk=True``. The training losses (mel L1, auraloss-style mel MR-STFT) and AudioSR use these.
"""

from __future__ import annotations

import typing as tp

import numpy as np
import torch
from torch import nn

# Slaney scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per
# factor 6.4 in frequency), so that 1 kHz sits at 15 mels.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0

Norm = tp.Union[None, str, float]


def hz_to_mel(freq_hz: tp.Any, htk: bool = False) -> np.ndarray:
    """Frequency in Hz → mel (Slaney scale by default, HTK with ``htk=True``); float64 array."""
    f = np.asarray(freq_hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    linear = f / _F_SP
    logpart = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(f >= _MIN_LOG_HZ, logpart, linear)


def mel_to_hz(mel: tp.Any, htk: bool = False) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`; float64 array in Hz."""
    m = np.asarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    linear = _F_SP * m
    logpart = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, logpart, linear)


def mel_filterbank(
    sr: float,
    n_fft: int,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: Norm = "slaney",
    dtype: tp.Any = np.float32,
) -> np.ndarray:
    """Triangular mel filterbank, ``[n_mels, n_fft // 2 + 1]``, to multiply a magnitude or power
    spectrum ``[..., n_fft // 2 + 1, frames]`` from the left.

    Args:
        sr: sample rate in Hz. n_fft: FFT size (the bins are ``k * sr / n_fft``, k = 0..n_fft/2).
        n_mels: number of filters. fmin / fmax: band edges in Hz (``fmax`` None = ``sr / 2``).
        htk: HTK mel formula instead of Slaney's.
        norm: ``"slaney"`` (unit area in Hz), None (peak 1), or a number p (unit p-norm rows).
        dtype: output dtype (float32 like librosa's default).
    """
    if n_fft < 2 or n_mels < 1 or sr <= 0:
        raise ValueError(f"mel_filterbank: need sr > 0, n_fft >= 2, n_mels >= 1 (got {sr}, "
                         f"{n_fft}, {n_mels})")
    fmax = sr / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax:
        raise ValueError(f"mel_filterbank: need 0 <= fmin < fmax (got {fmin}, {fmax})")
    bins_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    # n_mels + 2 corner frequencies: filter m rises from corner m, peaks at m+1, falls to m+2.
    corners = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    widths = np.diff(corners)
    offsets = corners[:, None] - bins_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (corners[2:] - corners[:-2]))[:, None]
    elif norm is not None:
        if isinstance(norm, str) or float(norm) <= 0:
            raise ValueError(f"mel_filterbank: norm must be 'slaney', None or a positive number "
                             f"(got {norm!r})")
        row_norm = np.linalg.norm(weights, ord=float(norm), axis=1, keepdims=True)
        weights = weights / np.where(row_norm > 0, row_norm, 1.0)
    return weights.astype(dtype)


class MelSpectrogram(nn.Module):
    """Mel spectrogram ``fb @ |STFT(x)|**power`` with torch's STFT, differentiable.

    Matches ``librosa.feature.melspectrogram`` for the same arguments (periodic Hann window,
    zero-padded to ``n_fft`` when shorter, ``center`` with reflect padding, Slaney filterbank).

    Shapes: ``x: [..., T]`` (float) → ``[..., n_mels, frames]``; with ``center=False``,
    ``frames = 1 + (T - n_fft) // hop_length``.
    """

    fb: torch.Tensor
    window: torch.Tensor

    def __init__(
        self,
        sr: float,
        n_fft: int,
        hop_length: int,
        win_length: int | None = None,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float | None = None,
        center: bool = True,
        power: float = 2.0,
        htk: bool = False,
        norm: Norm = "slaney",
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = n_fft if win_length is None else win_length
        self.center = center
        self.power = power
        # Kept in float64 and cast per call, so float64 inputs get a float64 computation.
        fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm, dtype=np.float64)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length, dtype=torch.float64),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # no half-precision STFT kernels on every device
        spec = torch.stft(
            x.reshape(-1, x.shape[-1]),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window.to(x.dtype),
            center=self.center,
            pad_mode="reflect",
            return_complex=True,
        )
        if self.power == 2.0:
            # |X|^2 from real and imaginary parts: its gradient is finite even where X = 0.
            mag = spec.real.square() + spec.imag.square()
        else:
            mag = spec.abs().pow(self.power)
        mel = torch.matmul(self.fb.to(mag.dtype), mag)
        return mel.reshape(*lead, mel.shape[-2], mel.shape[-1])
