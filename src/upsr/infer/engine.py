"""The restoration engine behind ``upsr enhance`` and ``upsr.enhance_array``.

One file (or array) becomes a generator that yields chunk inputs ``[C, n]`` and receives the
model's outputs, so that a scheduler can batch chunks from several files into one forward pass.
Each generator streams: it reads, resamples and writes block by block and keeps only the spans
the current chunks need, so memory does not grow with file length.

Per file (see DESIGN.md, "Inference engine"):
1. resample to the model's input rate (and, for the low-band splice, to its output rate);
2. chunk with the model's ``context_s`` of real audio each side (``upsr.infer.chunk``);
3. splice the input back below its cutoff (``upsr.audio.spectral.lf_replace``) inside each
   chunk, so the known band is never damaged: the splice's cross-fade starts *at* the cutoff
   (the file's band edge), so everything below it is the input;
4. where ``ceiling`` is set (PCM output), lower the added band only, locally in time, where
   the sum would pass full scale (:func:`limit_added`), counting how often;
5. cross-fade kept regions and hand finished blocks to a sink (a writer).

The model is anything that satisfies :class:`upsr.models.base.Model` (a ``typing.Protocol``).
"""

from __future__ import annotations

import typing as tp
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

import numpy as np

from upsr.infer.chunk import ChunkPlan, OverlapAdd
from upsr.infer.stream import Rolling, Source, resampled

if tp.TYPE_CHECKING:
    from upsr.infer.parallel import RowPool
    from upsr.models.base import Model

Work = list[np.ndarray]
FileGen = Generator[Work, Work, None]


class ChunkInput(np.ndarray):
    """A chunk input ``[C, n]`` that knows ``start``: the index of its first sample in the
    signal at the model's input rate (negative inside a reflected lead-in). Indexing a channel
    keeps it. Models whose class sets ``uses_offsets = True`` get it per row as
    ``restore(x, offsets=[B])`` (MambaWave draws its noise by absolute position with it)."""

    start: int = 0

    def __array_finalize__(self, obj: tp.Any) -> None:
        self.start = getattr(obj, "start", 0)


def _located(x: np.ndarray, start: int) -> np.ndarray:
    y = np.asarray(x).view(ChunkInput)
    y.start = int(start)
    return y

LF_N_FFT = 2048
LIMITER_S = 0.005  # look-ahead (and release) of the added-band limiter
#: The ceiling for PCM output: just under full scale, leaving room for the overshoot of a
#: final resampling (``out_sr``) of the limited signal.
PCM_CEILING = 0.999


@dataclass(frozen=True)
class EnhanceOptions:
    """How to run a model over a signal. Defaults suit every registered model."""

    chunk_s: float = 10.0
    overlap_s: float = 0.25
    batch_size: int = 4          # chunk rows (chunk × channel) per forward pass
    lf_replace: bool = True
    transition_hz: float = 500.0
    stereo: str = "independent"  # or "mid-side"
    out_sr: int | None = None    # resample the model's output to this rate
    ceiling: float | None = None  # PCM output: keep |output| <= this by lowering the added band
    stat_passes: int = 1         # models with global_statistics: statistics passes before output

    def __post_init__(self) -> None:
        if self.chunk_s <= 0 or self.overlap_s < 0 or self.overlap_s > self.chunk_s:
            raise ValueError("need chunk_s > 0 and 0 <= overlap_s <= chunk_s")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.stereo not in ("independent", "mid-side"):
            raise ValueError("stereo must be 'independent' or 'mid-side'")
        if self.ceiling is not None and not 0 < self.ceiling <= 1:
            raise ValueError("ceiling must be in (0, 1]")
        if self.stat_passes < 1:
            raise ValueError("stat_passes must be >= 1")


@dataclass
class LimiterStats:
    """How often the added-band limiter acted on one signal (output samples per channel
    group, at the model's output rate): ``events`` separate stretches, ``samples`` in all;
    ``known_over`` counts samples where the kept band alone passes full scale (the limiter
    cannot help there without touching it, so the writer clips or switches to float)."""

    events: int = 0
    samples: int = 0
    known_over: int = 0
    rate: int = 0
    _open: bool = field(default=False, repr=False)

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


