"""Degrade clean audio into (hr, lr) training pairs: arrays first, then whole folders.

Arrays (pure, cheap per segment; reused by the training data code for on-the-fly pairs):

- :func:`degrade_array` draws a pair's parameters from a :class:`~upsr.data.spec.DegradeSpec`
  with a seed and applies them; :func:`apply_params` applies already-drawn ones, in the order
  the spec gives (default: low-pass (zero-phase) -> MP3 round trip (delay-compensated, same
  length) -> resample to the low rate (``round(T * sr_lr / sr_hr)`` frames)); each step runs
  at the rate the previous one left.
- :func:`measure_lag` is the cross-correlation lag between two signals (0 for aligned pairs).
- :func:`pair_seed` derives a pair's seed from (run seed, relative path, segment index), so a
  pair's draws never depend on ``--jobs`` or on the order files are processed in.

Folders (:func:`degrade_tree`, behind ``upsr degrade SRC OUT``): every audio file under SRC
becomes ``OUT/hr/<rel>.<fmt>`` and ``OUT/lr/<rel>.<fmt>`` (``<stem>_0003.<fmt>`` per segment
with ``segment_s``), plus one ``OUT/manifest.jsonl`` line per pair and ``OUT/degrade.json``
holding the settings (a rerun with other settings into the same folder is refused).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upsr.data.spec import STEPS, DegradeSpec, parse_spec
from upsr.errors import UpsrError, UsageError
from upsr.fsutil import TMP_PREFIX, atomic_path, atomic_write_text, remove_stale

log = logging.getLogger("upsr.data.degrade")

#: Largest lag :func:`measure_lag` searches, in seconds (an uncompensated MP3 delay is ~40 ms).
MAX_LAG_S = 0.1
#: Longest excerpt :func:`measure_lag` correlates, in seconds (the lag of a pair is global).
LAG_WINDOW_S = 20.0
FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}
MANIFEST = "manifest.jsonl"
SETTINGS = "degrade.json"


# ------------------------------------------------------------------------------------ arrays


def pair_seed(seed: int, key: str, index: int | None = None) -> int:
    """A 63-bit seed from (run seed, pair key, segment index), stable across runs and machines.

    BLAKE2b rather than ``hash()``: Python salts string hashes per process.
    """
    text = f"{int(seed)}\x00{key}\x00{'' if index is None else int(index)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def apply_params(x: np.ndarray, sr: int, params: tp.Mapping[str, tp.Any]
                 ) -> tuple[np.ndarray, int, dict[str, tp.Any]]:
    """Apply drawn parameters to ``x`` ``[C, T]`` float at ``sr`` Hz.

    Returns ``(y [C, T'], sr', measured)`` where ``T' = round(T * sr' / sr)`` and ``measured``
    holds what the MP3 step measured (``mp3_kbps_measured`` from the encoded size and the
    encoder ``mp3_backend``). Keys of ``params`` are those :meth:`DegradeSpec.draw` makes.
    """
    y = np.asarray(x, dtype=np.float32)
    if y.ndim != 2:
        raise UsageError(f"degrade expects audio [channels, frames]; got shape {y.shape}")
    measured: dict[str, tp.Any] = {}
    sr_out = int(sr)
    for step in params.get("steps") or STEPS:
        if step == "lowpass" and "lowpass_type" in params:
            from upsr.audio.filters import lowpass

            order = params.get("lowpass_order")  # None for boxcar: a brick wall has no order
            y = lowpass(y, sr_out, float(params["lowpass_cutoff_hz"]),
                        kind=params["lowpass_type"], order=1 if order is None else int(order),
                        zero_phase=True)
        elif step == "mp3" and "mp3_kbps" in params:
            from upsr.audio.codecs import mp3_roundtrip

            res = mp3_roundtrip(y, sr_out, int(params["mp3_kbps"]))
            y = np.asarray(res.samples, dtype=np.float32)
            measured["mp3_kbps_measured"] = round(float(res.kbps), 2)
            measured["mp3_backend"] = res.backend
        elif (step == "resample" and "resample_hz" in params
              and int(params["resample_hz"]) != sr_out):
            from upsr.audio.resample import resample

            y = resample(y, sr_out, int(params["resample_hz"]))
            sr_out = int(params["resample_hz"])
    return np.ascontiguousarray(y, dtype=np.float32), sr_out, measured


def degrade_array(x: np.ndarray, sr: int, spec: DegradeSpec | str | tp.Mapping[str, tp.Any],
                  seed: int | np.random.Generator = 0
                  ) -> tuple[np.ndarray, int, dict[str, tp.Any]]:
    """Degrade ``x`` ``[C, T]`` at ``sr`` Hz with parameters drawn from ``spec`` by ``seed``.

    Returns ``(lr [C, round(T * sr_lr / sr)] float32, sr_lr, params)``, ``params`` holding every
    drawn value and what was measured. ``spec`` may be a spec, its string form or a dict;
    ``segment_s`` in it is ignored here (the caller cuts segments). Raises UsageError when a
    possible draw does not fit ``sr`` (a cut-off at or above Nyquist).
    """
    spec = parse_spec(spec)
    spec.check_rate(int(sr))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    params = spec.draw(rng)
    y, sr_out, measured = apply_params(x, sr, params)
    return y, sr_out, {**params, **measured}


def measure_lag(ref: np.ndarray, est: np.ndarray, max_lag: int) -> int:
    """The lag ``L`` (samples, ``|L| <= max_lag``) maximising ``sum_n est[n] * ref[n - L]``.

    Positive ``L`` means ``est`` is late. Inputs ``[C, T]`` or ``[T]`` at the same rate are
    mixed to mono; the cross-correlation is computed by FFT (zero-padded, so not circular).
    Silence (no correlation anywhere) gives 0.
    """
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(est, dtype=np.float64)
    a = a.mean(axis=0) if a.ndim == 2 else a
    b = b.mean(axis=0) if b.ndim == 2 else b
    t = min(a.shape[-1], b.shape[-1])
    a, b = a[:t], b[:t]
    if t == 0:
        return 0
    max_lag = int(min(max_lag, t - 1))
    n = 1 << int(np.ceil(np.log2(2 * t)))
    corr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lags = np.arange(-max_lag, max_lag + 1)
    vals = corr[lags % n]
    if not np.any(np.abs(vals) > 1e-12 * (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300)):
        return 0
    return int(lags[int(np.argmax(vals))])


def pair_lag(hr: np.ndarray, sr_hr: int, lr: np.ndarray, sr_lr: int) -> int:
    """:func:`measure_lag` of ``lr`` against ``hr`` after bringing ``lr`` to ``sr_hr``.

    Correlates at most :data:`LAG_WINDOW_S` seconds from the middle of the pair.
    """
    if sr_lr != sr_hr:
        from upsr.audio.resample import resample

        lr = resample(lr, sr_lr, sr_hr)
    t = min(hr.shape[-1], lr.shape[-1])
    w = min(t, int(LAG_WINDOW_S * sr_hr))
    start = (t - w) // 2
    return measure_lag(hr[..., start:start + w], lr[..., start:start + w],
                       int(MAX_LAG_S * sr_hr))


# ----------------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class TreeOptions:
    """Settings of one ``upsr degrade`` run (what ``degrade.json`` records)."""

    spec: DegradeSpec
    seed: int = 0
    hr_rate: int | None = None     # resample the clean side first (Hz)
    mono: bool = False             # downmix by the mean of the channels
    format: str = "wav"            # "wav" (32-bit float) or "flac" (24-bit PCM)

    def to_dict(self) -> dict[str, tp.Any]:
        return {"spec": self.spec.to_dict(), "seed": self.seed, "hr_rate": self.hr_rate,
                "mono": self.mono, "format": self.format}


@dataclass(frozen=True)
class Pair:
    """One output pair: segment ``index`` (None = whole file) of source ``rel``."""

    rel: str                        # source path relative to SRC, POSIX separators
    index: int | None
    hr: str                         # output paths relative to OUT
    lr: str


@dataclass
class Source:
    path: Path
    rel: str
    pairs: list[Pair] = field(default_factory=list)
    error: str | None = None        # set when the file cannot be planned (bad header, clash)
    note: str | None = None         # harmless remark (shorter than one segment)


@dataclass
class TreeResult:
    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)   # one-line messages
    planned: list[Pair] = field(default_factory=list)  # the pairs that were (or would be) made


def find_sources(src_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Audio files under ``src_dir`` by suffix, sorted by relative path; ``exclude`` skipped.

    Hidden files and upsr's own temporary files are left out.
    """
    from upsr.audio.io import AUDIO_EXTENSIONS

    found = []
    for root, dirs, files in os.walk(src_dir):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (rootp / d).resolve() != exclude))
        for name in files:
            if name.startswith(".") or name.startswith(TMP_PREFIX):
                continue
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append(rootp / name)
    return sorted(found, key=lambda p: p.relative_to(src_dir).as_posix())


