"""glibc's allocator during model inference: large temporaries reused instead of re-mapped.

glibc serves an allocation above its mmap threshold (dynamic: 128 KiB rising to at most
32 MiB on 64-bit) with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. A
neural model's forward pass allocates and frees the same large temporaries (hundreds of MiB
for a 10 s chunk) on every call, so every call page-faults them in again: the kernel zeroes
each 4 KiB page, and that cost Wave-U-Mamba ~25 % of its time (``benchmarks/models_cpu.py``).

:func:`reuse_large_blocks` sets, with ``mallopt`` (constants of glibc's ``<malloc.h>``):

- ``M_MMAP_MAX = 0``: no allocation is served by ``mmap``; large blocks come from the heap and
  are reused by the next call after they are freed;
- ``M_TRIM_THRESHOLD = -1`` (largest ``size_t``; mallopt(3): "disables trimming completely"):
  the free top of the heap is not handed back after every call (it would be faulted in again);

and exports the same as ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` so that processes
started afterwards (``--jobs`` workers) run alike. Memory freed is then kept by the process
until :func:`between_files` (``malloc_trim(0)``, after every finished file) hands the free
pages back to the system: within a file the chunks reuse the blocks, a batch holds no more
than its largest file needs.

It is process-wide, so only a process ``upsr`` owns changes it (``upsr ...``, ``python -m
upsr``), never a program that imports upsr. It does nothing where the C library is not glibc
(musl, macOS, Windows), under another allocator in ``LD_PRELOAD`` (jemalloc, tcmalloc,
mimalloc), when the user set any of glibc's malloc variables (``MALLOC_*``, ``glibc.malloc``
in ``GLIBC_TUNABLES``: the user's choice wins) or ``UPSR_MALLOC=default`` (opt out).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import typing as tp

from upsr.errors import UsageError

log = logging.getLogger(__name__)

ENV = "UPSR_MALLOC"
MODES = ("reuse", "default")   # UPSR_MALLOC values; unset = reuse

# <malloc.h>, glibc (checked against 2.36's header; the values date from glibc 2.0, M_ARENA_MAX
# from 2.10)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: what reuse_large_blocks sets, as (mallopt parameter, value, the environment variable glibc
#: reads at start-up for it, its value there)
SETTINGS: tuple[tuple[int, int, str, str], ...] = (
    (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_", "0"),
    (M_TRIM_THRESHOLD, -1, "MALLOC_TRIM_THRESHOLD_", str(2**64 - 1)),
)
_OWNED = False
_APPLIED = False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def own_process() -> None:
    """Say that upsr owns this process (the ``upsr`` command's entry point calls it), so that
    :func:`for_inference` may change process-wide allocator settings."""
    global _OWNED
    _OWNED = True


def glibc() -> tp.Any | None:
    """The C library as a ctypes handle where it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        glibc_only = hasattr(libc, "gnu_get_libc_version")  # musl has no such function
    except (OSError, AttributeError):
        return None
    if not glibc_only:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc


def user_settings(env: tp.Mapping[str, str] | None = None) -> list[str]:
    """The malloc settings the user made in ``env``: any ``MALLOC_*`` variable (glibc's
    aliases of its tunables, jemalloc's MALLOC_CONF), ``glibc.malloc`` tunables, another
    allocator preloaded. Any of them leaves the allocator alone."""
    env = os.environ if env is None else env
    found = sorted(name for name in env if name.startswith("MALLOC_"))
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        found.append("GLIBC_TUNABLES")
    if "malloc" in env.get("LD_PRELOAD", ""):
        found.append("LD_PRELOAD")
    return found


def mode(env: tp.Mapping[str, str] | None = None) -> str:
    """``UPSR_MALLOC`` (``reuse`` where unset or empty); a UsageError for other values."""
    env = os.environ if env is None else env
    value = env.get(ENV, "").strip().lower() or "reuse"
    if value not in MODES:
        raise UsageError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def reuse_large_blocks(env: tp.MutableMapping[str, str] | None = None) -> str:
    """Apply the settings of this module's docstring to this process (and export them into
    ``env``, default ``os.environ``, for processes started later). Returns what happened:
    ``"applied"``, ``"opted-out"`` (UPSR_MALLOC=default), ``"user-settings"``,
    ``"unsupported"`` (not glibc) or ``"failed"`` (mallopt refused)."""
    global _APPLIED
    env = os.environ if env is None else env
    if _APPLIED:
        return "applied"
    if mode(env) == "default":
        return "opted-out"
    if user_settings(env):
        return "user-settings"
    libc = glibc()
    if libc is None:
        return "unsupported"
    if not all(libc.mallopt(param, value) == 1 for param, value, _, _ in SETTINGS):
        return "failed"
    for _, _, name, text in SETTINGS:
        env[name] = text
    _APPLIED = True
    return "applied"


def for_inference() -> str:
    """What the CLI calls before it runs a model: :func:`reuse_large_blocks` where upsr owns
    the process, else nothing (``"not-owned"``). Logged at debug level (``-vv``)."""
    status = reuse_large_blocks() if _OWNED else "not-owned"
    log.debug("allocator: %s (%s=default keeps glibc's defaults)", status, ENV)
    return status


def share_arena() -> bool:
    """Before threads that allocate side by side start (:class:`upsr.infer.parallel.RowPool`),
    where this module's settings are in effect: every thread allocates from the one main heap
    (``M_ARENA_MAX = 1``) instead of a heap of its own. With the heap never trimmed during a
    file, each thread's own heap would keep its own high-water mark, and the memory the main
    thread freed (file analysis, the previous pass) could not serve the other threads' rows.
    Measured (``benchmarks/enhance.py``, 1 min stereo, two row workers): peak RSS 462 against
    503 MiB (``sbr``), 514 against 546 MiB (the 11 k-parameter AEROMamba), the same CPU time.
    True when set."""
    if not _APPLIED:
        return False
    libc = glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, 1) == 1


