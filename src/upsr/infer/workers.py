"""One archive, many workers: claims, shards, local worker processes and distributed ranks.

``run_workers`` is what ``upsr enhance`` runs over a planned list of items:

- every file output is *claimed* (``upsr.infer.claims``) before work and released after it,
  so any number of processes, on one machine or many sharing the output folder, can run over
  the same tree; a file held by a live worker elsewhere is revisited at the end and either
  found done (``done-elsewhere``) or, once its claim goes stale, taken over and done here;
- ``shard=(k, n)`` keeps the items whose output path relative to the output folder hashes to
  ``k`` modulo ``n`` (stable: adding files never moves others between shards);
- ``jobs > 1`` starts that many local worker processes (from a fork server on Linux, spawned
  elsewhere; each with ``threads // jobs`` torch threads) that take items from one queue;
- under ``torchrun`` or ``srun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` or
  ``SLURM_NTASKS``/``SLURM_PROCID``/``SLURM_LOCALID``) each rank uses its own GPU
  (``cuda:LOCAL_RANK``), starts at its own offset in the list and writes its own report.
"""

from __future__ import annotations

import contextlib
import os
import time
import typing as tp
import zlib
from dataclasses import dataclass
from pathlib import Path

from upsr.errors import UsageError
from upsr.infer import malloc
from upsr.infer.batch import BatchOptions, Item, enhance_files, remove_stale_outputs
from upsr.infer.claims import Claims

Callback = tp.Callable[[Item], None]
Progress = tp.Callable[[Item, float], None]  # (item, seconds of its audio just finished)
Planned = tp.Callable[[list[Item]], None]    # items about to be restored
POLL_S = 2.0   # how often a worker looks again at files other workers hold


# ------------------------------------------------------------------------------ shards, ranks


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` (K counts from 0, as SLURM array indices
    given as ``--array=0-(N-1)``)."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = -1
    if not sep or n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: expected K/N with 0 <= K < N (e.g. 0/4)")
    return k, n


def shard_key(item: Item, out: str) -> str:
    """The relative output path (``/``-separated) that decides an item's shard."""
    try:
        rel = os.path.relpath(item.dst, out)
    except ValueError:  # another drive (Windows)
        rel = item.dst
    return rel.replace(os.sep, "/")


def in_shard(key: str, k: int, n: int) -> bool:
    return zlib.crc32(key.encode("utf-8")) % n == k


def select_shard(items: list[Item], out: str, shard: tuple[int, int] | None) -> list[Item]:
    if shard is None:
        return items
    k, n = shard
    return [it for it in items if in_shard(shard_key(it, out), k, n)]


@dataclass(frozen=True)
class Rank:
    """This process's place among launched peers (torchrun or srun); world 1 otherwise."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: str = ""


def dist_env(env: tp.Mapping[str, str] | None = None) -> Rank:
    """Read torchrun's or SLURM's environment (torchrun wins when both are set)."""
    e = os.environ if env is None else env
    try:
        if int(e.get("WORLD_SIZE", "1")) > 1:
            return Rank(int(e.get("RANK", "0")), int(e["WORLD_SIZE"]),
                        int(e.get("LOCAL_RANK", "0")), "torchrun")
        if int(e.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in e:
            return Rank(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]),
                        int(e.get("SLURM_LOCALID", "0")), "slurm")
    except ValueError:
        raise UsageError("malformed WORLD_SIZE/RANK/LOCAL_RANK or SLURM_* environment") from None
    return Rank()


def device_for_rank(device: str, rank: Rank) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` (modulo the visible devices) under a launcher."""
    if rank.world == 1 or device != "cuda":
        return device
    import torch

    n = max(1, torch.cuda.device_count())
    return f"cuda:{rank.local_rank % n}"


def report_path(path: Path, rank: Rank) -> Path:
    """Each rank writes its own report: ``r.json`` becomes ``r.rank3.json``."""
    if rank.world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank.rank}{path.suffix}")


def rotate(items: list[Item], rank: Rank) -> list[Item]:
    """Start each rank at its own offset, so ranks rarely race for the same claim."""
    if rank.world == 1 or not items:
        return items
    s = rank.rank * len(items) // rank.world
    return items[s:] + items[:s]


def worker_info(rank: Rank, shard: tuple[int, int] | None, jobs: int) -> dict[str, tp.Any]:
    """Who wrote a report: fields ``upsr report merge`` keeps per worker."""
    from upsr.infer.claims import host_name

    return {"worker": {"host": host_name(), "pid": os.getpid(), "rank": rank.rank,
                       "world": rank.world, "launcher": rank.launcher or None,
                       "shard": f"{shard[0]}/{shard[1]}" if shard else None, "jobs": jobs,
                       "finished": time.time()}}


# ----------------------------------------------------------------------------- claimed runs


def _remove_tmp_of(folder: Path, pid: int, host: str) -> None:
    """Delete the temporary files a taken-over claim's dead holder left in ``folder``."""
    from upsr.fsutil import tmp_prefix

    if pid < 0 or not folder.is_dir():
        return
    prefix = tmp_prefix(pid, host)
    for f in folder.iterdir():
        if f.name.startswith(prefix):
            with contextlib.suppress(OSError):
                f.unlink()