def _segment_frames(spec: DegradeSpec, sr: int) -> int | None:
    return None if spec.segment_s is None else max(1, int(round(spec.segment_s * sr)))


def _pair_names(rel: str, n_hr: int, opts: TreeOptions, sr_hr: int) -> list[Pair]:
    stem = Path(rel).with_suffix("").as_posix()
    seg = _segment_frames(opts.spec, sr_hr)
    ext = opts.format
    if seg is None:
        return [Pair(rel, None, f"hr/{stem}.{ext}", f"lr/{stem}.{ext}")]
    return [Pair(rel, i, f"hr/{stem}_{i:04d}.{ext}", f"lr/{stem}_{i:04d}.{ext}")
            for i in range(n_hr // seg)]


def plan_sources(src_dir: Path, paths: list[Path], opts: TreeOptions) -> list[Source]:
    """Read each header and name each source's pairs; header failures and name clashes become
    per-source errors (``a.wav`` and ``a.flac`` would both make ``a.wav``: the later one fails).
    """
    from upsr.audio.io import info
    from upsr.audio.resample import out_frames

    owners: dict[str, str] = {}
    sources = []
    for path in paths:
        rel = path.relative_to(src_dir).as_posix()
        src = Source(path, rel)
        sources.append(src)
        try:
            head = info(path)
        except (UpsrError, OSError) as exc:
            src.error = str(exc)
            continue
        sr_hr = opts.hr_rate or head.sr
        try:
            opts.spec.check_rate(sr_hr)
        except UsageError as exc:
            src.error = f"{path}: {exc}"
            continue
        n_hr = out_frames(head.frames, head.sr, sr_hr)
        pairs = _pair_names(rel, n_hr, opts, sr_hr)
        clash = owners.get(pairs[0].hr) if pairs else None
        if clash is not None:
            src.error = f"{path}: its output {pairs[0].hr} is already made from {clash}"
            continue
        if not pairs:
            src.note = (f"{path}: shorter than one {opts.spec.segment_s:g}-s segment; "
                        f"no pairs")
        for p in pairs:
            owners[p.hr] = rel
        src.pairs = pairs
    return sources


def _zero_peak_timestamp(path: Path) -> None:
    """Zero the creation time libsndfile stamps into a float WAV's ``PEAK`` chunk.

    The chunk (version u32, timestamp u32, then value/position per channel) is the only
    non-deterministic byte range in the WAV files libsndfile writes; without this, two runs
    with the same seed would differ in 4 header bytes.
    """
    with open(path, "r+b") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while True:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8 or chunk[:4] == b"data":
                return
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"PEAK" and size >= 8:
                fh.seek(pos + 12)
                fh.write(b"\0\0\0\0")
                return
            pos += 8 + size + (size & 1)


def _write_audio(path: Path, x: np.ndarray, sr: int, fmt: str, subtype: str) -> None:
    """Write atomically and byte-reproducibly (see :func:`_zero_peak_timestamp`)."""
    from upsr.audio.io import write

    with atomic_path(path) as tmp:
        write(tmp, x, sr, format=fmt, subtype=subtype)
        _zero_peak_timestamp(tmp)


def _to_hr(x: np.ndarray, sr: int, opts: TreeOptions) -> tuple[np.ndarray, int]:
    if opts.mono and x.shape[0] > 1:
        x = x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if opts.hr_rate and opts.hr_rate != sr:
        from upsr.audio.resample import resample

        x = resample(x, sr, opts.hr_rate)
        sr = opts.hr_rate
    return x, sr


def process_source(path: Path, rel: str, out_dir: Path, opts: TreeOptions,
                   todo: tp.Sequence[int | None]) -> tuple[list[dict[str, tp.Any]], str | None]:
    """Make the pairs ``todo`` (segment indices) of one source; returns (records, error).

    The records of pairs finished before an error are still returned (their files are in place).
    Runs in a worker process under ``--jobs``; writes audio files only (never the manifest).
    """
    from upsr.audio.io import read
    from upsr.audio.quiet import captured

    records: list[dict[str, tp.Any]] = []
    try:
        with captured(str(path)):
            audio = read(path)
        hr_all, sr_hr = _to_hr(audio.samples, audio.sr, opts)
        fmt, subtype = FORMATS[opts.format]
        pairs = {p.index: p for p in _pair_names(rel, hr_all.shape[1], opts, sr_hr)}
        seg = _segment_frames(opts.spec, sr_hr)
        for index in todo:
            pair = pairs.get(index)
            if pair is None:  # the header promised more frames than the decoder gave
                continue
            start = 0 if index is None or seg is None else index * seg
            stop = hr_all.shape[1] if index is None or seg is None else start + seg
            hr = np.ascontiguousarray(hr_all[:, start:stop])
            seed = pair_seed(opts.seed, rel, index)
            lr, sr_lr, params = degrade_array(hr, sr_hr, opts.spec, seed)
            lag = pair_lag(hr, sr_hr, lr, sr_lr)
            _write_audio(out_dir / pair.hr, hr, sr_hr, fmt, subtype)
            _write_audio(out_dir / pair.lr, lr, sr_lr, fmt, subtype)
            records.append({
                "source": rel, "segment": index, "start_frame": start, "hr": pair.hr,
                "lr": pair.lr, "source_rate": audio.sr, "hr_rate": sr_hr, "lr_rate": sr_lr,
                "channels": int(hr.shape[0]), "hr_frames": int(hr.shape[1]),
                "lr_frames": int(lr.shape[1]), "params": params, "lag": lag, "seed": seed,
            })
    except (UpsrError, OSError, ValueError) as exc:  # one bad file never stops the batch
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return records, msg if msg.startswith(str(path)) else f"{path}: {msg}"
    return records, None


def _record_line(rec: tp.Mapping[str, tp.Any]) -> str:
    return json.dumps(rec, sort_keys=True, ensure_ascii=False)


def read_manifest(out_dir: Path) -> dict[str, dict[str, tp.Any]]:
    """Records by hr path; lines that do not parse (a crash mid-append) are dropped."""
    records: dict[str, dict[str, tp.Any]] = {}
    path = out_dir / MANIFEST
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("hr"), str):
            records[rec["hr"]] = rec
    return records


def _write_manifest_sorted(out_dir: Path, records: dict[str, dict[str, tp.Any]]) -> None:
    """Rewrite the manifest in hr-path order, only if its bytes would change."""
    text = "".join(_record_line(records[k]) + "\n" for k in sorted(records))
    path = out_dir / MANIFEST
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def _check_settings(out_dir: Path, opts: TreeOptions, dry_run: bool) -> None:
    path = out_dir / SETTINGS
    want = json.dumps(opts.to_dict(), sort_keys=True, indent=1) + "\n"
    if path.is_file():
        have = path.read_text(encoding="utf-8")
        if have != want:
            try:
                old = DegradeSpec.from_dict(json.loads(have).get("spec", {}))
                old_text = f"spec {old or '(none)'}, seed {json.loads(have).get('seed')}"
            except (ValueError, UpsrError, AttributeError):
                old_text = "unreadable settings"
            raise UsageError(f"{out_dir} was made with other settings ({old_text}); "
                             f"use a new output folder")
    elif not dry_run:
        atomic_write_text(path, want)


def degrade_tree(src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 opts: TreeOptions, jobs: int = 1, dry_run: bool = False,
                 on_error: tp.Callable[[str], None] | None = None,
                 on_pair: tp.Callable[[Pair, bool], None] | None = None) -> TreeResult:
    """Build ``out_dir`` from every audio file under ``src_dir``; resumable; never touches SRC.

    A pair is done when its manifest record and both files exist; done pairs are skipped. Audio
    files are written atomically by the workers; only this (parent) process appends manifest
    lines, each after both files of its pair are in place; at the end the manifest is rewritten
    sorted by hr path (only if that changes it), so reruns are byte-identical. ``on_error``
    gets one line per failed source; ``on_pair(pair, done_before)`` reports each planned pair.
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {jobs})")
    if opts.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {opts.format!r})")
    src_res, out_res = src.resolve(), out.resolve()
    if out_res == src_res or src_res.is_relative_to(out_res):
        raise UsageError(f"output folder {out} must not be the source folder or contain it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    _check_settings(out, opts, dry_run)

    result = TreeResult()
    report = on_error or (lambda msg: None)
    from upsr.audio.quiet import captured

    with captured():  # headers of MP3s: decoder chatter only with -v
        sources = plan_sources(src, find_sources(src, exclude=out_res), opts)
    done = read_manifest(out)
    # keep only records whose files are all still there; the rest are redone
    done = {k: r for k, r in done.items()
            if (out / r["hr"]).is_file() and isinstance(r.get("lr"), str)
            and (out / r["lr"]).is_file()}
    work: list[tuple[Source, list[int | None]]] = []
    for s in sources:
        if s.error is not None:
            result.failed.append(s.error)
            report(s.error)
            continue
        if s.note is not None:
            log.warning("%s", s.note)
        todo = []
        for p in s.pairs:
            is_done = p.hr in done
            result.planned.append(p)
            if on_pair is not None:
                on_pair(p, is_done)
            if is_done:
                result.skipped += 1
            else:
                todo.append(p.index)
        if todo:
            work.append((s, todo))
    if dry_run:
        return result

    out.mkdir(parents=True, exist_ok=True)
    for folder, _, _ in os.walk(out):  # temporary files of a killed earlier run
        remove_stale(folder)
    manifest = out / MANIFEST
    if manifest.is_file():  # drop stale or half-written lines before appending
        _write_manifest_sorted(out, done)

    def collect(src_item: Source, records: list[dict[str, tp.Any]], err: str | None) -> None:
        with open(manifest, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(_record_line(rec) + "\n")
                done[rec["hr"]] = rec
            fh.flush()
            os.fsync(fh.fileno())
        result.written += len(records)
        log.info("%s: %d pair(s)", src_item.rel, len(records))
        if err is not None:
            result.failed.append(err)
            report(err)

    if jobs == 1 or len(work) <= 1:
        for s, todo in work:
            collect(s, *process_source(s.path, s.rel, out, opts, todo))
    else:
        with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [(s, pool.submit(process_source, s.path, s.rel, out, opts, todo))
                       for s, todo in work]
            for s, fut in futures:  # in source order, so messages come out deterministically
                try:
                    records, err = fut.result()
                except (OSError, cf.process.BrokenProcessPool) as exc:
                    records, err = [], f"{s.path}: worker failed ({exc})"
                collect(s, records, err)
    _write_manifest_sorted(out, done)
    return result


def spec_from_options(lowpass: str | None, mp3: str | None, resample: str | None,
                      segment: str | None, steps: tp.Sequence[str] = ()) -> DegradeSpec:
    """The spec given by ``upsr degrade``'s flags (UsageError names the bad flag and field);
    ``steps``: the order the flags were given in."""
    from upsr.data.spec import parse_lowpass, parse_mp3, parse_resample, parse_segment

    return DegradeSpec(
        lowpass=parse_lowpass(lowpass) if lowpass is not None else None,
        mp3=parse_mp3(mp3) if mp3 is not None else None,
        resample=parse_resample(resample) if resample is not None else None,
        segment_s=parse_segment(segment) if segment is not None else None,
        steps=tuple(steps),
    )

