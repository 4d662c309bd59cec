"""``upsr degrade SRC_DIR OUT_DIR``: build paired (hr, lr) training/evaluation sets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common

_SPEC_HELP = "Each field is a value, a set a,b,c or a range lo-hi."
_ORDER = "upsr.degrade.steps"


def _step(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Record the order --lowpass/--mp3/--resample appear on the command line (click processes
    given options in command-line order): the degradations compose in that order."""
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_ORDER, []).append(param.name)
    return value


def degrade(
    ctx: typer.Context,
    src_dir: Annotated[Path, typer.Argument(help="Folder of clean audio (read only).")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder: hr/, lr/, manifest.jsonl.")],
    lowpass: Annotated[str | None, typer.Option(
        "--lowpass", metavar="TYPE:ORDER:CUTOFF", callback=_step,
        help="Low-pass, e.g. cheby1:8:4000 or cheby1,ellip,butter,boxcar:2-10:2k-16k "
             "(types: butter cheby1 cheby2 ellip bessel boxcar; order 1-16; cut-off in Hz, "
             "k suffix allowed, ranges drawn uniformly to 1 Hz). " + _SPEC_HELP)] = None,
    mp3: Annotated[str | None, typer.Option(
        "--mp3", metavar="KBPS[,KBPS...]", callback=_step,
        help="MP3 round trip at a bitrate drawn from the set, e.g. 24,32,48,64,96,128 "
             "(a range 24-128 means the standard bitrates inside it).")] = None,
    resample: Annotated[str | None, typer.Option(
        "--resample", metavar="HZ[,HZ...]", callback=_step,
        help="Rate of the degraded side, e.g. 11025 or 11.025k (lr keeps its own rate).")] = None,
    segment: Annotated[str | None, typer.Option(
        "--segment", metavar="SECONDS",
        help="Cut into pairs of this length (files name_0003.wav; the tail is dropped).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Run seed; each pair draws from "
                                      "(seed, relative path, segment index).")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Worker processes.")] = 1,
    hr_rate: Annotated[int | None, typer.Option(
        "--hr-rate", metavar="HZ", help="Resample the clean side first (e.g. 44100).")] = None,
    mono: Annotated[bool, typer.Option("--mono", help="Downmix to mono (channel mean).")] = False,
    fmt: Annotated[str, typer.Option(
        "--format", metavar="wav|flac",
help="Output format: wav (32-bit float) or flac (24-bit).")] = "wav",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the pairs that would be made; write nothing.")] = False,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Degrade clean audio into sample-aligned (hr, lr) pairs plus manifest.jsonl.

    The steps compose in the order given on the command line (--mp3 64 --lowpass ... codes
    first, then filters); each runs at the rate the previous one left. Same seed, same output
    bytes, whatever --jobs. Reruns skip finished pairs. Bad inputs are reported (exit 2).
    """
    from upsr.data.degrade import TreeOptions, degrade_tree, spec_from_options
    from upsr.errors import UsageError

    _common.setup_logging(quiet, verbose)
    _common.require_inputs([src_dir], stdin_ok=False)
    if not dry_run:
        _common.check_output_dir(out_dir, "OUT_DIR")
    steps = ctx.meta.get(_ORDER, [])
    spec = spec_from_options(lowpass, mp3, resample, segment, steps)
    if hr_rate is not None and hr_rate <= 0:
        raise UsageError(f"--hr-rate must be a positive rate in Hz (got {hr_rate})")
    opts = TreeOptions(spec=spec, seed=seed, hr_rate=hr_rate, mono=mono, format=fmt.lower())

    def on_pair(pair, done_before: bool) -> None:
        if dry_run and not quiet:
            state = "done" if done_before else "make"
            print(f"{state}\t{pair.rel}\t{pair.hr}\t{pair.lr}")

    _common.on_interrupt(lambda: "finished pairs are kept (no partial file was left); rerun "
                         "the same command to make the rest")
    result = degrade_tree(src_dir, out_dir, opts, jobs=jobs, dry_run=dry_run,
                          on_error=_common.error, on_pair=on_pair)
    if not quiet:
        made = "to make" if dry_run else "written"
        todo = len(result.planned) - result.skipped
        count = todo if dry_run else result.written
        print(f"upsr: degrade: {count} pair(s) {made}, {result.skipped} already done, "
              f"{len(result.failed)} file(s) failed", file=sys.stderr)
    if result.failed:
        raise typer.Exit(_common.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("degrade")(degrade)