def limit_gain(kept: np.ndarray, added: np.ndarray, ceiling: float, reach: int) -> np.ndarray:
    """Gain ``g [T]`` in [0, 1] for the added band so that ``|kept + g * added| <= ceiling``
    in every channel of ``[C, T]`` wherever ``|kept| <= ceiling``, varying smoothly in time.

    Per sample the largest allowed gain is ``(ceiling - sign(a) k) / |a|`` (clamped to [0, 1],
    minimum over channels, so the stereo image stays). A running minimum over ``±reach``
    samples followed by a moving average over ``±reach`` samples (look-ahead attack and
    release) never exceeds that bound at any sample: every average only sees values that are
    minima over windows containing the sample.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    k = kept.astype(np.float64)
    a = added.astype(np.float64)
    over = np.abs(k + a) > ceiling
    if not over.any():
        return np.ones(k.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        allowed = np.where(over, (ceiling - np.sign(a) * k) / np.abs(a), 1.0)
    need = np.clip(np.nan_to_num(allowed, nan=1.0, posinf=1.0), 0.0, 1.0).min(axis=0)
    width = 2 * reach + 1
    floor = minimum_filter1d(need, width, mode="nearest")
    g = uniform_filter1d(floor, width, mode="nearest")
    return np.minimum(g, need)  # float rounding of the average


def limit_added(kept: np.ndarray, y: np.ndarray, ceiling: float, reach: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(kept + g * (y - kept), g)``: :func:`limit_gain` applied to the synthesised part."""
    added = y.astype(np.float64) - kept
    g = limit_gain(kept, added, ceiling, reach)
    return (kept + g * added).astype(np.float32), g

@dataclass
class Rates:
    """Rates and exact lengths for one signal through one model."""

    src: int
    model_in: int
    model_out: int
    ratio: int
    frames_in: int
    frames_out: int
    final: int
    frames_final: int


def plan_rates(model: Model, src_sr: int, src_frames: int, out_sr: int | None = None) -> Rates:
    from upsr.audio.resample import out_frames
    from upsr.errors import UsageError

    model_out = model.out_rate or max(src_sr, getattr(model, "min_out_rate", 44100))
    model_in = model.in_rate or model_out
    if model_out % model_in:
        raise UsageError(f"{model.name}: output rate {model_out} is not a multiple of its "
                         f"input rate {model_in}")
    final = out_sr or model_out
    frames_out = out_frames(src_frames, src_sr, model_out)
    return Rates(src_sr, model_in, model_out, model_out // model_in,
                 out_frames(src_frames, src_sr, model_in), frames_out, final,
                 out_frames(frames_out, model_out, final))


def fill_native(chunk_s: float, overlap_s: float, context_s: float, rate: int,
                native_s: float | None, align: int = 1) -> float:
    """The kept seconds per chunk for a model that pads its input to multiples of
    ``native_s`` (AudioSR: 5.12 s): the nearest multiple to ``chunk_s`` whose whole input
    (kept + overlap + context both sides, with spare for rounding to samples and for chunk
    starts moved down to a multiple of ``align``) fills it exactly,
    instead of spilling into a mostly padded extra segment. Other models: ``chunk_s``."""
    if not native_s:
        return chunk_s
    k = max(1, round(chunk_s / native_s))
    while True:
        hop = k * native_s - overlap_s - 2 * context_s - (4.0 + align) / rate
        if hop > max(overlap_s, 0.1 * native_s):
            return hop
        k += 1


def _mid_side(x: np.ndarray) -> np.ndarray:
    return np.stack([(x[0] + x[1]) * 0.5, (x[0] - x[1]) * 0.5]) if x.shape[0] == 2 else x


def _left_right(x: np.ndarray) -> np.ndarray:
    return np.stack([x[0] + x[1], x[0] - x[1]]) if x.shape[0] == 2 else x


def _lanes(x: np.ndarray, stereo: bool) -> list[np.ndarray]:
    """Model rows of one chunk ``[C, n]``: each channel (``[n]``) for a mono model; channel
    pairs (``[2, n]``) for a stereo one, a lone channel duplicated into both."""
    if not stereo:
        return [x[c] for c in range(x.shape[0])]
    out = []
    for c in range(0, x.shape[0], 2):
        pair = x[c:c + 2]
        out.append(pair if pair.shape[0] == 2 else np.concatenate([pair, pair]))
    return out


def _unlanes(rows: list[np.ndarray], channels: int, stereo: bool) -> np.ndarray:
    """Inverse of :func:`_lanes`: rows back to ``[C, n]`` (a duplicated channel is the mean
    of the model's two outputs)."""
    if not stereo:
        return np.stack(rows)
    out = []
    for p, y in enumerate(rows):
        if 2 * p + 1 < channels:
            out.extend([y[0], y[1]])
        else:
            out.append(0.5 * (y[0] + y[1]))
    return np.stack(out)


