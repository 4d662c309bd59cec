"""``upsr enhance`` over files and folders: plan outputs, decide per file, run, write, report.

Inputs are read-only. Each output is written through a temporary file in its target folder,
fsynced and renamed, so an interrupted run leaves no partial files and a rerun continues where
it stopped (an existing output counts as done unless ``overwrite``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upsr.errors import AudioError, UpsrError, UsageError
from upsr.infer.engine import EnhanceOptions, Job, Runner, plan_rates, restore_stream, run_jobs

LOSSY = frozenset({"MP3", "OGG", "OPUS", "MPEG"})
EXCERPTS = 24          # analysis reads at most this many excerpts ...
EXCERPT_S = 2.0        # ... of this length, evenly spread (whole file when shorter)


@dataclass(frozen=True)
class BatchOptions:
    """File-level choices of ``upsr enhance`` (engine choices live in EnhanceOptions)."""

    engine: EnhanceOptions = EnhanceOptions()
    format: str | None = None        # "wav" | "flac"; None: follow the input's family
    bit_depth: str | None = None     # "16" | "24" | "32f"; None: follow the input
    overwrite: bool = False
    bitrate_auto: bool = False
    full_band: str = "copy"          # with bitrate_auto: "copy" | "skip" | "process"
    cutoff_hz: float | None = None   # force the cutoff instead of detecting it
    cutoff_method: str = "band_edge"  # known band (edge/codec) | "rolloff" (0.985, AudioSR)
    copy_tags: bool = True
    device: str = "cpu"
    model_overrides: tuple[tuple[str, tp.Any], ...] = ()  # config overrides (--steps, --seed…)
    precision: str = "fp32"          # "auto" | "fp32" | "bf16" (upsr.infer.precision)


@dataclass
class Item:
    """One input file and what happens to it."""

    src: str                  # path, or "-" for stdin
    dst: str                  # path, or "-" for stdout
    status: str = "pending"   # done | exists | copied | skipped-full-band | failed | planned
    cutoff_hz: float | None = None
    bitrate_kbps: float | None = None
    bitrate_source: str | None = None
    codec: str | None = None
    model: str | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0
    sr_in: int | None = None
    sr_out: int | None = None
    subtype: str | None = None
    error: str | None = None
    limiter_events: int = 0    # stretches where the added band was lowered to avoid clipping
    limited_s: float = 0.0     # seconds of output where it was lowered
    _t0: float = field(default=0.0, repr=False)

    def record(self) -> dict[str, tp.Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}
        d["rtf"] = round(self.wall_s / self.audio_s, 4) if self.audio_s else None
        return d


# ------------------------------------------------------------------------------------ planning


def _suffix_for(fmt_in: str | None, want: str | None) -> str:
    if want:
        return "." + want.lower()
    return ".wav" if (fmt_in or "WAV").upper() not in ({"FLAC"} | LOSSY) else ".flac"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan_items(inputs: list[str], out: str, fmt: str | None) -> list[Item]:
    """Map inputs to outputs: a folder input is walked recursively (audio recognised by
    content) and mirrored under ``out``; several inputs each get a subfolder named after them.
    """
    from upsr.audio import io

    if "-" in inputs and len(inputs) > 1:
        raise UsageError("'-' (stdin) cannot be combined with other inputs")
    if out == "-" and (len(inputs) != 1 or Path(inputs[0]).is_dir()):
        raise UsageError("'-o -' (stdout) takes exactly one input file")
    if out == "-" and fmt is None:
        raise UsageError("writing to stdout needs --format wav|flac")
    if inputs == ["-"]:
        return [Item("-", "-" if out == "-" else str(Path(out) / f"stdin{_suffix_for(None, fmt)}"))]
    out_dir = Path(out)
    items: list[Item] = []
    seen: set[str] = set()
    several = len(inputs) > 1
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"{raw}: no such file or folder")
        if p.is_dir():
            base = out_dir / p.resolve().name if several else out_dir
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if out != "-" and _inside(f, out_dir):
                    continue  # never re-read our own outputs
                if f.name.startswith(".upsr-tmp-"):
                    continue
                # an audio suffix claims audio: a broken one is reported, not silently skipped;
                # other files count when libsndfile can open them (content, not name)
                if f.suffix.lower() not in io.AUDIO_EXTENSIONS and not io.is_audio(f):
                    continue
                rel = f.relative_to(p)
                dst = base / rel.parent / (rel.stem + _suffix_for(_format_of(f), fmt))
                items.append(Item(str(f), str(dst)))
        else:
            target = "-" if out == "-" else str(
                out_dir / (p.stem + _suffix_for(_format_of(p), fmt)))
            items.append(Item(str(p), target))
    _keep_apart(items)
    for it in items:
        if it.dst in seen and it.dst != "-":
            raise UsageError(f"two inputs map to the same output {it.dst}; rename one of them")
        seen.add(it.dst)
        if it.dst != "-" and Path(it.dst).resolve() == Path(it.src).resolve():
            raise UsageError(f"{it.src}: output would overwrite the input")
    return items


def _keep_apart(items: list[Item]) -> None:
    """Inputs that would share an output name (``x.flac`` and ``x.mp3`` -> ``x.flac``) keep
    their source extension in it (``x.mp3.flac``); the one whose extension already is the
    output's keeps the plain name. Deterministic: depends only on the set of names."""
    by_dst: dict[str, list[Item]] = {}
    for it in items:
        if it.dst != "-":
            by_dst.setdefault(it.dst, []).append(it)
    for dst, group in by_dst.items():
        if len(group) < 2:
            continue
        out = Path(dst)
        for it in group:
            src = Path(it.src)
            if src.suffix.lower() != out.suffix.lower():
                it.dst = str(out.with_name(src.name + out.suffix))


