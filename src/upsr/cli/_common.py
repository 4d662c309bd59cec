"""What every subcommand shares: verbosity options, one-line errors, exit codes, consoles.

Exit codes follow sox: 0 all good, 1 usage or set-up error (before any work), 2 at least one
file failed (the others were still processed), 130 interrupted (Ctrl-C). A missing input path is
a set-up error (1) in every command; output places are checked before any work starts.
"""

from __future__ import annotations

import logging
import os
import sys
import typing as tp
from pathlib import Path
from typing import Annotated

import typer

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_FAILED = 2
EXIT_INTERRUPTED = 130

Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")]
Verbose = Annotated[
    int, typer.Option("-v", "--verbose", count=True, show_default=False,
                      help="More detail (-vv for debug output).")
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


# ------------------------------------------------------------------------- inputs and outputs


def require_inputs(paths: list[str] | list[Path], stdin_ok: bool = True) -> None:
    """The one rule for missing inputs, in every command: a set-up error (exit 1) before any
    work, naming the first path that does not exist (``-`` is stdin where allowed)."""
    from upsr.errors import UsageError

    for p in paths:
        if stdin_ok and str(p) == "-":
            continue
        if not Path(p).exists():
            raise UsageError(f"{p}: no such file or folder")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path, label: str) -> None:
    """Create and delete a temporary file in ``folder`` (permission bits alone do not tell:
    root, read-only mounts, /proc)."""
    import tempfile

    from upsr.errors import UsageError
    from upsr.fsutil import tmp_prefix

    try:
        fd, name = tempfile.mkstemp(prefix=tmp_prefix(), dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UsageError(f"{label}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_output_dir(path: str | Path, option: str) -> None:
    """UsageError (before any work) unless ``path`` is, or can become, a writable folder.

    ``option`` names the flag or argument in the message (``-o``, ``OUT_DIR``). Nothing is
    created: the nearest existing ancestor is checked and probed with a temporary file.
    """
    from upsr.errors import UsageError

    d = Path(path)
    label = f"{option} {path}"
    if d.exists() and not d.is_dir():
        raise UsageError(f"{label} is a file, not a folder")
    anc = _nearest_existing(d)
    if not anc.is_dir():
        raise UsageError(f"{label}: {anc} is a file, not a folder")
    _probe_write(anc, label)


def check_output_file(path: str | Path, option: str) -> None:
    """UsageError (before any work) unless a file can be written at ``path`` (its folder is
    created when written, as the atomic writers do)."""
    from upsr.errors import UsageError

    f = Path(path)
    label = f"{option} {path}"
    if f.is_dir():
        raise UsageError(f"{label} is a folder, not a file")
    anc = _nearest_existing(f.parent)
    if not anc.is_dir():
        raise UsageError(f"{label}: {anc} is a file, not a folder")
    _probe_write(anc, label)


# --------------------------------------------------------------------------------- interrupts

_interrupt_note: list[tp.Callable[[], str]] = []


def on_interrupt(note: tp.Callable[[], str]) -> None:
    """Register what to say if the command is interrupted: what finished and what to rerun
    (called at Ctrl-C time, so it can report progress so far)."""
    _interrupt_note.clear()
    _interrupt_note.append(note)


def interrupt_message() -> str:
    """The one line printed on Ctrl-C."""
    note = ""
    if _interrupt_note:
        try:
            note = _interrupt_note[0]()
        except Exception:  # the note is a courtesy: never mask the interrupt itself
            note = ""
    _interrupt_note.clear()
    return "interrupted" + (f": {note}" if note else "; nothing was left half-written")