def run_claimed(items: tp.Iterable[Item], model_ref: str, opts: BatchOptions, claims: Claims,
                emit: Callback, progress: Progress | None = None,
                group: int = 1, poll_s: float = POLL_S,
                cache: dict[str, tp.Any] | None = None,
                on_planned: Planned | None = None) -> None:
    """Restore ``items`` under claims, ``group`` claimed items per engine call (so that a GPU
    still batches chunks across files). ``emit`` gets every item at its final status.

    Items another live worker holds are looked at again every ``poll_s`` seconds after the
    rest: released with an output -> ``done-elsewhere``; released without one (that worker
    failed) or stale -> claimed and done here.
    """
    cache = {} if cache is None else cache
    deferred: list[Item] = []
    batch: list[Item] = []

    def flush() -> None:
        if not batch:
            return
        targets = [it.dst for it in batch]   # enhance_files may rename a copied file's dst
        for info in claims.taken_over:
            if info.host != "?":
                for t in targets:
                    _remove_tmp_of(Path(t).parent, info.pid, info.host)
        claims.taken_over.clear()
        try:
            enhance_files(list(batch), model_ref, opts, on_item=emit, progress=progress,
                          on_planned=on_planned, cache=cache, clean_stale=False)
        finally:
            for t in targets:
                claims.release(t)
            batch.clear()
            malloc.between_files()  # free heap pages back to the system (upsr.infer.malloc)

    def take(it: Item) -> bool:
        if it.dst == "-":
            batch.append(it)
            return True
        if claims.try_claim(it.dst):
            batch.append(it)
            if len(batch) >= group:
                flush()
            return True
        return False

    for it in items:
        if it.dst != "-" and not opts.overwrite and Path(it.dst).exists():
            it.status = "exists"
            emit(it)
            continue
        if not take(it):
            deferred.append(it)
    flush()
    while deferred:
        time.sleep(poll_s)
        still: list[Item] = []
        for it in deferred:
            holder = claims.holder(it.dst)
            if holder is not None and not holder.stale(claims.timeout_s, claims.host):
                still.append(it)
                continue
            if holder is None and Path(it.dst).exists():
                it.status = "done-elsewhere"
                emit(it)
                continue
            if not take(it):
                still.append(it)
        flush()
        deferred = still


# ----------------------------------------------------------------------- local worker pool


def _child(threads: int, model_ref: str, opts: BatchOptions, timeout_s: float, group: int,
           poll_s: float, items: list[Item], tasks: tp.Any, results: tp.Any) -> None:
    """A spawned worker: take item indices from ``tasks`` until the None sentinel, restore
    them under claims, send every finished item to ``results``."""
    import torch

    torch.set_num_threads(threads)

    def take_all() -> tp.Iterator[Item]:
        while True:
            idx = tasks.get()
            if idx is None:
                return
            yield items[idx]

    with Claims(timeout_s) as claims:
        run_claimed(take_all(), model_ref, opts, claims, emit=results.put, group=group,
                    poll_s=poll_s)