def _format_of(path: Path) -> str | None:
    from upsr.audio import io

    try:
        return io.info(path).format
    except UpsrError:
        return None


# ------------------------------------------------------------------------------------ deciding


def excerpts(path: str, info: tp.Any) -> list[np.ndarray]:
    """Up to EXCERPTS evenly spread excerpts ``[C, n]`` of EXCERPT_S seconds (the whole file if
    short): enough for a spectrum, bounded for hour-long files. Kept apart, not concatenated:
    the steps at the joins would fill the top of the spectrum and hide a band limit."""
    from upsr.audio import io

    n = int(EXCERPT_S * info.sr)
    if info.frames <= EXCERPTS * n:
        return [io.read(path).samples]
    starts = np.linspace(0, info.frames - n, EXCERPTS).astype(int)
    return [io.read(path, start=int(s), frames=n).samples for s in starts]


def decide(item: Item, path: str, info: tp.Any, opts: BatchOptions) -> None:
    """Fill in cutoff and bitrate of ``path`` (the item's input, or its stdin copy); mark
    full-band files with --bitrate-auto."""
    from upsr.audio import analysis

    x = excerpts(path, info)
    if opts.cutoff_hz is not None:
        item.cutoff_hz = float(opts.cutoff_hz)
    else:
        method: tp.Any = opts.cutoff_method
        item.cutoff_hz = float(analysis.effective_cutoff_hz(x, info.sr, method=method,
                                                                 info=info))
    if opts.bitrate_auto:
        band = analysis.is_band_limited(x, info.sr)
        est = analysis.estimate_bitrate(path, x, info.sr, band=band)
        item.bitrate_kbps, item.bitrate_source, item.codec = est.kbps, est.source, est.codec
        limited = band[0]
        if not limited and opts.full_band != "process":
            item.status = "skipped-full-band" if opts.full_band == "skip" else "copied"


def installed_variants(family: str) -> list[tuple[str, dict[str, float]]]:
    """Installed checkpoints of the system ``family`` that carry variant metadata
    (``bitrate_kbps``/``cutoff_hz``, written by ``models import --variant`` and ``train``)."""
    from upsr import checkpoint, models

    out: list[tuple[str, dict[str, float]]] = []
    for d in models.model_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.safetensors")):
            try:
                meta = checkpoint.read_metadata(f)
            except UpsrError:
                continue
            var = json.loads(meta.get("variant") or "{}")
            if var and models.canonical(meta.get("model", "")) == models.canonical(family):
                out.append((str(f), var))
    return out


def family_ref(model_ref: str, bitrate_auto: bool) -> str:
    """The model to load first: ``model_ref``, except that ``--bitrate-auto`` with a system
    name whose plain checkpoint is not installed, but whose variants are (e.g. only
    ``apollo-64k`` and ``apollo-128k``), uses a variant instead of pulling the plain one."""
    from upsr import models

    if not bitrate_auto or models.looks_like_path(model_ref):
        return model_ref
    try:
        needs = models.spec(model_ref).cls.needs_weights
    except UpsrError:
        return model_ref  # an installed name that is not a system name
    if not needs or models.find_checkpoint(model_ref) is not None:
        return model_ref
    variants = installed_variants(model_ref)
    return variants[0][0] if variants else model_ref


