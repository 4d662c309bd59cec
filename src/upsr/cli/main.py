"""The ``upsr`` command: a thin Typer shell over the library.

Every subcommand lives in its own module and is registered here. Modules import nothing heavy
at top level (no torch, scipy or soundfile), so ``upsr --help`` answers at once.
"""

from __future__ import annotations

import sys

import typer

from upsr import __version__
from upsr.cli import _common
from upsr.errors import UpsrError

try:  # typer >= 0.25 vendors its own click
    from typer._click import exceptions as _click_exc  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as _click_exc  # type: ignore[no-redef]

app = typer.Typer(
    name="upsr",
    help="Restore band-limited and MP3-damaged audio (bandwidth extension / super-resolution).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"upsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Restore band-limited and MP3-damaged audio."""


def _register() -> None:
    from upsr.cli import degrade, enhance, example, models
    from upsr.cli import eval as eval_cli
    from upsr.cli import probe as probe_cli
    from upsr.cli import report as report_cli
    from upsr.cli import train as train_cli

    degrade.register(app)
    enhance.register(app)
    example.register(app)
    models.register(app)
    eval_cli.register(app)
    probe_cli.register(app)
    report_cli.register(app)
    train_cli.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to a one-line message and the documented exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="upsr", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        _common.error("aborted")
        code = 130
    except _click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        code = _common.EXIT_USAGE
    except _click_exc.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "upsr"
        _common.error(f"{exc.format_message()} (see '{path} --help')")
        code = _common.EXIT_USAGE
    except _click_exc.ClickException as exc:
        _common.error(exc.format_message())
        code = _common.EXIT_USAGE
    except UpsrError as exc:
        _common.error(str(exc))
        code = _common.EXIT_USAGE
    except KeyboardInterrupt:
        _common.error("interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
