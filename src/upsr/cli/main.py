"""The ``upsr`` command: a thin Typer shell over the library.

Every subcommand lives in its own module and is registered here. Modules import nothing heavy
at top level (no torch, scipy or soundfile), so ``upsr --help`` answers at once.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing as tp

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
    from upsr.cli import train as train_cli

    degrade.register(app)
    enhance.register(app)
    example.register(app)
    models.register(app)
    eval_cli.register(app)
    probe_cli.register(app)
    train_cli.register(app)
    _add_verbosity(app)


def _with_verbosity(fn: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
    """``fn`` with ``-q/--quiet`` and ``-v/--verbose`` added where it lacks them; the wrapper
    sets up logging from them before ``fn`` runs (so every command has both, as the README
    says, including ones whose module does not declare them)."""
    sig = inspect.signature(fn, eval_str=True)
    extra = {"quiet": _common.Quiet, "verbose": _common.Verbose}
    missing = {k: v for k, v in extra.items() if k not in sig.parameters}
    if not missing:
        return fn

    @functools.wraps(fn)
    def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        added = {k: kwargs.pop(k) for k in missing if k in kwargs}
        quiet = bool(kwargs.get("quiet", added.get("quiet", False)))
        verbose = int(kwargs.get("verbose", added.get("verbose", 0)) or 0)
        _common.setup_logging(quiet, verbose)
        return fn(*args, **kwargs)

    defaults = {"quiet": False, "verbose": 0}
    params = list(sig.parameters.values()) + [
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=defaults[k], annotation=v)
        for k, v in missing.items()]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in sig.parameters.values()},
                               **missing, "return": sig.return_annotation}
    return wrapper


def _add_verbosity(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None:
            info.callback = _with_verbosity(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _add_verbosity(group.typer_instance)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to a one-line message and the documented exit code."""
    command = typer.main.get_command(app)
    _common.on_interrupt(lambda: "")  # forget a note left by an earlier in-process run
    try:
        code = command.main(args=argv, prog_name="upsr", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        _common.error(_common.interrupt_message())
        code = _common.EXIT_INTERRUPTED
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
        _common.error(_common.interrupt_message())
        code = _common.EXIT_INTERRUPTED
    except BrokenPipeError:
        code = 0
    except OSError as exc:  # a set-up problem no check foresaw: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _common.error(f"{where}{exc.strerror or exc}")
        code = _common.EXIT_USAGE
    sys.exit(code if isinstance(code, int) else 0)
