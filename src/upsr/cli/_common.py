"""What every subcommand shares: verbosity options, one-line errors, exit codes, consoles.

Exit codes follow sox: 0 all good, 1 usage or set-up error (before any work), 2 at least one
file failed (the others were still processed).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_FAILED = 2

Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")]
Verbose = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="More detail (-vv for debug output).")
]

log = logging.getLogger("upsr")


class _StderrHandler(logging.StreamHandler):
    """A stream handler bound to the *current* ``sys.stderr`` at each record: tests and
    callers that swap stderr (pytest's capsys) never leave it writing to a closed stream."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(quiet: bool = False, verbose: int = 0) -> None:
    """Route the ``upsr`` logger to stderr at the level the flags ask for."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose >= 2 else
                                         logging.INFO if verbose == 1 else logging.WARNING)
    root = logging.getLogger("upsr")
    root.setLevel(level)
    if not root.handlers:
        stream = _StderrHandler()
        stream.setFormatter(logging.Formatter("upsr: %(message)s"))
        root.addHandler(stream)
    for handler in root.handlers:
        handler.setLevel(level)


def use_color() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and sys.stderr.isatty()


def stderr_console():  # -> rich.console.Console (imported lazily: rich is slow to import)
    from rich.console import Console

    return Console(stderr=True, no_color=not use_color(), highlight=False,
                   force_terminal=None if use_color() else False)


def stdout_console():
    from rich.console import Console

    color = "NO_COLOR" not in os.environ and sys.stdout.isatty()
    return Console(no_color=not color, highlight=False, soft_wrap=True,
                   force_terminal=None if color else False)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    print(f"upsr: error: {message}", file=sys.stderr)


def file_error(path: object, message: str) -> None:
    """One line per failed input; the batch goes on."""
    print(f"upsr: error: {path}: {message}", file=sys.stderr)


def show_progress(quiet: bool) -> bool:
    """Progress bars on a terminal only (never in logs or pipes)."""
    return not quiet and sys.stderr.isatty()
