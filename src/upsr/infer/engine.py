"""The restoration engine behind ``upsr enhance`` and ``upsr.enhance_array``.

One file (or array) becomes a generator that yields chunk inputs ``[C, n]`` and receives the
model's outputs, so that a scheduler can batch chunks from several files into one forward pass.
Each generator streams: it reads, resamples and writes block by block and keeps only the spans
the current chunks need, so memory does not grow with file length.

Per file (see DESIGN.md, "Inference engine"):
1. resample to the model's input rate (and, for the low-band splice, to its output rate);
2. chunk with the model's ``context_s`` of real audio each side (``upsr.infer.chunk``);
3. splice the input back below its cutoff (``upsr.audio.spectral.lf_replace``) inside each
   chunk, so the known band is never damaged;
4. cross-fade kept regions and hand finished blocks to a sink (a writer).
"""

from __future__ import annotations

import typing as tp
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

import numpy as np

from upsr.infer.chunk import ChunkPlan, OverlapAdd
from upsr.infer.stream import Rolling, Source, resampled

Work = list[np.ndarray]
FileGen = Generator[Work, Work, None]

LF_N_FFT = 2048


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

    def __post_init__(self) -> None:
        if self.chunk_s <= 0 or self.overlap_s < 0 or self.overlap_s > self.chunk_s:
            raise ValueError("need chunk_s > 0 and 0 <= overlap_s <= chunk_s")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.stereo not in ("independent", "mid-side"):
            raise ValueError("stereo must be 'independent' or 'mid-side'")


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


def plan_rates(model: tp.Any, src_sr: int, src_frames: int, out_sr: int | None = None) -> Rates:
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


def _mid_side(x: np.ndarray) -> np.ndarray:
    return np.stack([(x[0] + x[1]) * 0.5, (x[0] - x[1]) * 0.5]) if x.shape[0] == 2 else x


def _left_right(x: np.ndarray) -> np.ndarray:
    return np.stack([x[0] + x[1], x[0] - x[1]]) if x.shape[0] == 2 else x


def restore_stream(source: Source, model: tp.Any, sink: Callable[[np.ndarray], None],
                   cutoff_hz: float | None, opts: EnhanceOptions) -> FileGen:
    """Generator: yields lists of chunk inputs ``[C, n]``, receives the outputs
    ``[C, n * ratio]``, and calls ``sink`` with finished blocks at the final rate, in order.

    ``cutoff_hz``: the input's cutoff (for the low-band splice and cutoff-aware models); None
    disables the splice.
    """
    from upsr.audio.resample import StreamResampler
    from upsr.audio.spectral import lf_replace

    r = plan_rates(model, source.sr, source.frames, opts.out_sr)
    C = source.channels
    ms = opts.stereo == "mid-side" and C == 2
    fwd = _mid_side if ms else None
    splice = opts.lf_replace and cutoff_hz is not None and cutoff_hz < 0.5 * r.model_out * 0.98
    model_in = Rolling(resampled(source, r.model_in, fwd), C, r.frames_in)
    reference = (model_in if r.ratio == 1 else
                 Rolling(resampled(source, r.model_out, fwd), C, r.frames_out)) if splice else None
    context = float(model.context_s) + (LF_N_FFT * 1.5 / r.model_out if splice else 0.0)
    plan = ChunkPlan.for_rate(r.frames_in, r.model_in, opts.chunk_s, opts.overlap_s, context,
                              align=int(getattr(model, "align", 1)))
    ola = OverlapAdd(C, r.ratio)
    post = StreamResampler(r.model_out, r.final, C) if r.final != r.model_out else None
    written = 0

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
    per_step = max(1, opts.batch_size // C)
    for start in range(0, len(chunks), per_step):
        group = chunks[start:start + per_step]
        outputs = yield [model_in.get(c.lo, c.hi) for c in group]
        for c, y in zip(group, outputs):
            rr = r.ratio
            if y.shape != (C, (c.hi - c.lo) * rr):
                raise RuntimeError(f"{model.name} returned {tuple(y.shape)} for input "
                                   f"{(C, c.hi - c.lo)}")
            if reference is not None:
                ref = reference.get(c.lo * rr, c.hi * rr)
                y = _splice(lf_replace, y, ref, r.model_out, float(cutoff_hz),  # type: ignore
                            opts.transition_hz)
            kept = y[:, (c.keep_lo - c.lo) * rr:(c.keep_hi - c.lo) * rr]
            emit(ola.add(c, kept), last=c is chunks[-1])
        nxt = chunks[start + per_step].lo if start + per_step < len(chunks) else r.frames_in
        model_in.release(nxt)
        if reference is not None and reference is not model_in:
            reference.release(nxt * r.ratio)
    if not chunks:
        emit(np.zeros((C, 0), np.float32), last=True)


def _splice(lf_replace: tp.Callable[..., np.ndarray], y: np.ndarray, ref: np.ndarray, sr: int,
            cutoff_hz: float, transition_hz: float) -> np.ndarray:
    """``lf_replace`` on reflect-padded copies: the splice filter then sees a continuous
    signal at the file edges instead of a cut (which would leak the model's band into the low
    band there). Inside a file the padding falls in the dropped context margin."""
    p = min(LF_N_FFT, y.shape[-1] - 1)
    if p < 1:
        return lf_replace(y, ref, sr, cutoff_hz, transition_hz=transition_hz)
    pad = ((0, 0), (p, p))
    out = lf_replace(np.pad(y, pad, mode="reflect"), np.pad(ref, pad, mode="reflect"), sr,
                     cutoff_hz, transition_hz=transition_hz)
    return out[:, p:-p]


@dataclass
class Runner:
    """Calls the model on batches of rows ``[n]`` of equal length (torch, no grad)."""

    model: tp.Any
    device: str = "cpu"
    autocast: bool = False       # bf16 on CUDA (kept for callers; ``precision`` is general)
    sample_rate: int | None = None
    precision: str = "fp32"      # resolved: "fp32" | "bf16" (upsr.infer.precision)
    calls: int = field(default=0, init=False)

    def __call__(self, rows: list[np.ndarray], cutoffs: list[float | None]) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device)
        kwargs: dict[str, tp.Any] = {}
        if getattr(self.model, "uses_cutoff", False):
            kwargs["cutoff_hz"] = (None if any(c is None for c in cutoffs)
                                   else torch.tensor(cutoffs, dtype=torch.float64))
            kwargs["sample_rate"] = self.sample_rate
        from upsr.infer.precision import autocast

        bf16 = self.precision == "bf16" or (self.autocast and self.device.startswith("cuda"))
        with torch.inference_mode(), autocast("bf16" if bf16 else "fp32", self.device):
            y = self.model.restore(x, **kwargs)
        self.calls += 1
        out = y.float().cpu().numpy()
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(f"{self.model.name} produced NaN/inf")
        return list(out)