def pick_variant(family_model: tp.Any, family_path: str, item: Item,
                 variants: list[tuple[str, dict[str, float]]] | None = None) -> str:
    """With --bitrate-auto: the installed checkpoint of the model's family trained for the
    nearest bitrate (or, without a bitrate, the nearest cutoff); ``family_path`` otherwise.
    ``family_model``: the loaded model or its system name; ``variants``: from
    :func:`installed_variants` (looked up when None)."""
    name = family_model if isinstance(family_model, str) else family_model.name
    best: tuple[float, str] | None = None
    for path, var in installed_variants(name) if variants is None else variants:
        if item.bitrate_kbps is not None and "bitrate_kbps" in var:
            dist = abs(np.log2(float(var["bitrate_kbps"]) / item.bitrate_kbps))
        elif item.cutoff_hz and "cutoff_hz" in var:
            dist = abs(np.log2(float(var["cutoff_hz"]) / item.cutoff_hz))
        else:
            continue
        if best is None or dist < best[0]:
            best = (dist, path)
    return best[1] if best else family_path


# ------------------------------------------------------------------------------------- running


def _subtype_for(info: tp.Any, fmt: str, bit_depth: str | None) -> str | None:
    if bit_depth:
        return {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}[bit_depth]
    sub = (info.subtype or "").upper()
    if sub in ("PCM_16", "PCM_24", "FLOAT"):
        return "PCM_24" if (sub == "FLOAT" and fmt == "FLAC") else sub
    if sub in ("PCM_U8", "PCM_S8"):
        return "PCM_16"
    return "PCM_24"  # lossy or exotic input: keep the restored detail


def _stdin_to_file(tmpdir: Path) -> str:
    """Spool stdin to a file: decoding, analysis and tags read the input several times, so
    stdin is buffered whole (on disk, not in memory) before any work."""
    import sys

    p = tmpdir / "stdin-audio"
    with open(p, "wb") as fh:
        shutil.copyfileobj(sys.stdin.buffer, fh, 1 << 20)
    if p.stat().st_size == 0:
        raise UsageError("stdin is empty")
    return str(p)


def copy_target(item: Item) -> Path:
    """Where a full-band input is copied: its own file name (and format) in the output folder."""
    return Path(item.dst).with_name(Path(item.src).name)


@dataclass
class Prepared:
    """An item ready to run: its readable source (the input, or stdin's spooled copy) and
    header."""

    item: Item
    src: str
    info: tp.Any


def prepare(item: Item, opts: BatchOptions, tmpdir: Path, act: bool = True
            ) -> Prepared | None:
    """Decide what happens to ``item``: the one code path of both the run and ``--dry-run``.

    Sets ``item.status`` to ``exists`` (its output is there and counts as done), ``copied``
    or ``skipped-full-band`` (``--bitrate-auto`` on a full-band file), ``failed`` (with
    ``item.error``) or ``planned`` (to restore: returns the :class:`Prepared`). With
    ``act=False`` nothing is written (the full-band copy is only planned).
    """
    from upsr.audio import io
    from upsr.audio.quiet import captured

    if item.dst != "-" and Path(item.dst).exists() and not opts.overwrite:
        item.status = "exists"
        return None
    try:
        src = _stdin_to_file(tmpdir) if item.src == "-" else item.src
        with captured(item.src):
            info = io.info(src)
            if info.frames == 0:
                raise AudioError(f"{item.src}: no audio frames")
            item.sr_in, item.audio_s = info.sr, info.duration_s
            decide(item, src, info, opts)
        if item.status == "copied":
            if item.dst == "-":
                raise UsageError("cannot copy a full-band file to stdout (use --full-band "
                                 "process)")
            dst = copy_target(item)
            item.dst = str(dst)
            if dst.exists() and not opts.overwrite:
                item.status = "exists"  # copied by an earlier run
                return None
            if act:
                from upsr.fsutil import atomic_path

                with atomic_path(dst) as t:
                    shutil.copyfile(src, t)
            return None
        if item.status == "skipped-full-band":
            return None
        item.status = "planned"
        return Prepared(item, src, info)
    except UpsrError as exc:
        item.status, item.error = "failed", str(exc)
    except OSError as exc:
        item.status, item.error = "failed", f"{item.src}: {exc.strerror or exc}"
    return None


class _Clock:
    """Per-file wall time: the seconds spent in each file's own steps (decode, resample,
    splice, encode) plus its share of every model call (by the rows it contributed), so files
    restored side by side each get their own time, not the time since the batch began."""

    def __init__(self) -> None:
        self.owner: dict[int, Item] = {}

    def own(self, item: Item, work: list[np.ndarray]) -> None:
        for x in work:
            for ch in range(x.shape[0]):
                self.owner[x[ch].ctypes.data] = item

    def charge(self, rows: list[np.ndarray], seconds: float) -> None:
        if not rows:
            return
        share = seconds / len(rows)
        for r in rows:
            it = self.owner.get(r.ctypes.data)
            if it is not None:
                it.wall_s += share


