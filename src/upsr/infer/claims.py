"""File claims: many ``upsr enhance`` processes, on one machine or many sharing the output
folder (NFS, Lustre, a mounted bucket), work on one input tree without doing a file twice.

Before a worker restores a file it *claims* the output: an exclusive create
(``O_CREAT | O_EXCL``) of ``.<output name>.upsr-claim`` beside the output, holding the host,
pid and start time as JSON. The claim is removed when the file is finished or has failed. While
the worker runs, a heartbeat refreshes the claim's modification time, so a claim whose mtime is
older than ``timeout_s`` belongs to a worker that is gone (killed, machine lost) even when it is
on another host. A claim is *stale*, and may be taken over, when

- its host is this host and its pid no longer runs, or
- it was not refreshed for ``timeout_s`` seconds.

Taking over is itself exclusive: the taker first creates ``<claim>.takeover`` (O_EXCL), reads
the claim again, removes it only if it is still the same stale claim, then claims as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from upsr.fsutil import pid_alive

CLAIM_SUFFIX = ".upsr-claim"
TAKEOVER_SUFFIX = ".takeover"
TAKEOVER_STALE_S = 60.0   # a takeover marker older than this belongs to a dead taker


def claim_path(target: str | os.PathLike[str]) -> Path:
    """The claim file of output ``target``: a hidden file beside it."""
    t = Path(target)
    return t.parent / f".{t.name}{CLAIM_SUFFIX}"


def host_name() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says, and how old its last heartbeat is."""

    host: str
    pid: int
    start: float      # unix time the claim was made
    token: str        # unique per claim (host, pid, start, counter)
    age_s: float      # seconds since the claim file was last refreshed

    def stale(self, timeout_s: float, host: str | None = None) -> bool:
        here = host or host_name()
        if self.host == here and not pid_alive(self.pid):
            return True
        return self.age_s > timeout_s


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim at ``path``; None when there is none. An unreadable or half-written claim
    (a writer killed between create and write) reads as host '?' with the file's age, so it
    goes stale by timeout."""
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ClaimInfo("?", -1, 0.0, "?", 0.0)
    age = max(0.0, time.time() - st.st_mtime)
    try:
        d = json.loads(text)
        return ClaimInfo(str(d["host"]), int(d["pid"]), float(d["start"]), str(d["token"]), age)
    except (ValueError, KeyError, TypeError):
        return ClaimInfo("?", -1, 0.0, f"?{st.st_mtime_ns}", age)


_counter = [0]
_counter_lock = threading.Lock()


def _new_token() -> str:
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return f"{host_name()}:{os.getpid()}:{time.time():.6f}:{n}"


class Claims:
    """Claims held by this process, with a heartbeat thread that keeps them fresh.

    ``timeout_s``: a claim not refreshed for this long is stale. The heartbeat refreshes every
    ``timeout_s / 4`` seconds (at most every 60 s).
    """

    def __init__(self, timeout_s: float = 600.0, heartbeat: bool = True) -> None:
        if timeout_s <= 0:
            raise ValueError("claim timeout must be > 0")
        self.timeout_s = float(timeout_s)
        self.host = host_name()
        self.held: dict[Path, str] = {}   # claim path -> token
        self.taken_over: list[ClaimInfo] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="upsr-claims", daemon=True)
            self._thread.start()

    # -- the heartbeat --------------------------------------------------------------------
    def _beat(self) -> None:
        period = min(60.0, self.timeout_s / 4)
        while not self._stop.wait(period):
            self.refresh()

    def refresh(self) -> None:
        """Touch every held claim (its mtime is the heartbeat)."""
        with self._lock:
            for p in list(self.held):
                with contextlib.suppress(OSError):
                    os.utime(p)

    # -- claiming -------------------------------------------------------------------------
    def _create(self, path: Path) -> bool:
        token = _new_token()
        body = json.dumps({"host": self.host, "pid": os.getpid(), "start": time.time(),
                           "token": token}).encode()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.held[path] = token
        return True

    def _take_over(self, path: Path, seen: ClaimInfo) -> bool:
        marker = path.with_name(path.name + TAKEOVER_SUFFIX)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - marker.stat().st_mtime > TAKEOVER_STALE_S:
                    marker.unlink()  # a taker died mid-takeover; the next attempt proceeds
            return False
        os.close(fd)
        try:
            now = read_claim(path)
            if now is None:
                return self._create(path)
            if now.token != seen.token or not now.stale(self.timeout_s, self.host):
                return False
            path.unlink()
            if self._create(path):
                self.taken_over.append(now)
                return True
            return False
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()

    def try_claim(self, target: str | os.PathLike[str]) -> bool:
        """Claim output ``target``; True when this process now holds it (a fresh claim, or a
        stale one taken over), False when another live worker holds it."""
        path = claim_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._create(path):
            return True
        seen = read_claim(path)
        if seen is None:            # released between our create and our read
            return self._create(path)
        if seen.stale(self.timeout_s, self.host):
            return self._take_over(path, seen)
        return False

    def holder(self, target: str | os.PathLike[str]) -> ClaimInfo | None:
        return read_claim(claim_path(target))

    def release(self, target: str | os.PathLike[str]) -> None:
        """Remove our claim on ``target`` (only if it is still ours)."""
        path = claim_path(target)
        with self._lock:
            token = self.held.pop(path, None)
        if token is None:
            return
        now = read_claim(path)
        if now is not None and now.token == token:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def release_all(self) -> None:
        for p in list(self.held):
            self.release(p.parent / p.name[1:-len(CLAIM_SUFFIX)])

    def close(self) -> None:
        self._stop.set()
        self.release_all()

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        self.close()


__all__ = ["CLAIM_SUFFIX", "ClaimInfo", "Claims", "claim_path", "host_name", "pid_alive",
           "read_claim"]