def pause_gc() -> bool:
    """Where upsr owns the process: no automatic passes of Python's cyclic garbage collector
    until :func:`freeze_gc`, i.e. while torch and the model load. Importing torch creates
    hundreds of thousands of objects, none of them garbage, and every full pass the import
    triggers walks all of them (measured: ``import torch`` 1.45-1.53 CPU s with the
    collector off against 1.76-2.03 with it on). True when it paused."""
    if not _OWNED:
        return False
    gc.disable()
    return True


def freeze_gc() -> None:
    """Where upsr owns the process: move every object alive now into the collector's
    permanent generation (``gc.freeze``) and turn automatic collection on again. Later passes
    then skip torch's objects, and so does the one at interpreter exit (measured after
    ``import torch``: 0.18 s from the last statement to the process's end, against
    0.87-1.09 s). Called again once the work is done, for the objects made since."""
    if not _OWNED:
        return
    gc.freeze()
    gc.enable()


def applied() -> bool:
    """Whether :func:`reuse_large_blocks` changed this process's allocator."""
    return _APPLIED


def between_files() -> bool:
    """After a file (or a group of files) is finished: where this process runs with this
    module's settings (applied here, or inherited from the exported variables by a worker
    process), hand the heap's free memory back, so that a batch holds no more than its largest
    file needs (a batch of files of different lengths otherwise fragments the heap and grows).
    True when something was released."""
    inherited = all(os.environ.get(name) == text for _, _, name, text in SETTINGS)
    return (_APPLIED or inherited) and release_free_memory()


def release_free_memory() -> bool:
    """Hand free heap memory back to the system (``malloc_trim(0)``) where glibc is the
    allocator; True when some was released."""
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return bool(libc.malloc_trim(0))


def mapped_bytes() -> int | None:
    """Bytes of this process's allocations glibc serves with ``mmap`` now
    (``mallinfo2().hblkhd``; glibc >= 2.33), None elsewhere."""
    libc = glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.restype = _MallInfo2
    return int(fn().hblkhd)


__all__ = ["ENV", "MODES", "SETTINGS", "applied", "between_files", "for_inference", "freeze_gc",
           "glibc", "mapped_bytes", "mode", "own_process", "pause_gc", "release_free_memory",
           "reuse_large_blocks", "share_arena", "user_settings"]
