"""Block sources for the engine: a file or an array, read as consecutive ``[C, n]`` blocks,
optionally resampled on the fly, behind a rolling buffer that serves any span ``[a, b)``."""

from __future__ import annotations

import typing as tp
from collections.abc import Iterator

import numpy as np

BLOCK = 1 << 16


class Source(tp.Protocol):
    sr: int
    channels: int
    frames: int

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]: ...


class ArraySource:
    """An in-memory signal ``x [C, T]`` as a source."""

    def __init__(self, x: np.ndarray, sr: int) -> None:
        self.x = np.asarray(x, dtype=np.float32)
        self.sr, self.channels, self.frames = int(sr), self.x.shape[0], self.x.shape[1]

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        for i in range(0, self.frames, block_frames):
            yield self.x[:, i:i + block_frames]


class FileSource:
    """A file read block by block (never whole): see ``upsr.audio.io.iter_blocks``. Native
    decoder chatter is captured (see :mod:`upsr.audio.quiet`)."""

    def __init__(self, path: str, info: tp.Any) -> None:
        self.path = path
        self.sr, self.channels, self.frames = info.sr, info.channels, info.frames

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        from upsr.audio import io
        from upsr.audio.quiet import captured

        it = io.iter_blocks(self.path, block_frames)
        try:
            while True:
                with captured(self.path):
                    block = next(it, None)
                if block is None:
                    return
                yield block
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


def resampled(source: Source, sr_out: int, transform: tp.Callable[[np.ndarray], np.ndarray]
              | None = None) -> Iterator[np.ndarray]:
    """The source's blocks at ``sr_out`` (exact total length), each passed through ``transform``.
    """
    from upsr.audio.resample import StreamResampler

    rs = StreamResampler(source.sr, sr_out, source.channels) if sr_out != source.sr else None
    it = source.blocks(BLOCK)
    block = next(it, None)
    while block is not None:
        nxt = next(it, None)
        out = block if rs is None else rs.process(block, last=nxt is None)
        if out.shape[-1]:
            yield out if transform is None else transform(out)
        block = nxt
    if rs is not None and not rs.finished:  # an empty source still flushes the resampler
        out = rs.process(np.zeros((source.channels, 0), np.float32), last=True)
        if out.shape[-1]:
            yield out if transform is None else transform(out)


class Rolling:
    """Serves spans ``[a, b)`` of a block stream of known total length; forgets what is past.

    Spans past the end of the stream are zero-padded (the engine asks only within ``total``;
    the padding guards a resampler that ends a sample short).
    """

    def __init__(self, blocks: Iterator[np.ndarray], channels: int, total: int) -> None:
        self._it = blocks
        self.channels, self.total = channels, total
        self._buf = np.zeros((channels, 0), np.float32)
        self._start = 0  # absolute index of _buf[:, 0]
        self._done = False

    def _fill(self, b: int) -> None:
        parts = [self._buf]
        end = self._start + self._buf.shape[-1]
        while end < b and not self._done:
            nxt = next(self._it, None)
            if nxt is None:
                self._done = True
                break
            parts.append(np.asarray(nxt, np.float32))
            end += nxt.shape[-1]
        if len(parts) > 1:
            self._buf = np.concatenate(parts, axis=-1)

    def get(self, a: int, b: int) -> np.ndarray:
        if a < self._start:
            raise ValueError(f"span [{a}, {b}) was already released (buffer starts at "
                             f"{self._start})")
        self._fill(b)
        out = self._buf[:, a - self._start:b - self._start]
        if out.shape[-1] < b - a:
            out = np.pad(out, ((0, 0), (0, b - a - out.shape[-1])))
        return out

    def release(self, before: int) -> None:
        drop = min(max(0, before - self._start), self._buf.shape[-1])
        if drop:
            self._buf = self._buf[:, drop:]
            self._start += drop