def restore_stream(source: Source, model: Model, sink: Callable[[np.ndarray], None],
                   cutoff_hz: float | None, opts: EnhanceOptions,
                   stats: LimiterStats | None = None, pool: RowPool | None = None) -> FileGen:
    """Generator: yields lists of chunk inputs ``[C, n]``, receives the outputs
    ``[C, n * ratio]``, and calls ``sink`` with finished blocks at the final rate, in order.

    ``cutoff_hz``: the input's cutoff, the edge of the band it really has (for the low-band
    splice and cutoff-aware models); None disables the splice. ``stats`` (when given) counts
    what the added-band limiter did (``opts.ceiling``). ``pool``: the row pool of ``model``
    (:mod:`upsr.infer.parallel`), whose runner gets the rows: each step then yields enough
    rows for its workers (``batch_size`` rows per worker), and the statistics pass and the
    splice run channels side by side on it.
    """
    from upsr.audio.resample import StreamResampler
    from upsr.audio.spectral import lf_replace

    r = plan_rates(model, source.sr, source.frames, opts.out_sr)
    C = source.channels
    ms = opts.stereo == "mid-side" and C == 2

    def over(y: np.ndarray) -> bool:
        """Whether the samples to be written (left/right, also when ``y`` is mid/side) pass
        the ceiling: mid and side are half as loud as a channel that carries them alone."""
        return _peak(_left_right(y) if ms else y) > float(opts.ceiling or 0.0)

    fwd = _mid_side if ms else None
    # the splice's cross-fade starts at the cutoff, so everything below it is the input's
    splice_hz = None if cutoff_hz is None else float(cutoff_hz) + 0.5 * opts.transition_hz
    splice = opts.lf_replace and splice_hz is not None and splice_hz < 0.5 * r.model_out * 0.98
    model_in = Rolling(resampled(source, r.model_in, fwd), C, r.frames_in)
    reference = (model_in if r.ratio == 1 else
                 Rolling(resampled(source, r.model_out, fwd), C, r.frames_out)) if splice else None
    reach = int(round(LIMITER_S * r.model_out)) if opts.ceiling is not None else 0
    context = (float(model.context_s) + (LF_N_FFT * 1.5 / r.model_out if splice else 0.0)
               + 2.0 * reach / r.model_out)
    chunk_s = fill_native(opts.chunk_s, opts.overlap_s, context, r.model_in,
                          getattr(model, "native_s", None), int(getattr(model, "align", 1)))
    plan = ChunkPlan.for_rate(r.frames_in, r.model_in, chunk_s, opts.overlap_s, context,
                              align=int(getattr(model, "align", 1)))
    ola = OverlapAdd(C, r.ratio)
    post = StreamResampler(r.model_out, r.final, C) if r.final != r.model_out else None
    written = 0
    if stats is not None:
        stats.rate = r.model_out

    def emit(block: np.ndarray, last: bool) -> None:
        nonlocal written
        y = _left_right(block) if ms else block
        y = y[:, :max(0, r.frames_out - written)]
        written += y.shape[-1]
        if last and written < r.frames_out:  # ratio rounding can leave a sample or two
            y = np.pad(y, ((0, 0), (0, r.frames_out - written)))
            written = r.frames_out
        if post is not None:
            y = post.process(y.astype(np.float32), last=last)
        if y.shape[-1]:
            sink(y.astype(np.float32, copy=False))

    chunks = list(plan)
    row_stats = None
    if getattr(model, "global_statistics", False) and chunks and not _whole_signal(chunks, r):
        # the same kept regions (the same partition of the frames), less context
        stat_plan = ChunkPlan.for_rate(r.frames_in, r.model_in, chunk_s, opts.overlap_s,
                                       min(float(model.context_s), STATS_CONTEXT_S),
                                       align=int(getattr(model, "align", 1)))
        row_stats = _statistics_passes(model, source, r, fwd, C, list(stat_plan),
                                       opts.stat_passes, opts.batch_size, pool)
    workers = pool.workers if pool is not None else 1
    per_step = max(1, opts.batch_size * workers // C)
    for start in range(0, len(chunks), per_step):
        group = chunks[start:start + per_step]
        work = Rows(_located(model_in.get(c.lo, c.hi), c.lo) for c in group)
        work.stats = row_stats
        outputs = yield work
        rr = r.ratio
        for c, y in zip(group, outputs):
            if y.shape != (C, (c.hi - c.lo) * rr):
                raise RuntimeError(f"{model.name} returned {tuple(y.shape)} for input "
                                   f"{(C, c.hi - c.lo)}")
        refs: list[np.ndarray] = []
        if reference is not None:
            refs = [reference.get(c.lo * rr, c.hi * rr) for c in group]
            outputs = _splice_all(lf_replace, list(outputs), refs, r.model_out,
                                  float(splice_hz), opts.transition_hz, pool)  # type: ignore
        for n, (c, y) in enumerate(zip(group, outputs)):
            kept_band: np.ndarray | None = None
            if reference is not None:
                ref = refs[n]
                if opts.ceiling is not None and over(y):
                    kept_band = _splice(lf_replace, np.zeros_like(ref), ref, r.model_out,
                                        float(splice_hz), opts.transition_hz)  # type: ignore
            if opts.ceiling is not None and over(y):
                if kept_band is not None:
                    k = kept_band
                elif r.ratio == 1:  # no splice: all of the input is known, the rest added
                    k = model_in.get(c.lo, c.hi).astype(np.float64)
                else:
                    k = np.zeros_like(y)
                if ms:  # limit what is written (left/right), not mid/side
                    y, k = _left_right(y), _left_right(k)
                y, g = limit_added(k, y, opts.ceiling, reach)
                if ms:
                    y = _mid_side(y)
                if stats is not None:
                    _count(stats, g, k, opts.ceiling, (c.keep_lo - c.lo) * rr,
                           (c.keep_hi - c.fade_out - c.lo) * rr)
            elif stats is not None:
                stats._open = False
            kept = y[:, (c.keep_lo - c.lo) * rr:(c.keep_hi - c.lo) * rr]
            emit(ola.add(c, kept), last=c is chunks[-1])
        nxt = chunks[start + per_step].lo if start + per_step < len(chunks) else r.frames_in
        model_in.release(nxt)
        if reference is not None and reference is not model_in:
            reference.release(nxt * r.ratio)
    if not chunks:
        emit(np.zeros((C, 0), np.float32), last=True)


class Rows(list):  # type: ignore[type-arg]
    """The chunk inputs a job yields; ``stats`` (per channel) are the whole-signal
    normalisation statistics for a model with ``global_statistics`` (None otherwise)."""

    stats: list[tp.Any] | None = None


#: Context (seconds each side) of the chunks of the statistics pass, at most: the statistics
#: are sums over every kept frame of a chunk, so the few frames near its edges whose receptive
#: field a shorter context cuts move them in proportion to their share, far below what the
#: pass's own approximation (each chunk normalised by its own statistics) leaves. Measured
#: (benchmarks/enhance.py's 11 k-parameter AEROMamba, Mamba running, 30 s with a level change,
#: 10 s chunks): chunked against whole-signal output 1.118e-6 relative L2 with the full 2.0 s,
#: 1.119e-6 / 1.121e-6 / 1.125e-6 with 1.0 / 0.5 / 0.25 s, at 8 % less CPU time per file.
#: The splice's and limiter's margins never count here (the pass runs only the model).
STATS_CONTEXT_S = 0.5


#: Shortest signal (seconds at the model's input rate) that :func:`_whole_signal` trusts to
#: be normalised by its own statistics exactly as a statistics pass would: below it a model may
#: pad its input internally (AEROMamba pads to 320 samples, 29 ms), and a pass counts only the
#: signal's frames while the plain call also counts the padding's.
WHOLE_STATS_MIN_S = 1.0


def _whole_signal(chunks: list[tp.Any], r: Rates) -> bool:
    """Whether the statistics pass is provably unnecessary: the signal is one chunk whose
    model input is the whole signal (``[0, frames_in)``, no context beyond its ends) and at
    least :data:`WHOLE_STATS_MIN_S` long. The pass would then run that same input, with its
    own statistics, and sum over every frame of it (kept region ``[0, frames_in)``, last
    chunk: every frame to the end), i.e. reproduce the statistics the plain call computes
    itself (in float64 instead of float32: the outputs agree to float rounding, and the plain
    call *is* whole-signal inference). Further passes start from those and repeat them."""
    if len(chunks) != 1:
        return False
    c = chunks[0]
    return (c.lo == 0 and c.hi == r.frames_in and c.keep_lo == 0 and c.keep_hi == r.frames_in
            and r.frames_in >= WHOLE_STATS_MIN_S * r.model_in)


def _statistics_passes(model: tp.Any, source: Source, r: Rates,
                       fwd: Callable[[np.ndarray], np.ndarray] | None, C: int,
                       chunks: list[tp.Any], passes: int, rows: int | None = None,
                       pool: RowPool | None = None) -> list[tp.Any]:
    """Two-pass inference for models that normalise by whole-signal statistics (AEROMamba):
    run every chunk, channel by channel as rows, and sum each normalisation's statistics over
    the chunk's share of the signal (its kept region up to where the next one takes over);
    each further pass repeats that with the previous pass's statistics frozen. Returns one
    statistics object per channel for :meth:`use_statistics` in the output pass.

    ``rows``: channels per model call (default all ``C``); each row's statistics are its own,
    so calls of fewer rows give the same statistics with a smaller peak of activations (the
    output pass's ``batch_size`` caps them: 1 on CPU in ``upsr enhance``). ``pool``: a row
    pool of ``model`` (:mod:`upsr.infer.parallel`) on whose replicas the groups of channels
    of each chunk run side by side (each group's sums are added in chunk order as without)."""
    import torch

    try:
        device = next(iter(model.parameters())).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    step = max(1, min(C, rows or C))
    groups = [(g, min(C, g + step)) for g in range(0, C, step)]
    frozen = None
    for _ in range(passes):
        src = Rolling(resampled(source, r.model_in, fwd), C, r.frames_in)
        acc: list[tp.Any] = [None] * len(groups)
        for k, c in enumerate(chunks):
            block = np.ascontiguousarray(src.get(c.lo, c.hi), np.float32)
            keep = (c.keep_lo - c.lo, c.keep_hi - c.fade_out - c.lo)
            last = k == len(chunks) - 1

            def collect(m: tp.Any, i: int, block: np.ndarray = block,
                        keep: tuple[int, int] = keep, last: bool = last,
                        acc: list[tp.Any] = acc, frozen: list[tp.Any] | None = frozen
                        ) -> tp.Any:
                a, b = groups[i]
                x = torch.from_numpy(block[a:b]).to(device)
                return m.collect_statistics(x, keep, last, acc[i],
                                            None if frozen is None else frozen[a:b])

            if pool is None:
                for i in range(len(groups)):
                    acc[i] = collect(model, i)
            else:
                acc[:] = pool.map_or_raise(collect, range(len(groups)))
            if k + 1 < len(chunks):
                src.release(chunks[k + 1].lo)
        frozen = [st for part in acc for st in model.finish_statistics(part)]
    return frozen  # type: ignore[return-value]


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def _count(stats: LimiterStats, g: np.ndarray, kept: np.ndarray, ceiling: float, lo: int,
           hi: int) -> None:
    """Add the limiter's action on output samples ``[lo, hi)`` of a chunk (its kept region
    up to where the next chunk takes over, so overlaps are counted once)."""
    acted = g[lo:hi] < 1.0
    stats.samples += int(acted.sum())
    starts = int(np.count_nonzero(acted[1:] & ~acted[:-1]))
    if acted.size and acted[0] and not stats._open:
        starts += 1
    stats.events += starts
    stats._open = bool(acted.size and acted[-1])
    stats.known_over += int(np.count_nonzero(np.abs(kept[:, lo:hi]).max(axis=0) > ceiling))


def _splice_all(lf_replace: tp.Callable[..., np.ndarray], ys: list[np.ndarray],
                refs: list[np.ndarray], sr: int, cutoff_hz: float, transition_hz: float,
                pool: RowPool | None = None) -> list[np.ndarray]:
    """:func:`_splice` of every output ``ys[k] [C, n_k]`` against ``refs[k]``, channel by
    channel, side by side on ``pool`` where there is one (each channel's splice is the same
    computation either way: the results are identical)."""
    tasks = [(k, ch) for k, y in enumerate(ys) for ch in range(y.shape[0])]

    def one(_model: tp.Any, task: tuple[int, int]) -> np.ndarray:
        k, ch = task
        return _splice(lf_replace, ys[k][ch:ch + 1], refs[k][ch:ch + 1], sr, cutoff_hz,
                       transition_hz)

    if pool is None or len(tasks) < 2:
        return [_splice(lf_replace, y, ref, sr, cutoff_hz, transition_hz)
                for y, ref in zip(ys, refs)]
    done = pool.map_or_raise(one, tasks)
    out, at = [], 0
    for y in ys:
        rows = done[at:at + y.shape[0]]
        at += y.shape[0]
        out.append(np.concatenate(rows) if rows else y.copy())
    return out


def _splice(lf_replace: tp.Callable[..., np.ndarray], y: np.ndarray, ref: np.ndarray, sr: int,
            cutoff_hz: float, transition_hz: float) -> np.ndarray:
    """``lf_replace`` on reflect-padded copies: the splice filter then sees a continuous
    signal at the file edges instead of a cut (which would leak the model's band into the low
    band there). Inside a file the padding falls in the dropped context margin. Channel by
    channel (each is filtered on its own): the float64 work arrays of one chunk at the output
    rate then exist for one channel at a time."""
    if y.shape[0] > 1:
        return np.stack([_splice(lf_replace, y[c:c + 1], ref[c:c + 1], sr, cutoff_hz,
                                 transition_hz)[0] for c in range(y.shape[0])])
    p = min(LF_N_FFT, y.shape[-1] - 1)
    if p < 1:
        return lf_replace(y, ref, sr, cutoff_hz, transition_hz=transition_hz)
    pad = ((0, 0), (p, p))
    out = lf_replace(np.pad(y, pad, mode="reflect"), np.pad(ref, pad, mode="reflect"), sr,
                     cutoff_hz, transition_hz=transition_hz)
    return out[:, p:-p]


@dataclass
class Runner:
    """Calls the model on batches of equal-length rows (torch, no grad): ``[n]`` each for a
    mono model, ``[2, n]`` for a stereo one. The model is moved to ``device``. ``pool``: a
    :class:`upsr.infer.parallel.RowPool` of the (moved) model that :meth:`run_wave` runs its
    calls on side by side (None: one after the other, on ``model``)."""

    model: Model
    device: str = "cpu"
    autocast: bool = False       # bf16 on CUDA (kept for callers; ``precision`` is general)
    sample_rate: int | None = None
    precision: str = "fp32"      # resolved: "fp32" | "bf16" (upsr.infer.precision)
    pool: RowPool | None = None
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        to = getattr(self.model, "to", None)
        if callable(to):
            moved = to(self.device)
            if moved is not None:
                self.model = moved

    @property
    def workers(self) -> int:
        """How many calls :meth:`run_wave` runs side by side."""
        return self.pool.workers if self.pool is not None else 1

    def __call__(self, rows: list[np.ndarray], cutoffs: list[float | None],
                 stats: list[tp.Any] | None = None) -> list[np.ndarray]:
        """Outputs per row; FloatingPointError if any output is NaN/inf. ``stats``: per-row
        whole-signal statistics for a model with ``global_statistics``."""
        self.calls += 1
        if self.pool is not None:  # on a worker too: every call at one intra-op thread
            return self.pool.map_or_raise(lambda m, _: self.call(m, rows, cutoffs, stats),
                                          [0])[0]
        return self.call(self.model, rows, cutoffs, stats)

    def run_wave(self, calls: list[tuple[list[np.ndarray], list[float | None],
                                         list[tp.Any] | None]]
                 ) -> list[list[np.ndarray] | BaseException]:
        """Several calls ``(rows, cutoffs, stats)``, side by side on the pool's replicas where
        there is a pool: each call's outputs, or the exception it raised, in order."""
        self.calls += len(calls)
        if self.pool is None:
            out: list[list[np.ndarray] | BaseException] = []
            for c in calls:
                try:
                    out.append(self.call(self.model, *c))
                except Exception as exc:  # noqa: BLE001 - the caller sorts failures out
                    out.append(exc)
            return out
        return self.pool.map(lambda model, c: self.call(model, *c), calls)

    def call(self, model: tp.Any, rows: list[np.ndarray], cutoffs: list[float | None],
             stats: list[tp.Any] | None = None) -> list[np.ndarray]:
        """:meth:`__call__` on ``model`` (this runner's model or a replica of it)."""
        import torch

        x = torch.from_numpy(np.stack([np.asarray(r) for r in rows]).astype(np.float32))
        x = x.to(self.device)
        kwargs: dict[str, tp.Any] = {}
        if getattr(model, "uses_offsets", False):
            kwargs["offsets"] = [int(getattr(r, "start", 0)) for r in rows]
        if getattr(model, "uses_cutoff", False):
            kwargs["cutoff_hz"] = (None if any(c is None for c in cutoffs)
                                   else torch.tensor(cutoffs, dtype=torch.float64))
            kwargs["sample_rate"] = self.sample_rate
        use = getattr(model, "use_statistics", None) if stats else None
        if use is not None:
            use(stats)
        from upsr.infer.precision import autocast

        bf16 = self.precision == "bf16" or (self.autocast and self.device.startswith("cuda"))
        try:
            with torch.inference_mode(), autocast("bf16" if bf16 else "fp32", self.device):
                y = model.restore(x, **kwargs)
        finally:
            if use is not None:
                use(None)
        out = y.float().cpu().numpy()
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(f"{model.name} produced NaN/inf")
        return list(out)


@dataclass
class Job:
    """One signal to restore: its generator, its cutoff and a key for error reports.
    ``model_in``: the rate of the rows it yields (defaults to ``model_out``)."""

    key: tp.Any
    gen: FileGen
    cutoff_hz: float | None
    model_out: int
    model_in: int | None = None

    @property
    def row_rate(self) -> int:
        return self.model_in or self.model_out


Row = tuple[int, int, int, np.ndarray, tp.Any]  # (job, chunk, lane, samples, statistics)


def _run_rows(runner: Runner, part: list[Row], cutoffs: list[float | None], rate: int,
              outs: dict[tuple[int, int, int], np.ndarray],
              failed: dict[int, BaseException]) -> None:
    """One forward pass over ``part``; if it fails and holds rows of several jobs, run again
    job by job, so that only the jobs whose own rows fail land in ``failed``."""
    runner.sample_rate = rate
    stats = [it[4] for it in part]
    try:
        if any(st is not None for st in stats):
            ys = runner([it[3] for it in part], cutoffs, stats)
        else:
            ys = runner([it[3] for it in part], cutoffs)
    except Exception as exc:
        owners = sorted({it[0] for it in part})
        if len(owners) == 1:
            failed[owners[0]] = exc
        else:
            _rerun_by_job(runner, part, cutoffs, owners, rate, outs, failed)
        return
    for (j, i, lane, _, _), y in zip(part, ys):
        outs[(j, i, lane)] = y


def _rerun_by_job(runner: Runner, part: list[Row], cutoffs: list[float | None],
                  owners: list[int], rate: int, outs: dict[tuple[int, int, int], np.ndarray],
                  failed: dict[int, BaseException]) -> None:
    """A failed pass over rows of several jobs (``owners``), run again job by job."""
    for owner in owners:
        mine = [k for k, it in enumerate(part) if it[0] == owner]
        _run_rows(runner, [part[k] for k in mine], [cutoffs[k] for k in mine], rate, outs,
                  failed)


def _run_wave(runner: Runner, parts: list[list[Row]], cutoffs: list[list[float | None]],
              rate: int, outs: dict[tuple[int, int, int], np.ndarray],
              failed: dict[int, BaseException]) -> None:
    """Forward passes over several ``parts`` side by side (:meth:`Runner.run_wave`); a part
    that fails is handled as :func:`_run_rows` handles it (run again job by job where it holds
    rows of several jobs)."""
    runner.sample_rate = rate
    calls: list[tuple[list[np.ndarray], list[float | None], list[tp.Any] | None]] = []
    for part in parts:
        stats = [it[4] for it in part]
        calls.append(([it[3] for it in part], cutoffs[len(calls)],
                      stats if any(st is not None for st in stats) else None))
    for part, cut, result in zip(parts, cutoffs, runner.run_wave(calls)):
        if not isinstance(result, BaseException):
            for (j, i, lane, _, _), y in zip(part, result):
                outs[(j, i, lane)] = y
            continue
        owners = sorted({it[0] for it in part})
        if len(owners) == 1:
            failed.setdefault(owners[0], result)
        else:  # as _run_rows: again, job by job
            _rerun_by_job(runner, part, cut, owners, rate, outs, failed)


def run_jobs(jobs: Iterable[Job], runner: Runner, batch_size: int, max_open: int = 8,
             on_done: Callable[[Job, BaseException | None], None] | None = None) -> None:
    """Drive job generators, batching their chunk rows across files.

    Rows share a forward pass only when everything that changes the computation agrees:
    length, the rate they are at (the runner passes it as ``sample_rate``), and whether a
    cutoff is known (the model's cutoff-aware path); the model is the runner's own. A batch
    that fails (exception, NaN/inf output) is run again file by file, so only the files whose
    own rows fail are dropped. A job whose generator raises is reported to
    ``on_done(job, exc)`` and dropped; the others go on. Ctrl-C closes every open generator
    (their writers then remove temporary files).
    """
    pending = iter(jobs)
    active: list[tuple[Job, Work]] = []
    exhausted = False
    stereo = getattr(runner.model, "channels", "mono") == "stereo"

    def finish(job: Job, exc: BaseException | None) -> None:
        if on_done is not None:
            on_done(job, exc)

    def start_more() -> None:
        nonlocal exhausted
        while not exhausted and len(active) < max_open:
            job = next(pending, None)
            if job is None:
                exhausted = True
                return
            try:
                active.append((job, next(job.gen)))
            except StopIteration:
                finish(job, None)
            except Exception as exc:
                finish(job, exc)

    try:
        start_more()
        while active:
            # rows of every active job, grouped so that each group can share one batch
            rows: dict[tuple[int, int, bool, bool], list[Row]] = {}
            for j, (job, work) in enumerate(active):
                stats = getattr(work, "stats", None)
                for i, x in enumerate(work):
                    # rows with and without whole-signal statistics never share a call
                    key = (x.shape[-1], job.row_rate, job.cutoff_hz is None, stats is None)
                    for lane, row in enumerate(_lanes(x, stereo)):
                        st = stats[lane] if stats is not None else None
                        rows.setdefault(key, []).append((j, i, lane, row, st))
            outs: dict[tuple[int, int, int], np.ndarray] = {}
            failed: dict[int, BaseException] = {}

            for (_length, rate, _none, _no_stats), items in rows.items():
                batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
                wave = runner.workers  # batches run side by side on a row pool
                for w in range(0, len(batches), wave):
                    parts = [p for p in ([it for it in b if it[0] not in failed]
                                         for b in batches[w:w + wave]) if p]
                    if len(parts) == 1:
                        cutoffs = [active[it[0]][0].cutoff_hz for it in parts[0]]
                        _run_rows(runner, parts[0], cutoffs, rate, outs, failed)
                    elif parts:
                        _run_wave(runner, parts, [[active[it[0]][0].cutoff_hz for it in p]
                                                  for p in parts], rate, outs, failed)
            still: list[tuple[Job, Work]] = []
            for j, (job, work) in enumerate(active):
                if j in failed:
                    job.gen.close()
                    finish(job, failed[j])
                    continue
                result = []
                for i, x in enumerate(work):
                    n = len(_lanes(x, stereo))
                    result.append(_unlanes([outs[(j, i, lane)] for lane in range(n)],
                                           x.shape[0], stereo) if n else
                                  np.zeros((x.shape[0], 0), np.float32))
                try:
                    still.append((job, job.gen.send(result)))
                except StopIteration:
                    finish(job, None)
                except Exception as exc:
                    finish(job, exc)
            active = still
            start_more()
    finally:
        for job, _ in active:
            job.gen.close()


def enhance_array(x: np.ndarray, sr: int, model: Model | str, cutoff_hz: float | None = None,
                  detect_cutoff: bool = True, options: EnhanceOptions | None = None,
                  device: str = "cpu", cutoff_method: str = "band_edge",
                  stats: LimiterStats | None = None, precision: str = "fp32",
                  workers: int | None = None) -> tuple[np.ndarray, int]:
    """Restore ``x [C, T]`` (or ``[T]``) at ``sr``; returns ``(y [C, T'], output rate)``.

    The same code path as ``upsr enhance`` on a file: chunking, low-band splice, rates.
    ``model``: a loaded model or a name/path for :func:`upsr.load_model`; it is moved to
    ``device`` (in place, as ``nn.Module.to``). ``cutoff_hz`` None with ``detect_cutoff``
    uses the band ``x`` really has (:func:`upsr.audio.analysis.effective_cutoff_hz` with
    ``cutoff_method``: ``"band_edge"``, the -70 dB edge, or AudioSR's ``"rolloff"``); Nyquist
    (no splice, nothing to add) for silence or full-band input. ``precision``: ``fp32``,
    ``bf16`` or ``auto`` (:mod:`upsr.infer.precision`). ``workers``: rows run side by side
    (:mod:`upsr.infer.parallel`; None: :func:`upsr.infer.parallel.row_workers` decides).
    """
    from upsr.infer.stream import ArraySource

    if isinstance(model, str):
        from upsr.models import load_model

        model = load_model(model)
    opts = options or EnhanceOptions()
    arr = np.asarray(x, dtype=np.float32)
    mono_in = arr.ndim == 1
    if mono_in:
        arr = arr[None]
    if cutoff_hz is None and detect_cutoff and arr.shape[-1]:
        from upsr.audio import analysis

        method: tp.Any = cutoff_method
        cutoff_hz = analysis.effective_cutoff_hz(arr, sr, method=method)
    r = plan_rates(model, sr, arr.shape[-1], opts.out_sr)
    from upsr.infer.parallel import open_pool
    from upsr.infer.precision import resolve

    runner = Runner(model, device=device, precision=resolve(precision, model, device))
    model = runner.model
    runner.pool = open_pool(model, device, workers)
    pieces: list[np.ndarray] = []
    job = Job("array", restore_stream(ArraySource(arr, sr), model, pieces.append, cutoff_hz,
                                      opts, stats, runner.pool), cutoff_hz, r.model_out,
              r.model_in)
    errors: list[BaseException] = []
    try:
        run_jobs([job], runner, opts.batch_size,
                 on_done=lambda _j, e: errors.append(e) if e else None)
    finally:
        if runner.pool is not None:
            runner.pool.close()
    if errors:
        raise errors[0]
    y = np.concatenate(pieces, axis=-1) if pieces else np.zeros((arr.shape[0], 0), np.float32)
    return (y[0] if mono_in else y), r.final


__all__ = ["PCM_CEILING", "EnhanceOptions", "Job", "LimiterStats", "Runner", "enhance_array",
           "limit_added",
           "limit_gain", "plan_rates", "restore_stream", "run_jobs"]
