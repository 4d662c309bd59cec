"""Keep native decoder chatter off the terminal.

libsndfile's MP3 decoder (libmpg123) writes warnings such as ``Warning: Xing stream size off by
more than 1%`` or ``[src/libmpg123/layer3.c:...] error: part2_3_length ... too large`` straight
to file descriptor 2, bypassing Python. :func:`captured` redirects that descriptor to a
temporary file around a decoding call and hands what was written to the ``upsr`` logger at INFO
level (shown with ``-v``). Lines that upsr itself wrote meanwhile (``upsr: ...``) are put back
on stderr unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import typing as tp

log = logging.getLogger("upsr")

_lock = threading.RLock()   # fd 2 is process-wide: one capture at a time
_depth = 0                  # nested captures share the outermost one
_spool: tp.IO[bytes] | None = None


@contextlib.contextmanager
def captured(label: str = "") -> tp.Iterator[None]:
    """Run the body with fd 2 redirected; log the captured lines as ``label: decoder: ...``.

    A no-op where fd 2 cannot be duplicated (no stderr at all).
    """
    global _depth, _spool
    with _lock:
        if _depth:
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        if _spool is None:
            _spool = tempfile.TemporaryFile()
        spool = _spool
        spool.seek(0)
        spool.truncate()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(spool.fileno(), 2)
        _depth = 1
        try:
            yield
        finally:
            _depth = 0
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            spool.seek(0)
            text = spool.read().decode("utf-8", "replace")
            _report(text, label)


def _report(text: str, label: str) -> None:
    where = f"{label}: " if label else ""
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        if "\x1b" in line:
            continue  # a progress bar's redraw (it redraws again at once)
        if line.startswith("upsr:"):
            print(line, file=sys.stderr)
        else:
            log.info("%sdecoder: %s", where, line)
