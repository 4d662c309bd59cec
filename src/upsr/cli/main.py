"""The ``upsr`` command: a thin Typer shell over the library.

Every subcommand lives in its own module and is registered here. Modules import nothing heavy
at top level (no torch, scipy or soundfile), so ``upsr --help`` answers at once.
"""

from __future__ import annotations

import enum
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


_TYPE_METAVARS = {"integer": "N", "int": "N", "float": "NUMBER", "path": "PATH", "Path": "PATH",
                  "text": "TEXT", "str": "TEXT", "filename": "FILE"}


def _type_name(p: tp.Any) -> str:
    """The option's value type: click's ParamType name, or Typer's bare type (>= 0.2x)."""
    if getattr(p, "type", None) is not None:
        return "choice" if getattr(p.type, "choices", None) else str(p.type.name)
    bare = p.bare_type() if hasattr(p, "bare_type") else ""
    annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice"
    return str(bare)


def _readable(cmd: tp.Any) -> None:
    """Metavars people read in ``--help`` and the man pages: ``PATH...`` instead of Typer's
    ``{paths}...`` and ``paths... <list[str]>``; options without an explicit metavar get one
    from their type (``N``, ``PATH``) instead of ``<int>``/``<str>``."""
    for p in cmd.params:
        if p.param_type_name == "argument":
            p.metavar = p.metavar or (p.name or "ARG").upper()
            name = p.metavar + ("..." if p.nargs != 1 else "")
            usage = name if p.required else f"[{name}]"
            # Typer's own renderers (present in some versions) ignore metavar: override them
            if hasattr(p, "_usage_display_name"):
                p._usage_display_name = lambda usage=usage: usage
            if hasattr(p, "_rich_display_name"):
                p._rich_display_name = lambda name=name: name
            if hasattr(p, "display_type_rich"):
                p.display_type_rich = lambda ctx: None
        elif (p.param_type_name == "option" and not p.is_flag and not p.count
              and p.metavar is None and _type_name(p) != "choice"):
            p.metavar = _TYPE_METAVARS.get(_type_name(p), "VALUE")
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _readable(sub)


def command() -> tp.Any:
    """The app's click command tree, as ``main`` runs it and the man pages describe it."""
    cmd = typer.main.get_command(app)
    _readable(cmd)
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to a one-line message and the documented exit code.
    Without ``argv`` (the ``upsr`` command itself) upsr owns the process and may tune its
    allocator for inference (:mod:`upsr.infer.malloc`); a caller passing ``argv`` keeps its own."""
    if argv is None:
        from upsr.infer import malloc

        malloc.own_process()
    command_ = command()
    _common.on_interrupt(lambda: "")  # forget a note left by an earlier in-process run
    code: tp.Any = 0
    try:
        # Typer turns Ctrl-C into exit code 130 (returned here, without standalone mode)
        code = command_.main(args=argv, prog_name="upsr", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
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
    except BrokenPipeError:
        code = 0
    except OSError as exc:  # a set-up problem no check foresaw: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _common.error(f"{where}{exc.strerror or exc}")
        code = _common.EXIT_USAGE
    if code == _common.EXIT_INTERRUPTED:
        _common.error(_common.interrupt_message())
    sys.exit(code if isinstance(code, int) else 0)