class _TimedRunner(Runner):
    """A Runner that charges each call's time to the files whose rows it ran."""

    clock: _Clock | None = None

    def __call__(self, rows: list[np.ndarray], *args: tp.Any, **kwargs: tp.Any
                 ) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            return super().__call__(rows, *args, **kwargs)
        finally:
            if self.clock is not None:
                self.clock.charge(rows, time.perf_counter() - t0)

    def run_wave(self, calls: list[tp.Any]) -> list[tp.Any]:
        """Calls side by side: the wave's time is shared by all of their rows."""
        t0 = time.perf_counter()
        try:
            return super().run_wave(calls)
        finally:
            if self.clock is not None:
                self.clock.charge([r for c in calls for r in c[0]], time.perf_counter() - t0)


def _timed(gen: tp.Generator[list[np.ndarray], list[np.ndarray], None], item: Item,
           clock: _Clock) -> tp.Generator[list[np.ndarray], list[np.ndarray], None]:
    """``gen`` with the time spent inside it added to ``item.wall_s``."""
    t0 = time.perf_counter()
    try:
        work = next(gen)
    except StopIteration:
        return
    finally:
        item.wall_s += time.perf_counter() - t0
    try:
        while True:
            clock.own(item, work)
            outs = yield work
            t0 = time.perf_counter()
            try:
                work = gen.send(outs)
            except StopIteration:
                return
            finally:
                item.wall_s += time.perf_counter() - t0
    finally:
        gen.close()


def remove_stale_outputs(items: list[Item]) -> None:
    """Delete the temporary files that killed earlier runs left in the items' output folders
    (one listing per folder)."""
    from upsr.fsutil import remove_stale

    for folder in sorted({str(Path(it.dst).parent) for it in items if it.dst != "-"}):
        remove_stale(folder)


def enhance_files(items: list[Item], model_ref: str, opts: BatchOptions,
                  on_item: tp.Callable[[Item], None] | None = None,
                  progress: tp.Callable[[Item, float], None] | None = None,
                  on_planned: tp.Callable[[list[Item]], None] | None = None,
                  cache: dict[str, tp.Any] | None = None,
                  clean_stale: bool = True) -> list[Item]:
    """Restore every pending item; per-file failures are recorded, the batch goes on.

    ``on_item`` is called when an item reaches its final status; ``progress(item, seconds)``
    with seconds of audio written for that item (as they are written); ``on_planned`` once
    with the items that will be restored, before the first is. ``cache``: loaded models by
    reference, kept across calls (the claim-driven workers of ``upsr.infer.workers`` call
    this once per claimed group, after cleaning each output folder once: ``clean_stale``
    False).
    """
    from upsr import models
    from upsr.infer.parallel import RowPool, open_pool

    loaded: dict[str, tp.Any] = {} if cache is None else cache
    pools: dict[str, RowPool | None] = {}  # row pools by reference (upsr.infer.parallel)

    def get_pool(ref: str) -> RowPool | None:
        if ref not in pools:
            pools[ref] = open_pool(get_model(ref), opts.device)
        return pools[ref]

    def get_model(ref: str) -> tp.Any:
        if ref not in loaded:
            m = models.load_model(ref, **dict(opts.model_overrides))
            if opts.device != "cpu":
                m = m.to(opts.device)
            loaded[ref] = m
        return loaded[ref]

    first = family_ref(model_ref, opts.bitrate_auto)
    base = get_model(first)  # fail (or pull) before any work
    variants = installed_variants(base.name) if opts.bitrate_auto else []
    done: list[Item] = []

    def finish(item: Item, status: str, error: str | None = None) -> None:
        item.status, item.error = status, error
        done.append(item)
        if on_item:
            on_item(item)

    if clean_stale:
        remove_stale_outputs(items)
    clock = _Clock()
    try:
        _enhance_all(items, model_ref, opts, first, base, variants, get_model, get_pool,
                     finish, clock, progress, on_planned)
    finally:
        for pool in pools.values():
            if pool is not None:
                pool.close()
    return done


