"""``upsr train RECIPE.toml``: train a GAN restorer from a recipe (also under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common


def train(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE.toml",
                                           help="Recipe file (TOML), e.g. recipes/apollo.toml.")],
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out (or the newest runs/<recipe>-*) from its "
                         "latest checkpoint, exactly. The recipe and --set values must equal "
                         "the run's recipe.toml except train.steps/epochs/log_every, "
                         "valid.every/examples, checkpoint.every, data.num_workers.")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="SECTION.KEY=VALUE",
        help="Override a recipe value (TOML syntax), e.g. --set train.steps=100 "
             "--set data.train=~/music. Repeatable.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="DIR",
help="Run folder (default runs/<recipe>-<timestamp>).")] = None,
    device: Annotated[str, typer.Option(
        "--device", metavar="auto|cpu|cuda",
help="auto (CUDA when available), cpu or cuda.")] = "auto",
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Train AEROMamba, Apollo or Wave-U-Mamba as a recipe describes.

    Writes the resolved recipe, log.csv, validation examples and checkpoints
    (checkpoints/latest.safetensors, best.safetensors: usable with 'upsr enhance --model FILE';
    best is chosen at every validation; both record the degradation trained for, which
    'enhance --bitrate-auto' reads) into the run folder. The tiny recipes train on generated
    audio (data.train = "builtin:music") unless --set data.train=DIR. Under torchrun every
    rank runs this same command.
    """
    from upsr.errors import UsageError
    from upsr.train import loop
    from upsr.train import recipe as R

    _common.setup_logging(quiet, max(verbose, 0 if quiet else 1))
    if out is not None:
        _common.check_output_dir(out, "--out")
    r = R.load(recipe, overrides or ())
    run_dir = out
    if resume and run_dir is None:
        runs = sorted(Path("runs").glob(f"{recipe.stem}-*"))
        if not runs:
            raise UsageError(f"--resume: no runs/{recipe.stem}-* folder; pass --out RUN_DIR")
        run_dir = runs[-1]
    where = f" --out {run_dir}" if run_dir is not None else ""  # else: the newest runs/ folder
    _common.on_interrupt(lambda: f"continue from the last saved checkpoint with 'upsr train "
                         f"{recipe}{where} --resume'")
    loop.train(r, run_dir, resume=resume, device=device)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
