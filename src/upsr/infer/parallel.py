"""Row-parallel inference for small models on a CPU: one model replica per thread.

A model of a few thousand parameters does little work per operation: its activations are a
few channels wide, so torch's intra-op threads (OpenMP) split each small operation between
the cores and join again, thousands of times per call, and most of a second core's time goes
to starting and waiting. Such a model runs faster with one intra-op thread per row and the
*rows* side by side: the two channels of a stereo chunk (or two chunks of a mono file) each
in its own Python thread (torch releases the GIL inside its operations; so does numpy's FFT,
which the low-band splice uses), each thread with its own copy of the model (models may keep
per-call state, as AEROMamba's statistics switch).

Where a model has a pool, every call of it runs on a worker (a lone row, a mono file's
statistics pass too), so every row is computed exactly as the serial path computes it at one
intra-op thread (the same operations on the same data, one row per call): the results are
identical to that path's whatever the caller's thread count and whatever the order in which
the threads finish (``tests/infer/test_parallel.py``); ``--jobs 2`` (one thread per process)
therefore gives the same bytes as ``--jobs 1`` with two threads.

The rule (:func:`row_workers`): on the CPU, an ``nn.Module`` with fewer than
:data:`MAX_PARAMS` parameters (``sbr``, with none, included) gets as many row workers as the
process has torch threads; larger models (and every model on a GPU) keep one worker and
torch's intra-op threads, which their wide operations use well.
"""

from __future__ import annotations

import copy
import queue
import threading
import typing as tp
from collections.abc import Callable, Sequence

#: Models with fewer parameters than this run rows side by side (one intra-op thread each).
#: Measured (``benchmarks/enhance.py``, 1 min stereo, 2 threads, a loaded host; CPU seconds
#: before/after): the 11 k-parameter AEROMamba 27.0 / 5.8, the 28 k one 49.9 / 7.9, ``sbr``
#: 7.6 / 3.1; the published configurations this leaves on intra-op threads have 4.2 M
#: (Wave-U-Mamba) to 21 M (AEROMamba) parameters (AEROMamba: 203.6 / 195.8, unchanged). Not
#: measured between 28 k and 1 M: the bound is where bf16 starts to pay (``BF16_MIN_PARAMS``
#: in :mod:`upsr.infer.precision`), i.e. where operations become wide.
MAX_PARAMS = 1_000_000

T = tp.TypeVar("T")
R = tp.TypeVar("R")


def row_workers(model: tp.Any, device: str, threads: int | None = None) -> int:
    """How many rows of ``model`` to run side by side on ``device`` (1: the serial path with
    torch's intra-op threads). ``threads``: the process's torch threads (default: torch's
    current count)."""
    import torch

    from upsr.infer.precision import parameter_count

    if device != "cpu":
        return 1
    if not isinstance(model, torch.nn.Module):
        return 1  # a plain object may hold state that a copy would not share
    if parameter_count(model) >= MAX_PARAMS:
        return 1
    return max(1, int(threads if threads is not None else torch.get_num_threads()))


class RowPool:
    """``workers`` threads, each with one torch intra-op thread and its own replica of
    ``model`` (replica 0 is ``model`` itself). :meth:`map` runs calls side by side, each on a
    replica no other running call holds. Close it (or use it as a context manager) to stop the
    threads."""

    def __init__(self, model: tp.Any, workers: int) -> None:
        if workers < 2:
            raise ValueError("a RowPool needs at least 2 workers")
        import torch

        from upsr.infer import malloc

        malloc.share_arena()  # the rows' memory from the one heap (upsr.infer.malloc)
        self.workers = workers
        self.replicas = [model] + [copy.deepcopy(model) for _ in range(workers - 1)]
        self._free: queue.SimpleQueue[tp.Any] = queue.SimpleQueue()
        for m in self.replicas:
            self._free.put(m)
        self._tasks: queue.SimpleQueue[tp.Any] = queue.SimpleQueue()
        threads = torch.get_num_threads()
        ready = threading.Barrier(workers + 1)
        self._threads = [threading.Thread(target=self._serve, args=(ready,), daemon=True,
                                          name=f"upsr-rows-{i}") for i in range(workers)]
        for t in self._threads:
            t.start()
        ready.wait()
        # each worker set one thread for itself; torch also keeps that count as the default
        # of threads started later: give it back the caller's (its own count is unchanged)
        torch.set_num_threads(threads)

    def _serve(self, ready: threading.Barrier) -> None:
        import torch

        torch.get_num_threads()   # torch's per-thread setup first (it reads the default) ...
        torch.set_num_threads(1)  # ... then this thread's own count (OpenMP, MKL: per thread)
        ready.wait()
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, item, done = task
            model = self._free.get()
            try:
                with torch.inference_mode():
                    done.put(fn(model, item))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.put(exc)
            finally:
                self._free.put(model)

    def map(self, fn: Callable[[tp.Any, T], R], items: Sequence[T]) -> list[R | BaseException]:
        """``[fn(replica, item) for item in items]`` side by side; an item whose call raised
        gets its exception in its place (in order, like the items)."""
        if not self._threads:
            raise RuntimeError("RowPool is closed")
        boxes: list[queue.SimpleQueue[tp.Any]] = []
        for item in items:
            box: queue.SimpleQueue[tp.Any] = queue.SimpleQueue()
            self._tasks.put((fn, item, box))
            boxes.append(box)
        return [box.get() for box in boxes]

    def map_or_raise(self, fn: Callable[[tp.Any, T], R], items: Sequence[T]) -> list[R]:
        """:meth:`map`, raising the first exception (after every call has finished)."""
        out = self.map(fn, items)
        for value in out:
            if isinstance(value, BaseException):
                raise value
        return tp.cast(list[R], out)

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def __enter__(self) -> RowPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pool(model: tp.Any, device: str, workers: int | None = None) -> RowPool | None:
    """A :class:`RowPool` for ``model`` where :func:`row_workers` (or ``workers``, when given)
    says more than one worker, else None (the serial path)."""
    n = row_workers(model, device) if workers is None else workers
    return RowPool(model, n) if n > 1 else None


__all__ = ["MAX_PARAMS", "RowPool", "open_pool", "row_workers"]
