"""Atomic file writing: a crash or Ctrl-C never leaves a partial output under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
import typing as tp
from pathlib import Path

TMP_PREFIX = ".upsr-tmp-"


def host_tag(host: str | None = None) -> str:
    """8 hex digits naming a host (of ``socket.gethostname()``) in temporary file names."""
    import socket
    import zlib

    return f"{zlib.crc32((host or socket.gethostname()).encode()):08x}"


def tmp_prefix(pid: int | None = None, host: str | None = None) -> str:
    """Prefix for this process's temporary files: ``.upsr-tmp-<pid>@<host tag>-``. The pid
    lets a later run tell the leftovers of a killed process (``kill -9``, power loss) from live
    files; the host tag keeps workers on other machines sharing the folder from taking each
    other's live files for leftovers."""
    return f"{TMP_PREFIX}{os.getpid() if pid is None else pid}@{host_tag(host)}-"


def umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Mode a plain new file gets, as ``open``/``cp`` would create it: ``0o666 & ~umask``."""
    return 0o666 & ~umask()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files in ``folder`` left by upsr processes that no longer run."""
    removed: list[Path] = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for f in d.iterdir():
        if not f.name.startswith(TMP_PREFIX) or not f.is_file():
            continue
        pid_text, _, tag = f.name[len(TMP_PREFIX):].split("-", 1)[0].partition("@")
        if tag and tag != host_tag():
            continue  # another machine's: only its own runs (or a claim takeover) remove it
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> tp.Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    The file gets the mode a plain ``open`` would give it (``0o666 & ~umask``, e.g. 0644 under
    umask 022), not ``mkstemp``'s private 0600, so that outputs are readable as ``cp``'s are.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    is left as it was. ``suffix`` defaults to the target's suffix, so that writers which pick
    a format from the extension keep working.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=tmp_prefix(), suffix=suffix if suffix is not None
                                    else target.suffix, dir=target.parent)
    try:
        os.fchmod(fd, default_file_mode())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
