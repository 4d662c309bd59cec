"""Context-padded chunking: run a model on pieces of a long signal so that the result equals
whole-signal inference.

Every chunk is run on its kept region plus ``context`` input samples of *real* audio each side
(fewer only where the signal ends), the margins are dropped from the output, and neighbouring
kept regions overlap by ``overlap`` samples that are cross-faded with linear weights summing to
one. If ``context`` covers the model's receptive field, the kept centre is what whole-signal
inference gives, so there are no seams to hide; the cross-fade only absorbs the last rounding
differences. This fixes the upstream seam bugs (Apollo#43, AEROMamba's naive joins) at the root.

Unlike a reflect pad, the chunk that touches a file edge sees that edge exactly as whole-signal
inference does, so chunked and whole results agree there too.

All positions here are in model-input samples; ``ratio`` (an integer) maps them to output
samples (4 for AEROMamba's 11.025 → 44.1 kHz, 1 for the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One model call: input ``[lo, hi)`` is run, output for kept ``[keep_lo, keep_hi)`` kept."""

    index: int
    lo: int
    hi: int
    keep_lo: int
    keep_hi: int
    fade_in: int   # input samples at the start of the kept region that fade in
    fade_out: int  # input samples at the end of the kept region that fade out


@dataclass(frozen=True)
class ChunkPlan:
    """How a signal of ``total`` input samples is cut.

    ``hop``: distance between chunk starts; ``overlap``: cross-fade length; ``context``: extra
    real audio each side; ``align``: every chunk starts at a multiple of it (the model's frame
    hop or total stride, so that its frames/pooling windows fall where they fall in the whole
    signal). A signal no longer than ``hop + overlap`` is one chunk.
    """

    total: int
    hop: int
    overlap: int
    context: int
    align: int = 1

    def __post_init__(self) -> None:
        if (self.total < 0 or self.hop <= 0 or self.overlap < 0 or self.context < 0
                or self.align < 1):
            raise ValueError(f"bad chunk plan {self}")
        if self.overlap > self.hop:
            raise ValueError("overlap must not exceed the hop")

    @classmethod
    def for_rate(cls, total: int, rate: int, chunk_s: float, overlap_s: float,
                 context_s: float, align: int = 1) -> ChunkPlan:
        hop = max(1, int(round(chunk_s * rate)))
        overlap = min(hop, max(0, int(round(overlap_s * rate))))
        return cls(total, hop, overlap, max(0, int(math.ceil(context_s * rate))), align)

    def __len__(self) -> int:
        if self.total <= self.hop + self.overlap:
            return 1 if self.total > 0 else 0
        return int(math.ceil((self.total - self.overlap) / self.hop))

    def __iter__(self) -> Iterator[Chunk]:
        n = len(self)
        for i in range(n):
            keep_lo = i * self.hop
            keep_hi = self.total if i == n - 1 else keep_lo + self.hop + self.overlap
            yield Chunk(
                index=i,
                lo=max(0, (keep_lo - self.context) // self.align * self.align),
                hi=min(self.total, keep_hi + self.context),
                keep_lo=keep_lo,
                keep_hi=keep_hi,
                fade_in=0 if i == 0 else self.overlap,
                fade_out=0 if i == n - 1 else self.overlap,
            )


def fade_weights(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    """Weights ``[length]`` for a kept region: linear ramps whose pairs sum to exactly one.

    The ramp for ``k`` of ``m`` overlapping samples is ``(k + 0.5) / m``; the neighbour's ramp
    down is ``1 - that``, so every output sample's weights sum to one.
    """
    w = np.ones(length, dtype=np.float64)
    if fade_in:
        w[:fade_in] = (np.arange(fade_in) + 0.5) / fade_in
    if fade_out:
        w[length - fade_out:] *= 1.0 - (np.arange(fade_out) + 0.5) / fade_out
    return w


class OverlapAdd:
    """Accumulates kept, weighted chunk outputs and releases finished output samples in order.

    Memory holds only the not-yet-finished tail (at most one overlap), so whole files stream.
    """

    def __init__(self, channels: int, ratio: int = 1) -> None:
        self.ratio = ratio
        self.channels = channels
        self._tail = np.zeros((channels, 0), dtype=np.float64)
        self._tail_start = 0  # output index of _tail[:, 0]

    def add(self, chunk: Chunk, kept: np.ndarray) -> np.ndarray:
        """Add the kept output ``[C, (keep_hi - keep_lo) * ratio]``; return finished samples."""
        r = self.ratio
        start = chunk.keep_lo * r
        w = fade_weights(kept.shape[-1], chunk.fade_in * r, chunk.fade_out * r)
        contrib = kept.astype(np.float64) * w
        end = start + contrib.shape[-1]
        if start < self._tail_start:
            raise ValueError("chunks must be added in order")
        need = end - self._tail_start
        if need > self._tail.shape[-1]:
            pad = np.zeros((self.channels, need - self._tail.shape[-1]))
            self._tail = np.concatenate([self._tail, pad], axis=-1)
        off = start - self._tail_start
        self._tail[:, off:off + contrib.shape[-1]] += contrib
        done_until = end - chunk.fade_out * r  # the faded-out end still waits for a neighbour
        n_done = done_until - self._tail_start
        out = self._tail[:, :n_done]
        self._tail = self._tail[:, n_done:]
        self._tail_start = done_until
        return out.astype(np.float32)


def run_chunked(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, plan: ChunkPlan,
                ratio: int = 1) -> np.ndarray:
    """Apply ``fn: [C, n] -> [C, n * ratio]`` to ``x [C, T]`` chunk by chunk (in memory).

    The streaming engine does the same with bounded memory; this is its reference and the
    library path for arrays.
    """
    if x.shape[-1] != plan.total:
        raise ValueError("plan does not match the signal length")
    ola = OverlapAdd(x.shape[0], ratio)
    pieces = []
    for c in plan:
        y = fn(x[:, c.lo:c.hi])
        if y.shape[-1] != (c.hi - c.lo) * ratio:
            raise ValueError(f"model returned {y.shape[-1]} samples for {c.hi - c.lo} "
                             f"(expected ×{ratio})")
        pieces.append(ola.add(c, y[:, (c.keep_lo - c.lo) * ratio:(c.keep_hi - c.lo) * ratio]))
    if not pieces:
        return np.zeros((x.shape[0], 0), dtype=np.float32)
    return np.concatenate(pieces, axis=-1)
