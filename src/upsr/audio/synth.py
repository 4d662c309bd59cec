"""Synthetic test and demo signals (numpy only, deterministic from a seed).

upsr ships no audio: tests, benchmarks and ``upsr example`` make what they need here.
All functions return float32 arrays ``[channels, frames]`` (or ``[frames]`` where noted).
"""

from __future__ import annotations

import numpy as np


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def brickwall(x: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """Remove everything above ``cutoff_hz`` with an FFT brick wall (last axis is time)."""
    spec = np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sr)
    spec[..., freqs > cutoff_hz] = 0.0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1).astype(np.float32)


def tilted_noise(seconds: float, sr: int, channels: int = 1, slope_db_per_octave: float = -3.0,
                 seed: int | np.random.Generator | None = 0, peak: float = 0.5) -> np.ndarray:
    """Gaussian noise whose spectrum falls by ``slope_db_per_octave`` (pink-ish by default)."""
    n = int(round(seconds * sr))
    rng = _rng(seed)
    white = rng.standard_normal((channels, n))
    spec = np.fft.rfft(white, axis=-1)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    gain = np.ones_like(freqs)
    nz = freqs > 0
    gain[nz] = (np.maximum(freqs[nz], 20.0) / 1000.0) ** (slope_db_per_octave / (20 * np.log10(2)))
    gain[~nz] = 0.0
    y = np.fft.irfft(spec * gain, n=n, axis=-1)
    return (peak * y / (np.max(np.abs(y)) + 1e-12)).astype(np.float32)


def harmonic_tone(seconds: float, sr: int, f0_hz: float = 220.0, n_harmonics: int | None = None,
                  rolloff_db_per_harmonic: float = 0.5, peak: float = 0.5) -> np.ndarray:
    """A static harmonic tone ``[frames]`` with harmonics up to Nyquist (gently falling)."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    top = int((sr / 2 - 1) // f0_hz) if n_harmonics is None else n_harmonics
    y = np.zeros(n)
    for k in range(1, top + 1):
        if k * f0_hz >= sr / 2:
            break
        amp = 10 ** (-rolloff_db_per_harmonic * (k - 1) / 20)
        y += amp * np.sin(2 * np.pi * k * f0_hz * t + 0.7 * k)
    return (peak * y / (np.max(np.abs(y)) + 1e-12)).astype(np.float32)


def music_like(seconds: float, sr: int, channels: int = 2,
               seed: int | np.random.Generator | None = 0, peak: float = 0.6) -> np.ndarray:
    """Notes with decaying harmonics over soft tilted noise; channels differ slightly.

    Full band up to Nyquist, so band-limiting it gives a known cutoff.
    """
    rng = _rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    out = np.zeros((channels, n))
    note_len = max(int(0.25 * sr), 1)
    for start in range(0, n, note_len):
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        seg = slice(start, min(start + note_len, n))
        tt = t[seg] - t[start]
        env = np.exp(-tt * rng.uniform(3, 8))
        for ch in range(channels):
            pan = 1.0 - 0.3 * ch / max(channels - 1, 1)
            k = 1
            while k * f0 < sr / 2:
                amp = pan * (1.0 / k) ** 0.7
                phase = rng.uniform(0, 2 * np.pi)
                out[ch, seg] += amp * env * np.sin(2 * np.pi * k * f0 * tt + phase)
                k += 1
    out += 0.05 * tilted_noise(seconds, sr, channels, -2.0, rng, peak=1.0)[:, :n]
    return (peak * out / (np.max(np.abs(out)) + 1e-12)).astype(np.float32)