def _enhance_all(items: list[Item], model_ref: str, opts: BatchOptions, first: str,
                 base: tp.Any, variants: list[tuple[str, dict[str, float]]],
                 get_model: tp.Callable[[str], tp.Any], get_pool: tp.Callable[[str], tp.Any],
                 finish: tp.Callable[..., None], clock: _Clock,
                 progress: tp.Callable[[Item, float], None] | None,
                 on_planned: tp.Callable[[list[Item]], None] | None) -> None:
    """The body of :func:`enhance_files`: prepare every item, then run the jobs of each
    model (on its row pool, where it has one)."""
    import tempfile

    from upsr.audio.io import BlockWriter
    from upsr.infer.stream import FileSource

    with tempfile.TemporaryDirectory(prefix="upsr-") as tmp:
        jobs_by_model: dict[str, list[Job]] = {}
        for item in items:
            t0 = time.perf_counter()
            ready = prepare(item, opts, Path(tmp))
            item.wall_s = time.perf_counter() - t0
            if ready is None:
                finish(item, item.status, item.error)
                continue
            try:
                info, src = ready.info, ready.src
                ref = (pick_variant(base, first, item, variants) if opts.bitrate_auto
                       else model_ref)
                model = get_model(ref)
                item.model = ref
                rates = plan_rates(model, info.sr, info.frames, opts.engine.out_sr)
                item.sr_out = rates.final
                fmt = (opts.format or ("flac" if Path(item.dst).suffix == ".flac" else "wav"))
                subtype = _subtype_for(info, fmt.upper(), opts.bit_depth)
                tags: tp.Any = None
                if opts.copy_tags and item.src != "-":
                    from upsr.audio.quiet import captured
                    from upsr.audio.tags import read_tags

                    with captured(item.src):
                        tags = read_tags(src)
                gen = _file_job(FileSource(src, info), model, item, rates.final, fmt, subtype,
                                tags, opts, BlockWriter, progress, get_pool(ref))
                jobs_by_model.setdefault(ref, []).append(
                    Job(item, _timed(gen, item, clock), item.cutoff_hz, rates.model_out))
            except UpsrError as exc:
                finish(item, "failed", str(exc))
            except OSError as exc:
                finish(item, "failed", f"{item.src}: {exc.strerror or exc}")
        if on_planned:
            on_planned([j.key for jobs in jobs_by_model.values() for j in jobs])

        for ref, jobs in jobs_by_model.items():
            model = get_model(ref)
            from upsr.infer.precision import resolve

            runner = _TimedRunner(model, device=opts.device,
                                  precision=resolve(opts.precision, model, opts.device),
                                  pool=get_pool(ref))
            runner.clock = clock

            def on_done(job: Job, exc: BaseException | None) -> None:
                item = job.key
                if exc is None:
                    finish(item, "done")
                else:
                    msg = str(exc) if isinstance(exc, UpsrError) else f"{type(exc).__name__}: {exc}"
                    if not msg.startswith(item.src):
                        msg = f"{item.src}: {msg}"
                    finish(item, "failed", msg)

            run_jobs(jobs, runner, opts.engine.batch_size, on_done=on_done)


def _file_job(source: tp.Any, model: tp.Any, item: Item, sr: int, fmt: str,
              subtype: str | None, tags: tp.Any, opts: BatchOptions, writer_cls: tp.Any,
              progress: tp.Callable[[Item, float], None] | None = None,
              pool: tp.Any = None) -> tp.Generator[list[np.ndarray], list[np.ndarray], None]:
    """A job generator that owns its writer: closing it early removes the temporary file.
    Tags that libsndfile cannot write (cover art, the other comments) are added after the
    output is complete (see :func:`upsr.audio.tags.write_tags`)."""
    if item.dst != "-":
        Path(item.dst).parent.mkdir(parents=True, exist_ok=True)
    from upsr.infer.engine import PCM_CEILING, LimiterStats

    simple = tags.simple() if tags is not None else None
    with writer_cls(item.dst, sr, source.channels, format=fmt.upper(), subtype=subtype,
                    tags=simple or None) as writer:
        # PCM cannot hold more than full scale: lower the added band where it would clip
        pcm = (writer.subtype or "").upper().startswith("PCM") or fmt.upper() == "FLAC"
        engine = dataclasses.replace(opts.engine, ceiling=PCM_CEILING) if pcm else opts.engine
        stats = LimiterStats()
        sink = writer.write
        if progress is not None:
            def sink(block: np.ndarray) -> None:
                writer.write(block)
                progress(item, block.shape[-1] / sr)
        yield from restore_stream(source, model, sink, item.cutoff_hz, engine, stats, pool)
    item.subtype = writer.subtype
    item.limiter_events, item.limited_s = stats.events, round(stats.seconds, 4)
    if tags is not None and item.dst != "-":
        from upsr.audio.tags import write_tags

        write_tags(item.dst, tags)
