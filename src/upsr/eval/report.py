"""Scoring trees of files: pairing, per-file metrics, summaries, text tables, CSV and JSON.

Used by ``upsr eval``; the I/O lives here so that :mod:`upsr.eval.metrics` stays pure.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from upsr.errors import AudioError, UsageError

log = logging.getLogger("upsr.eval")

#: Metric columns in report order; the optional ones appear only when asked for.
METRICS = ("lsd", "lsd_hf", "lsd_lf", "si_snr", "snr", "sdr", "pesq", "stoi", "estoi", "visqol")
EXTRAS = ("pesq", "stoi", "estoi", "visqol")
#: Length differences up to this many seconds are silent cropping (codec/resampler padding).
LENGTH_TOLERANCE_S = 0.005


def audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, by suffix), sorted; hidden files and upsr's
    temporary files are skipped. A file given directly is returned as is."""
    from upsr.audio.io import AUDIO_EXTENSIONS
    from upsr.fsutil import TMP_PREFIX

    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith((".", TMP_PREFIX)):
                continue
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def _keyed(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Map 'relative/path/without/suffix' -> file; keys held by several files are ambiguous."""
    files: dict[str, list[Path]] = {}
    for p in audio_files(root):
        key = p.relative_to(root).with_suffix("").as_posix() if root.is_dir() else p.stem
        files.setdefault(key, []).append(p)
    ambiguous = sorted(k for k, v in files.items() if len(v) > 1)
    return {k: v[0] for k, v in files.items() if len(v) == 1}, ambiguous


@dataclass
class Pairing:
    """Reference/estimate pairs keyed by relative path without suffix (``a/b.flac`` pairs with
    ``a/b.wav``), plus what could not be paired."""

    pairs: list[tuple[str, Path, Path]]
    ref_only: list[str] = field(default_factory=list)
    est_only: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)


def pair_files(ref_root: Path, est_root: Path) -> Pairing:
    """Pair two trees (or two files) by relative path ignoring the suffix."""
    ref_root, est_root = Path(ref_root), Path(est_root)
    for root in (ref_root, est_root):
        if not root.exists():
            raise UsageError(f"{root}: no such file or directory")
    if ref_root.is_file() and est_root.is_file():
        return Pairing(pairs=[(ref_root.stem, ref_root, est_root)])
    if ref_root.is_file() != est_root.is_file():
        raise UsageError("give two directories or two files, not one of each")
    refs, amb_r = _keyed(ref_root)
    ests, amb_e = _keyed(est_root)
    ambiguous = sorted(set(amb_r) | set(amb_e))
    pairs = [(k, refs[k], ests[k]) for k in sorted(refs) if k in ests and k not in ambiguous]
    return Pairing(pairs=pairs,
                   ref_only=sorted(k for k in refs if k not in ests and k not in ambiguous),
                   est_only=sorted(k for k in ests if k not in refs and k not in ambiguous),
                   ambiguous=ambiguous)


def align(ref: np.ndarray, ref_sr: int, est: np.ndarray, est_sr: int, name: str = ""
          ) -> tuple[np.ndarray, np.ndarray]:
    """Bring ``est`` ``[C, T']`` to the reference's rate and length.

    The estimate is resampled (soxr HQ) to ``ref_sr``; both are cropped to the shorter
    length, with a warning when they differ by more than :data:`LENGTH_TOLERANCE_S`. Channel
    counts must match (AudioError otherwise).
    """
    from upsr.audio.resample import resample

    if est.shape[0] != ref.shape[0]:
        raise AudioError(f"{name}: channel count differs (reference {ref.shape[0]}, "
                         f"estimate {est.shape[0]})")
    if est_sr != ref_sr:
        est = resample(est, est_sr, ref_sr)
    n = min(ref.shape[-1], est.shape[-1])
    diff = abs(ref.shape[-1] - est.shape[-1]) / ref_sr
    if diff > LENGTH_TOLERANCE_S:
        log.warning("%s: lengths differ by %.1f ms; scoring the first %.3f s", name,
                    1000 * diff, n / ref_sr)
    return ref[:, :n], est[:, :n]


def score_arrays(ref: np.ndarray, est: np.ndarray, sr: int, cutoff_hz: float | None = None,
                 lsd_variant: str = "aero", extras: Sequence[str] = ()) -> dict[str, float]:
    """All metrics for one aligned pair ``[C, T]`` at ``sr`` (mean over channels).

    LSD-HF/LF only with a cutoff strictly inside (0, Nyquist). ``extras``: any of
    :data:`EXTRAS` (need the ``metrics`` extra installed).
    """
    from upsr.eval import metrics as m

    if lsd_variant not in m.LSD_VARIANTS:
        raise UsageError(f"unknown LSD variant {lsd_variant!r}; use one of "
                         f"{', '.join(m.LSD_VARIANTS)}")
    n_fft, hop = m.LSD_VARIANTS[lsd_variant]
    out = {"lsd": m.lsd(ref, est, n_fft, hop)}
    if cutoff_hz is not None and 0 < cutoff_hz < sr / 2:
        out["lsd_hf"] = m.lsd_hf(ref, est, sr, cutoff_hz, n_fft, hop)
        out["lsd_lf"] = m.lsd_lf(ref, est, sr, cutoff_hz, n_fft, hop)
    out["si_snr"] = m.si_snr(ref, est)
    out["snr"] = m.snr(ref, est)
    out["sdr"] = m.sdr(ref, est)
    for name in extras:
        if name not in EXTRAS:
            raise UsageError(f"unknown metric {name!r}; extras are {', '.join(EXTRAS)}")
        try:
            if name == "pesq":
                out["pesq"] = m.pesq_wb(ref, est, sr)
            elif name in ("stoi", "estoi"):
                out[name] = m.stoi(ref, est, sr, extended=name == "estoi")
            else:
                out["visqol"] = m.visqol(ref, est, sr)
        except UsageError:
            raise
        except Exception as exc:  # third-party metric code: e.g. PESQ finds no utterance
            raise AudioError(f"{name} failed: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return out


def lr_cutoff_hz(path: Path) -> float:
    """Cutoff of a degraded input file: its band edge (-70 dB, :func:`band_edge_hz`), at most
    its own Nyquist (a low-rate input such as 11.025 kHz has its cutoff at 5512.5 Hz)."""
    from upsr.audio import io
    from upsr.audio.analysis import band_edge_hz

    audio = io.read(path)
    return band_edge_hz(audio.samples, audio.sr)


def score_files(key: str, ref_path: Path, est_path: Path, cutoff_hz: float | None = None,
                lsd_variant: str = "aero", extras: Sequence[str] = ()) -> dict[str, Any]:
    """One report row: reads both files, aligns them (:func:`align`) and scores them."""
    from upsr.audio import io

    ref = io.read(ref_path)
    est = io.read(est_path)
    r, e = align(ref.samples, ref.sr, est.samples, est.sr, key)
    row: dict[str, Any] = {"file": key, "ref": str(ref_path), "est": str(est_path),
                           "sr": ref.sr, "channels": ref.channels,
                           "seconds": round(r.shape[-1] / ref.sr, 6),
                           "cutoff_hz": None if cutoff_hz is None else round(cutoff_hz, 3)}
    row.update(score_arrays(r, e, ref.sr, cutoff_hz, lsd_variant, extras))
    return row


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    present = {k for row in rows for k in row}
    return [k for k in METRICS if k in present]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, sample standard deviation (0 for one file) and n (files that have the
    metric; LSD-HF/LF need a cutoff)."""
    out: dict[str, dict[str, float]] = {}
    for key in metric_columns(rows):
        vals = np.array([row[key] for row in rows if row.get(key) is not None], dtype=float)
        if vals.size == 0:
            continue
        out[key] = {"mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                    "n": int(vals.size)}
    return out


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 right: Sequence[bool] | None = None) -> str:
    """Plain aligned text table (no colour, no box drawing: greppable, pipe-friendly)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right or [False] * len(headers)
    lines = []
    for r in cells:
        parts = [c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    rows = [(k, _fmt(v["mean"]), _fmt(v["std"]), int(v["n"])) for k, v in summary.items()]
    return format_table(("metric", "mean", "std", "n"), rows, (False, True, True, True))


def per_file_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = metric_columns(rows)
    body = [[r["file"]] + [_fmt(r.get(c)) for c in cols] for r in rows]
    return format_table(["file"] + cols, body, [False] + [True] * len(cols))


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Per-file CSV: identification columns, then the metric columns present."""
    cols = ["file", "ref", "est", "sr", "channels", "seconds", "cutoff_hz"] + metric_columns(rows)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in cols})
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    """Atomic write (temp file beside the target, fsync, rename)."""
    from upsr.fsutil import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj: Any) -> str:
    """JSON with non-finite floats as null (strict JSON has no NaN/Infinity)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v

    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"
