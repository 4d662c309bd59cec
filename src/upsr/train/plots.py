"""Spectrogram images for validation examples, written as PNG with the standard library only
(no plotting package is a dependency)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from upsr.fsutil import atomic_path


def spectrogram_db(x: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """``x: [T]`` → power in dB ``[n_fft/2 + 1, frames]`` (periodic Hann, un-centred; a
    signal shorter than ``n_fft`` is zero-padded to one frame)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[-1]))
    frames = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.fft.rfft(x[idx] * window, axis=-1)
    return (10 * np.log10(np.maximum(np.abs(spec) ** 2, 1e-12))).T


def _colour(v: np.ndarray) -> np.ndarray:
    """``v`` in [0, 1] → RGB uint8 through a dark-blue → red → yellow → white ramp."""
    stops = np.array([[0, 0, 16], [80, 0, 120], [220, 40, 40], [250, 200, 40], [255, 255, 230]],
                     dtype=np.float64)
    pos = v * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    t = (pos - lo)[..., None]
    return ((1 - t) * stops[lo] + t * stops[lo + 1]).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode ``rgb: [H, W, 3]`` uint8 as a PNG (8-bit truecolour, no filtering)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_spectrograms(path: str | Path, signals: list[np.ndarray], range_db: float = 90.0
                       ) -> Path:
    """Stack the spectrograms of ``signals`` (each ``[T]``, same rate) top to bottom, low
    frequencies at the bottom of each panel, a common colour scale of ``range_db`` below the
    loudest bin; written atomically."""
    specs = [spectrogram_db(s) for s in signals]
    top = max(float(s.max()) for s in specs)
    width = max(s.shape[1] for s in specs)
    panels = []
    for s in specs:
        v = np.clip((s - (top - range_db)) / range_db, 0.0, 1.0)[::-1]
        v = np.pad(v, ((0, 0), (0, width - v.shape[1])))
        panels.append(v)
        panels.append(np.ones((2, width)))
    rgb = _colour(np.concatenate(panels[:-1], axis=0))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(rgb))
    return path
