"""``upsr example DIR``: write a small folder of band-limited demo audio to try upsr on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common


def example(
    out_dir: Annotated[Path, typer.Argument(metavar="DIR",
                                            help="Folder to create (must not hold these files).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
    quiet: _common.Quiet = False,
) -> None:
    """Write band-limited demo audio (speech-band WAV, 8 kHz-cut stereo FLAC, nested folder)."""
    from upsr.audio.examples import write_examples

    paths = write_examples(out_dir, overwrite=overwrite)
    if not quiet:
        for p in paths:
            print(p)


def register(app: typer.Typer) -> None:
    app.command("example")(example)
