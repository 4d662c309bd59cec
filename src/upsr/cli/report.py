"""``upsr report merge A.json B.json... -o ALL.json``: combine the ``--report`` files of many
``upsr enhance`` workers (shards, SLURM array tasks, torchrun ranks) into one."""

from __future__ import annotations

import json
import sys
import typing as tp
from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common

# When workers report the same input differently, the record that says what happened to it
# wins: a real outcome over "someone else did it" over "was already there".
RANK = {"done": 0, "copied": 1, "skipped-full-band": 2, "failed": 3, "done-elsewhere": 4,
        "exists": 5}


def merge_reports(reports: list[dict[str, tp.Any]]) -> dict[str, tp.Any]:
    """One report from many: per input file the most informative record (see ``RANK``; a
    later failure never hides a success), the workers listed, and counts per status."""
    best: dict[str, dict[str, tp.Any]] = {}
    models: list[str] = []
    workers: list[dict[str, tp.Any]] = []
    for r in reports:
        if r.get("model") is not None and r["model"] not in models:
            models.append(r["model"])
        if r.get("worker"):
            workers.append(r["worker"])
        for f in r.get("files", []):
            key = str(f.get("src"))
            old = best.get(key)
            if old is None or RANK.get(f.get("status", ""), 9) < RANK.get(old.get("status", ""),
                                                                         9):
                best[key] = f
    files = [best[k] for k in sorted(best)]
    counts: dict[str, int] = {}
    for f in files:
        counts[f.get("status", "?")] = counts.get(f.get("status", "?"), 0) + 1
    audio = sum(float(f.get("audio_s") or 0) for f in files if f.get("status") == "done")
    wall = sum(float(f.get("wall_s") or 0) for f in files if f.get("status") == "done")
    return {"model": models[0] if len(models) == 1 else models, "workers": workers,
            "counts": counts, "audio_s": round(audio, 3), "wall_s": round(wall, 3),
            "files": files}


def merge(
    reports: Annotated[list[Path], typer.Argument(help="Report files written by "
                       "'upsr enhance --report'.", metavar="REPORT...", show_default=False)],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the merged report "
                   "here (default: stdout).", show_default=False)] = None,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Combine the --report files of many enhance workers into one."""
    _common.setup_logging(quiet, verbose)
    from upsr.errors import UsageError

    loaded = []
    for p in reports:
        try:
            d = json.loads(p.read_text())
        except OSError as exc:
            raise UsageError(f"{p}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"{p}: not a JSON report ({exc})") from None
        if not isinstance(d, dict) or not isinstance(d.get("files"), list):
            raise UsageError(f"{p}: not an 'upsr enhance --report' file (no 'files' list)")
        loaded.append(d)
    merged = merge_reports(loaded)
    text = json.dumps(merged, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        from upsr.fsutil import atomic_write_text

        try:
            atomic_write_text(out, text)
        except OSError as exc:
            raise UsageError(f"{out}: {exc.strerror or exc}") from None
    if not quiet and out is not None:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(merged["counts"].items()))
        print(f"upsr: {len(loaded)} reports, {len(merged['files'])} files: {summary}",
              file=sys.stderr)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Work with enhance reports.", no_args_is_help=True,
                      rich_markup_mode=None)
    sub.command("merge")(merge)
    app.add_typer(sub, name="report")
