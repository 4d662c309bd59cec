"""``upsr probe PATH...``: bandwidth, cutoff, estimated source bitrate/codec and level per file.

Folders are walked recursively (audio suffixes only); files named directly are always probed.
Files longer than a minute are analysed through evenly spaced excerpts (see
:func:`upsr.audio.analysis.probe_file`); the peak is always exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from upsr.cli import _common


def _duration(seconds: float) -> str:
    minutes, sec = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{sec:04.1f}" if hours else f"{minutes}:{sec:04.1f}"


def _khz(hz: float | None) -> str:
    return "-" if hz is None or not math.isfinite(hz) else f"{hz / 1000:.1f}k"


def _db(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "-inf" if math.isinf(value) else f"{value:.1f}"


def source_text(row: dict[str, Any]) -> str:
    """'MP3 128k CBR' (the container names the codec), 'low-pass at 11.0 kHz' (a band limit
    seen in the spectrum: no codec is named, since Vorbis, AAC, resamplers and filters leave
    the same kind of edge) or '-' (full band)."""
    kbps = row["bitrate_kbps"]
    if row["bitrate_source"] == "container":
        parts = [row["codec"] or "?"]
        if kbps:
            parts.append(f"{kbps:.0f}k")
        if row["bitrate_mode"]:
            parts.append(row["bitrate_mode"])
        return " ".join(parts)
    if row["bitrate_source"] == "cutoff":
        edge = row.get("band_edge_hz")
        if edge is None or not math.isfinite(edge):
            return "low-pass"
        return f"low-pass at {edge / 1000:.1f} kHz"
    return "-"


def _probe_stdin() -> dict[str, Any]:
    """Probe audio piped on stdin: spooled to a temporary file, since the analysis reads the
    header, excerpts and blocks separately (and mutagen needs a file)."""
    import os
    import sys
    import tempfile

    from upsr.audio.analysis import probe_file
    from upsr.errors import AudioError

    data = sys.stdin.buffer.read()
    if not data:
        raise AudioError("<stdin>: empty input (0 bytes)")
    fd, name = tempfile.mkstemp(prefix="upsr-probe-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            row = probe_file(name)
        except AudioError as exc:
            raise AudioError(str(exc).replace(name, "<stdin>")) from None
    finally:
        os.unlink(name)
    row["path"] = "-"
    return row


#: Seconds drawn by ``--plot`` (from the middle of longer files).
PLOT_SECONDS = 30.0


def _plots(rows: list[dict[str, Any]], target: Path) -> None:
    """``--plot``: one annotated spectrogram per probed file (stdin excluded)."""
    from upsr.audio import io
    from upsr.errors import UsageError
    from upsr.eval.plots import probe_plot

    rows = [r for r in rows if r["path"] != "-"]
    if len(rows) > 1 and target.suffix.lower() == ".png":
        raise UsageError(f"--plot {target}: several files need a folder, not a PNG path")
    for r in rows:
        out = target if len(rows) == 1 and target.suffix.lower() == ".png" else \
            target / (Path(r["path"]).name + ".png")
        sr, frames = int(r["sr"]), int(round(r["duration_s"] * r["sr"]))
        n = min(frames, int(PLOT_SECONDS * sr))
        start = (frames - n) // 2
        x = io.read(r["path"], start=start, frames=n).samples
        notes = {k: float(v) for k, v in (("band edge", r["band_edge_hz"]),
                                           ("roll-off", r["rolloff_hz"]))
                 if v is not None and math.isfinite(v)}
        span = f", {start / sr:.1f}-{(start + n) / sr:.1f} s" if n < frames else ""
        title = (f"{Path(r['path']).name}{span}: source {source_text(r)}, band-limited "
                 f"{'yes' if r['band_limited'] else 'no'}")
        probe_plot(out, x, sr, notes, title=title)
        _common.log.info("%s: spectrogram in %s", r["path"], out)


def probe(
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH", help="Audio files or folders (recursive); '-' reads stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table.")
                       ] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Draw the spectrogram with band edge, roll-off and source annotated: "
                       "a PNG path for one file, a folder for several.")] = None,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Per file: format, rate, channels, duration, peak, loudness, roll-off, band edge,
    estimated source bitrate/codec, and whether it is band-limited (worth restoring)."""
    _common.setup_logging(quiet, verbose)
    from upsr.audio.analysis import probe_file
    from upsr.audio.quiet import captured
    from upsr.errors import UpsrError
    from upsr.eval.report import audio_files, format_table, json_text

    _common.require_inputs(paths)
    files: list[Path] = []
    failed = 0
    for p in paths:
        if p.is_dir():
            found = audio_files(p)
            if not found:
                _common.log.warning("%s: no audio files", p)
            files.extend(found)
        else:
            files.append(p)
    rows = []
    for f in files:
        try:
            with captured(str(f)):
                rows.append(_probe_stdin() if str(f) == "-" else probe_file(f))
        except UpsrError as exc:
            msg = str(exc)
            if msg.startswith((str(f), "<stdin>")):
                _common.error(msg)
            else:
                _common.file_error(f, msg)
            failed += 1
    if plot is not None and rows:
        _plots(rows, plot)
    if as_json:
        print(json_text(rows), end="")
    elif rows and not quiet:
        headers = ("file", "format", "rate", "ch", "duration", "peak dBFS", "LUFS", "roll-off",
                   "edge", "source", "band-limited")
        body = [(r["path"], r["format"] + (f"/{r['subtype']}" if r["subtype"] else ""),
                 r["sr"], r["channels"], _duration(r["duration_s"]), _db(r["peak_dbfs"]),
                 _db(r["loudness_lufs"]), _khz(r["rolloff_hz"]), _khz(r["band_edge_hz"]),
                 source_text(r), "yes" if r["band_limited"] else "no") for r in rows]
        print(format_table(headers, body, (False, False, True, True, True, True, True, True,
                                           True, False, False)))
    if failed:
        raise typer.Exit(_common.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