def worker_context() -> tp.Any:
    """Linux: a fork server that has imported torch and upsr once and never ran a parallel
    region (forking this process instead can hang the child in OpenMP/numba thread pools, and
    CUDA cannot be forked); spawn elsewhere."""
    import multiprocessing as mp
    import sys

    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "upsr.infer.workers"])
        return ctx
    return mp.get_context("spawn")


def default_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def run_pool(items: list[Item], model_ref: str, opts: BatchOptions, jobs: int,
             timeout_s: float, emit: Callback, progress: Progress | None,
             group: int = 1, poll_s: float = POLL_S, threads: int | None = None,
             on_planned: Planned | None = None) -> None:
    """``jobs`` spawned worker processes over one queue. Items a killed child left unreported
    are done here afterwards (their claims are stale: same host, dead pid)."""
    import queue as queue_mod

    ctx = worker_context()
    tasks, results = ctx.Queue(), ctx.Queue()
    for i in range(len(items)):
        tasks.put(i)
    for _ in range(jobs):
        tasks.put(None)
    per = max(1, (threads or default_threads()) // jobs)
    procs = [ctx.Process(target=_child, args=(per, model_ref, opts, timeout_s, group, poll_s,
                                              items, tasks, results), daemon=True)
             for _ in range(jobs)]
    for p in procs:
        p.start()
    reported: set[str] = set()

    def deliver(it: Item) -> None:
        reported.add(it.src)
        if progress and it.status == "done":  # children report whole files
            if on_planned:
                on_planned([it])
            progress(it, it.audio_s)
        emit(it)

    try:
        while any(p.is_alive() for p in procs):
            try:
                deliver(results.get(timeout=0.2))
            except queue_mod.Empty:
                pass
        while True:
            try:
                deliver(results.get(timeout=0.2))
            except queue_mod.Empty:
                break
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
        raise
    for p in procs:
        p.join()
    left = [it for it in items if it.src not in reported]
    if left:
        with Claims(timeout_s) as claims:
            run_claimed(left, model_ref, opts, claims, emit=emit, progress=progress,
                        on_planned=on_planned,
                        group=group, poll_s=poll_s)


def run_workers(items: list[Item], model_ref: str, opts: BatchOptions, out: str,
                jobs: int = 1, shard: tuple[int, int] | None = None,
                claim_timeout_s: float = 600.0, rank: Rank | None = None,
                on_item: Callback | None = None,
                progress: Progress | None = None,
                poll_s: float = POLL_S, on_planned: Planned | None = None,
                cache: dict[str, tp.Any] | None = None) -> list[Item]:
    """Restore ``items`` (as planned by ``plan_items``) as this worker's part of a possibly
    shared run; returns the items in the order they finished. ``progress``/``on_planned`` as
    in :func:`upsr.infer.batch.enhance_files` (with ``--jobs``, whole files as they finish).
    ``cache``: models already loaded (by reference, on ``opts.device``) for this process's
    own worker; ``--jobs`` workers load their own."""
    if jobs < 1:
        raise UsageError("--jobs must be >= 1")
    if claim_timeout_s <= 0:
        raise UsageError("--claim-timeout must be > 0")
    rank = rank or Rank()
    mine = rotate(select_shard(items, out, shard), rank)
    done: list[Item] = []

    def emit(it: Item) -> None:
        done.append(it)
        if on_item:
            on_item(it)

    remove_stale_outputs(mine)  # once per run (the claimed groups do not list folders again)
    group = max(1, opts.engine.batch_size) if opts.device != "cpu" else 1
    if jobs > 1 and len(mine) > 1:
        run_pool(mine, model_ref, opts, min(jobs, len(mine)), claim_timeout_s, emit, progress,
                 group=group, poll_s=poll_s, on_planned=on_planned)
    else:
        with Claims(claim_timeout_s) as claims:
            run_claimed(mine, model_ref, opts, claims, emit, progress, group=group,
                        poll_s=poll_s, on_planned=on_planned, cache=cache)
    return done


__all__ = ["Rank", "device_for_rank", "dist_env", "in_shard", "parse_shard", "report_path",
           "rotate", "run_claimed", "worker_info", "run_pool", "run_workers", "select_shard",
           "shard_key", "worker_context"]
