"""Mel scale and filterbank against independent scalar formulas; mel spectrogram vs numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from upsr.nn.mel import MelSpectrogram, hz_to_mel, mel_filterbank, mel_to_hz


def _slaney_mel(f: float) -> float:
    # Slaney (1998): 3 mels per 200 Hz below 1 kHz, then 27 mels per factor 6.4.
    if f < 1000.0:
        return 3.0 * f / 200.0
    return 15.0 + 27.0 * math.log(f / 1000.0) / math.log(6.4)


def _slaney_hz(m: float) -> float:
    if m < 15.0:
        return 200.0 * m / 3.0
    return 1000.0 * 6.4 ** ((m - 15.0) / 27.0)


def _htk_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _htk_hz(m: float) -> float:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _naive_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm):
    """One filter, one bin at a time: the triangle through three consecutive mel-spaced corners."""
    to_mel, to_hz = (_htk_mel, _htk_hz) if htk else (_slaney_mel, _slaney_hz)
    lo, hi = to_mel(fmin), to_mel(fmax)
    corners = [to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = corners[m], corners[m + 1], corners[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left < f <= centre:
                w = (f - left) / (centre - left)
            elif centre < f < right:
                w = (right - f) / (right - centre)
            else:
                w = 0.0
            if norm == "slaney":
                w *= 2.0 / (right - left)
            out[m, k] = w
    return out


def test_mel_scale_known_points():
    assert hz_to_mel(0.0) == 0.0
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)  # one factor 6.4 above 1 kHz = 27 mels
    assert hz_to_mel(500.0) == pytest.approx(7.5)
    assert hz_to_mel(700.0, htk=True) == pytest.approx(2595.0 * math.log10(2.0))
    assert mel_to_hz(42.0) == pytest.approx(6400.0)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.0, max_value=96000.0), st.booleans())
def test_mel_scale_round_trip(f, htk):
    assert float(mel_to_hz(hz_to_mel(f, htk), htk)) == pytest.approx(f, rel=1e-12, abs=1e-9)
    ref = _htk_mel(f) if htk else _slaney_mel(f)
    assert float(hz_to_mel(f, htk)) == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax,htk,norm",
    [
        (48000, 1024, 128, 0.0, None, False, "slaney"),
        (22050, 512, 40, 30.0, 8000.0, False, "slaney"),
        (16000, 400, 80, 0.0, None, True, None),
        (44100, 2048, 64, 20.0, 20000.0, True, "slaney"),
    ],
)

def test_filterbank_matches_naive_formula(sr, n_fft, n_mels, fmin, fmax, htk, norm):
    fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm, dtype=np.float64)
    ref = _naive_filterbank(sr, n_fft, n_mels, fmin, sr / 2 if fmax is None else fmax, htk, norm)
    assert fb.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(fb, ref, rtol=1e-9, atol=1e-12)
    assert mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm).dtype == np.float32


def test_slaney_norm_gives_unit_area_triangles():
    # On a fine frequency grid every Slaney-normalised triangle integrates to 1 (in Hz).
    sr, n_fft = 16000, 2**16
    fb = mel_filterbank(sr, n_fft, 40, fmin=100.0, fmax=7000.0, dtype=np.float64)
    area = fb.sum(axis=1) * sr / n_fft
    np.testing.assert_allclose(area, 1.0, rtol=2e-3)


def test_p_norm_rows():
    fb = mel_filterbank(16000, 512, 40, norm=2.0, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(fb, axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(norm="bogus"), dict(fmin=9000.0), dict(n_mels=0)])
def test_filterbank_rejects_bad_arguments(kwargs):
    args = dict(sr=16000, n_fft=512, n_mels=40) | kwargs
    with pytest.raises(ValueError):
        mel_filterbank(**args)


def _numpy_mel(x, sr, n_fft, hop, win, n_mels, center, power):
    x = np.asarray(x, dtype=np.float64)
    if center:
        x = np.pad(x, n_fft // 2, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = hann
    frames = np.stack([x[i:i + n_fft] * window
                       for i in range(0, len(x) - n_fft + 1, hop)], axis=1)
    mag = np.abs(np.fft.rfft(frames, axis=0)) ** power
    fb = mel_filterbank(sr, n_fft, n_mels, dtype=np.float64)
    return fb @ mag


@pytest.mark.parametrize("center,power,win", [(False, 2.0, None), (True, 1.0, 300)])
def test_mel_spectrogram_matches_numpy(center, power, win):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3000)
    n_fft, hop = 512, 128
    mel = MelSpectrogram(16000, n_fft, hop, win, n_mels=40, center=center, power=power)
    out = mel(torch.from_numpy(x)[None, None]).numpy()[0, 0]
    ref = _numpy_mel(x, 16000, n_fft, hop, win or n_fft, 40, center, power)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9 * ref.max())


def test_mel_spectrogram_has_finite_gradient_at_silence():
    x = torch.zeros(1, 2048, requires_grad=True)
    MelSpectrogram(16000, 512, 128, n_mels=20, center=False)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
