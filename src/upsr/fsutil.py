"""Atomic file writing: a crash or Ctrl-C never leaves a partial output under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
import typing as tp
from pathlib import Path

TMP_PREFIX = ".upsr-tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> tp.Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    is left as it was. ``suffix`` defaults to the target's suffix, so that writers which pick
    a format from the extension keep working.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix if suffix is not None
                                    else target.suffix, dir=target.parent)
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
