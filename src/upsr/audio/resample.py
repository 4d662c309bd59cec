"""Sample-rate conversion with libsoxr (``soxr``), one-shot and streaming.

Both paths produce exactly ``out_frames(T, sr_in, sr_out) = round(T * sr_out / sr_in)`` frames
(half rounds up), so a file resampled in blocks has the same length as one resampled whole, and
a round trip sr -> sr' -> sr returns the original length whenever ``T * sr' / sr`` is whole.
"""

from __future__ import annotations

import numpy as np
import soxr

from upsr.errors import UsageError

QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def out_frames(frames: int, sr_in: int, sr_out: int) -> int:
    """``round(frames * sr_out / sr_in)`` in exact integer arithmetic (halves round up)."""
    return (2 * int(frames) * int(sr_out) + int(sr_in)) // (2 * int(sr_in))


def _check(sr_in: int, sr_out: int, quality: str) -> str:
    if int(sr_in) != sr_in or int(sr_out) != sr_out or sr_in <= 0 or sr_out <= 0:
        raise UsageError(f"sample rates must be positive integers (got {sr_in}, {sr_out})")
    q = str(quality).upper()
    if q not in QUALITIES:
        raise UsageError(f"unknown resampling quality {quality!r}; use one of "
                         f"{', '.join(QUALITIES)}")
    return q


def _float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the time axis (axis 0 here) to ``n``; soxr is usually already exact."""
    if y.shape[0] > n:
        return y[:n]
    if y.shape[0] < n:
        pad = np.zeros((n - y.shape[0],) + y.shape[1:], dtype=y.dtype)
        return np.concatenate([y, pad], axis=0)
    return y


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample ``x`` ``[..., T]`` from ``sr_in`` to ``sr_out`` Hz along the last axis.

    Returns ``[..., out_frames(T, sr_in, sr_out)]``; float32 in gives float32 out, float64
    gives float64 (other dtypes are converted to float32). ``quality`` is soxr's recipe name
    (``"VHQ"`` > ``"HQ"`` > ``"MQ"`` > ``"LQ"`` > ``"QQ"``); equal rates return a copy.
    """
    q = _check(sr_in, sr_out, quality)
    x = _float(x)
    lead, t = x.shape[:-1], x.shape[-1]
    n_out = out_frames(t, sr_in, sr_out)
    if sr_in == sr_out:
        return x.copy()
    if t == 0:
        return np.zeros(lead + (0,), dtype=x.dtype)
    frames_first = np.ascontiguousarray(x.reshape(-1, t).T)  # soxr wants [T, C]
    y = soxr.resample(frames_first, int(sr_in), int(sr_out), quality=q)
    y = _fit(y.reshape(y.shape[0], frames_first.shape[1]), n_out)
    return np.ascontiguousarray(y.T).reshape(lead + (n_out,))


class StreamResampler:
    """Block-wise resampling of ``[C, n]`` blocks whose concatenated output is exact.

    Feed blocks in order with ``process(block)``; pass ``last=True`` with the final block (it
    may be empty) to flush the filter tail. The concatenation of all outputs has exactly
    ``out_frames(total_in, sr_in, sr_out)`` frames and equals :func:`resample` of the whole
    signal up to float rounding (soxr's streaming and one-shot paths share one filter).
    """

    def __init__(self, sr_in: int, sr_out: int, channels: int, quality: str = "HQ",
                 dtype: str = "float32") -> None:
        q = _check(sr_in, sr_out, quality)
        if channels <= 0:
            raise UsageError(f"channels must be > 0 (got {channels})")
        self.sr_in, self.sr_out, self.channels = int(sr_in), int(sr_out), int(channels)
        self.dtype = np.dtype(dtype)
        self.frames_in = 0
        self.frames_out = 0
        self.finished = False
        self._stream = None if sr_in == sr_out else soxr.ResampleStream(
            self.sr_in, self.sr_out, self.channels, dtype=self.dtype.name, quality=q)

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next ``block`` ``[C, n]``; returns ``[C, m]`` (``m`` may be 0)."""
        if self.finished:
            raise UsageError("StreamResampler already received its last block")
        x = np.asarray(block, dtype=self.dtype)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise UsageError(f"block must be [{self.channels}, n]; got {tuple(x.shape)}")
        self.frames_in += x.shape[1]
        if self._stream is None:
            y = x.T.copy()
        else:
            y = self._stream.resample_chunk(np.ascontiguousarray(x.T), last=last)
        if last:
            # soxr already lands on the exact total; padding/trimming here only guards it.
            # (Before the last block soxr holds back its filter delay, so it never overshoots.)
            self.finished = True
            target = out_frames(self.frames_in, self.sr_in, self.sr_out)
            y = _fit(y, max(target - self.frames_out, 0))
        self.frames_out += y.shape[0]
        return np.ascontiguousarray(y.T)