@dataclass
class Job:
    """One signal to restore: its generator, its cutoff and a key for error reports."""

    key: tp.Any
    gen: FileGen
    cutoff_hz: float | None
    model_out: int


def run_jobs(jobs: Iterable[Job], runner: Runner, batch_size: int, max_open: int = 8,
             on_done: Callable[[Job, BaseException | None], None] | None = None) -> None:
    """Drive job generators, batching their chunk rows across files by equal length.

    A job whose generator raises is reported to ``on_done(job, exc)`` and dropped; the others go
    on. Ctrl-C closes every open generator (their writers then remove temporary files).
    """
    pending = iter(jobs)
    active: list[tuple[Job, Work]] = []
    exhausted = False

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
            # rows of every active job, grouped by length so each group is one batch
            rows: dict[int, list[tuple[int, int, int]]] = {}
            for j, (_job, work) in enumerate(active):
                for i, x in enumerate(work):
                    for ch in range(x.shape[0]):
                        rows.setdefault(x.shape[-1], []).append((j, i, ch))
            results: list[list[np.ndarray]] = [[np.empty((w.shape[0], 0), np.float32)
                                                for w in work] for _, work in active]
            failed: dict[int, BaseException] = {}
            for _length, items in rows.items():
                for s in range(0, len(items), batch_size):
                    part = [it for it in items[s:s + batch_size] if it[0] not in failed]
                    if not part:
                        continue
                    runner.sample_rate = active[part[0][0]][0].model_out
                    try:
                        outs = runner([active[j][1][i][ch] for j, i, ch in part],
                                      [active[j][0].cutoff_hz for j, _, _ in part])
                    except Exception as exc:
                        for j, _, _ in part:
                            failed[j] = exc
                        continue
                    for (j, i, ch), y in zip(part, outs):
                        res = results[j][i]
                        if res.shape[-1] != y.shape[-1]:
                            res = np.zeros((active[j][1][i].shape[0], y.shape[-1]), np.float32)
                            results[j][i] = res
                        res[ch] = y
            still: list[tuple[Job, Work]] = []
            for j, (job, _work) in enumerate(active):
                if j in failed:
                    job.gen.close()
                    finish(job, failed[j])
                    continue
                try:
                    still.append((job, job.gen.send(results[j])))
                except StopIteration:
                    finish(job, None)
                except Exception as exc:
                    finish(job, exc)
            active = still
            start_more()
    finally:
        for job, _ in active:
            job.gen.close()


def enhance_array(x: np.ndarray, sr: int, model: tp.Any, cutoff_hz: float | None = None,
                  detect_cutoff: bool = True, options: EnhanceOptions | None = None,
                  device: str = "cpu", precision: str = "fp32") -> tuple[np.ndarray, int]:
    """Restore ``x [C, T]`` (or ``[T]``) at ``sr``; returns ``(y [C, T'], output rate)``.

    The same code path as ``upsr enhance`` on a file: chunking, low-band splice, rates.
    ``model``: a loaded model or a name/path for :func:`upsr.load_model`.
    ``cutoff_hz`` None with ``detect_cutoff`` uses the 0.985 roll-off of ``x`` (Nyquist when
    none is found, as AudioSR). ``precision``: ``fp32``, ``bf16`` or ``auto``
    (:mod:`upsr.infer.precision`).
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

        cutoff_hz = analysis.effective_cutoff_hz(arr, sr)  # silence: Nyquist, no splice
    r = plan_rates(model, sr, arr.shape[-1], opts.out_sr)
    pieces: list[np.ndarray] = []
    job = Job("array", restore_stream(ArraySource(arr, sr), model, pieces.append, cutoff_hz,
                                      opts), cutoff_hz, r.model_out)
    errors: list[BaseException] = []
    from upsr.infer.precision import resolve

    run_jobs([job], Runner(model, device=device, precision=resolve(precision, model, device)),
             opts.batch_size,
             on_done=lambda _j, e: errors.append(e) if e else None)
    if errors:
        raise errors[0]
    y = np.concatenate(pieces, axis=-1) if pieces else np.zeros((arr.shape[0], 0), np.float32)
    return (y[0] if mono_in else y), r.final



__all__ = ["EnhanceOptions", "Job", "Runner", "enhance_array", "plan_rates", "restore_stream",
           "run_jobs"]
