"""glibc's allocator during model inference: large temporaries reused, or handed back at once.

glibc serves an allocation above its mmap threshold (dynamic: 128 KiB rising to at most
32 MiB on 64-bit) with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. A
neural model's forward pass allocates and frees the same large temporaries (hundreds of MiB
for a 10 s chunk) on every call, so every call page-faults them in again: the kernel zeroes
each 4 KiB page, and that cost Wave-U-Mamba ~25 % of its time (``benchmarks/models_cpu.py``).

``UPSR_MALLOC`` picks what :func:`configure` sets with ``mallopt`` (constants of glibc's
``<malloc.h>``):

- ``reuse`` (the default): ``M_MMAP_MAX = 0``, no allocation is served by ``mmap``, large
  blocks come from the heap and are reused by the next call after they are freed; and
  ``M_TRIM_THRESHOLD = -1`` (largest ``size_t``; mallopt(3): "disables trimming
  completely"), the free top of the heap is not handed back after every call (it would be
  faulted in again). The fastest, but the heap fragments: two rows' blocks of different sizes
  interleave, and the process holds up to ~2.4x what ``compact`` needs;
- ``compact``: ``M_MMAP_THRESHOLD`` fixed at 64 KiB (which also stops glibc from raising
  it) and ``M_TRIM_THRESHOLD`` at 128 KiB: every block above 64 KiB is its own mapping,
  handed back the moment it is freed, so the resident set follows what is alive. For machines
  (and containers) short of memory: every forward pass faults its temporaries in afresh.
  Measured (upsr enhance, 30 s stereo, the published AEROMamba, 2 threads): peak RSS 2.0-2.2
  GiB -> 0.9 GiB for 1.5x the wall time (39-41 -> 61-62 s: the extra is system time, page
  faults; README "Speed", ``benchmarks/enhance.py``);
- ``default``: glibc's own behaviour, nothing set.

:func:`configure` exports the settings as glibc's variables (``MALLOC_MMAP_MAX_`` ...) too, so
that processes started afterwards (``--jobs`` workers) run alike. Memory freed into the heap
is kept by the process until :func:`between_files` (``malloc_trim(0)``, after every finished
file) hands the free pages back to the system: within a file the chunks reuse the blocks, a
batch holds no more than its largest file needs.

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
MODES = ("reuse", "compact", "default")   # UPSR_MALLOC values; unset = reuse

# <malloc.h>, glibc (checked against 2.36's header; the values date from glibc 2.0, M_ARENA_MAX
# from 2.10)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

COMPACT_MMAP_BYTES = 64 << 10    # compact: blocks above this are mappings of their own
COMPACT_TRIM_BYTES = 128 << 10   # compact: glibc's default trim threshold, kept fixed

Setting = tuple[int, int, str, str]
#: what :func:`configure` sets per mode, as (mallopt parameter, value, the environment
#: variable glibc reads at start-up for it, its value there)
MODE_SETTINGS: dict[str, tuple[Setting, ...]] = {
    "reuse": ((M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_", "0"),
              (M_TRIM_THRESHOLD, -1, "MALLOC_TRIM_THRESHOLD_", str(2**64 - 1))),
    "compact": ((M_MMAP_THRESHOLD, COMPACT_MMAP_BYTES, "MALLOC_MMAP_THRESHOLD_",
                 str(COMPACT_MMAP_BYTES)),
                (M_TRIM_THRESHOLD, COMPACT_TRIM_BYTES, "MALLOC_TRIM_THRESHOLD_",
                 str(COMPACT_TRIM_BYTES))),
}
SETTINGS = MODE_SETTINGS["reuse"]   # the default mode's
_OWNED = False
_APPLIED: str | None = None   # the mode configure() applied


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
    """``UPSR_MALLOC`` (``reuse`` where unset or empty); a UsageError for values not in
    :data:`MODES`."""
    env = os.environ if env is None else env
    value = env.get(ENV, "").strip().lower() or "reuse"
    if value not in MODES:
        raise UsageError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def configure(env: tp.MutableMapping[str, str] | None = None) -> str:
    """Apply the settings of ``UPSR_MALLOC``'s mode (this module's docstring) to this process
    and export them into ``env`` (default ``os.environ``) for processes started later.
    Returns what happened: ``"applied"`` (also when an earlier call applied them),
    ``"opted-out"`` (UPSR_MALLOC=default), ``"user-settings"``, ``"unsupported"`` (not
    glibc) or ``"failed"`` (mallopt refused)."""
    global _APPLIED
    env = os.environ if env is None else env
    if _APPLIED is not None:
        return "applied"
    chosen = mode(env)
    if chosen == "default":
        return "opted-out"
    if user_settings(env):
        return "user-settings"
    libc = glibc()
    if libc is None:
        return "unsupported"
    settings = MODE_SETTINGS[chosen]
    if not all(libc.mallopt(param, value) == 1 for param, value, _, _ in settings):
        return "failed"
    for _, _, name, text in settings:
        env[name] = text
    _APPLIED = chosen
    return "applied"


def for_inference() -> str:
    """What the CLI calls before it runs a model: :func:`configure` where upsr owns the
    process, else nothing (``"not-owned"``). Logged at debug level (``-vv``)."""
    status = configure() if _OWNED else "not-owned"
    log.debug("allocator: %s (%s=%s)", status, ENV, os.environ.get(ENV, "") or "reuse")
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
    if _APPLIED is None:
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
    """Whether :func:`configure` changed this process's allocator."""
    return _APPLIED is not None


def applied_mode() -> str | None:
    """The mode :func:`configure` applied to this process (None: none)."""
    return _APPLIED


def between_files() -> bool:
    """After a file (or a group of files) is finished: where this process runs with this
    module's settings (applied here, or inherited from the exported variables by a worker
    process), hand the heap's free memory back, so that a batch holds no more than its largest
    file needs (a batch of files of different lengths otherwise fragments the heap and grows).
    True when something was released."""
    inherited = any(all(os.environ.get(name) == text for _, _, name, text in settings)
                    for settings in MODE_SETTINGS.values())
    return (_APPLIED is not None or inherited) and release_free_memory()


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


__all__ = ["ENV", "MODES", "MODE_SETTINGS", "SETTINGS", "applied", "applied_mode",
           "between_files", "configure", "for_inference", "freeze_gc", "glibc", "mapped_bytes",
           "mode", "own_process", "pause_gc", "release_free_memory", "share_arena",
           "user_settings"]
