"""Mamba inference on the CPU, one time chunk after the other (channel-last, no autograd).

:func:`mamba_chunked` computes ``out = residual + Mamba(norm(h))`` for ``h: [B, L, d_model]``
in chunks of a few hundred to a few thousand steps, so that every intermediate of the block
(in_proj's output ``[T, 2·Di]``, the conv output, x_proj's output, the gated scan output) stays
in the CPU caches and lives in a few buffers reused from chunk to chunk, instead of ~20
full-length ``[L, ·]`` tensors per block (each newly allocated, page-faulted in and streamed
through memory several times). Between chunks only the causal conv's last ``K - 1`` inputs
(kept above the chunk in the in_proj buffer) and the scan state ``[Di, N]`` are carried, so the
result is the whole-sequence block's up to float32 rounding (the GEMMs see other row counts).

Per chunk, in phases separated by barriers:

1. LayerNorm and in_proj (a GEMM) on a share of the chunk's rows per lane (together with the
   previous chunk's phase 4);
2. causal conv + SiLU (:func:`upsr.nn._scan_numba._conv_silu_cl_serial`) and x_proj (a GEMM)
   on the same rows;
3. one numba pass for Δ, softplus, the scan, D skip and SiLU(z) gate on a share of the
   channels per lane (:func:`upsr.nn._scan_numba._mamba_scan_cl_serial`, state carried);
4. out_proj and the residual add in one ``addmm`` on a share of the rows.

**Lanes.** With ``n`` torch threads the phases run on ``n`` lanes: the calling thread and
``n - 1`` worker threads of this module, with torch at one thread and the numba kernels
compiled serial. Neither torch's OpenMP pool nor numba's is used here on purpose: they are two
different OpenMP runtimes (torch ships its own libgomp), and each one's idle workers spin for
several milliseconds after every parallel region (measured: 5–10 ms of CPU after a torch
``mm``, 4–8 ms after a numba ``prange``), so alternating them every chunk left one core
spinning while the other runtime waited for it (2 threads: 15× slower than 1). The lanes
block on locks instead of spinning.

``out`` may be ``h`` itself (a residual stream updated in place: each chunk's rows are read in
phase 1 and written in phase 4). ``proj_dtype=torch.bfloat16`` runs in_proj and out_proj as
bf16 GEMMs (weights cast once per call); the kernels, the scan state, x_proj and the residual
stream stay float32.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
import typing as tp

import torch
import torch.nn.functional as F
from torch import nn

if tp.TYPE_CHECKING:
    from upsr.nn.mamba import Mamba

# in_proj's float32 output per chunk and lane, bytes: it stays in a core's L2 (1 MiB on the
# machine this was tuned on: chunk sizes 256-16384 measured, this is the best for Di 32-512)
LANE_BYTES = 1 << 20
MIN_CHUNK = 256  # steps: below this the per-chunk overhead (~50 µs of calls and barriers) shows


def chunk_steps(d_inner: int, lanes: int = 1) -> int:
    """Time steps per chunk for a block of ``d_inner`` channels run on ``lanes`` lanes."""
    return max(MIN_CHUNK, lanes * LANE_BYTES // (2 * d_inner * 4))


class _Lanes:
    """The calling thread plus ``n - 1`` daemon worker threads; :meth:`run` runs one function
    per lane and returns when all are done (re-raising the first error)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._inbox: list[queue.SimpleQueue[tp.Callable[[], None]]] = []
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        for i in range(n - 1):
            inbox: queue.SimpleQueue[tp.Callable[[], None]] = queue.SimpleQueue()
            self._inbox.append(inbox)
            threading.Thread(target=self._work, args=(inbox,), daemon=True,
                             name=f"upsr-mamba-lane-{i + 1}").start()

    def _work(self, inbox: queue.SimpleQueue[tp.Callable[[], None]]) -> None:
        while True:
            fn = inbox.get()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._done.put(exc)
            else:
                self._done.put(None)

    def run(self, fns: list[tp.Callable[[], None]]) -> None:
        for inbox, fn in zip(self._inbox, fns[1:]):
            inbox.put(fn)
        error: BaseException | None = None
        try:
            fns[0]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others
            error = exc
        for _ in fns[1:]:
            got = self._done.get()
            error = error or got
        if error is not None:
            raise error


_LANES: dict[int, _Lanes] = {}
_LANES_LOCK = threading.Lock()


def _forget_lanes_after_fork() -> None:
    """A forked child has none of the parent's worker threads: start new ones on demand."""
    global _LANES_LOCK
    _LANES.clear()
    _LANES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_lanes_after_fork)


_WORKER = threading.local()


def _init_worker() -> None:
    """Torch at one thread and in inference mode for good in a worker (both are per-thread
    settings; the workers only ever run :func:`mamba_chunked`'s phases, which write into the
    caller's tensors, inference tensors included, and keep none of their own)."""
    torch.set_num_threads(1)
    _WORKER.mode = torch.inference_mode()
    _WORKER.mode.__enter__()


def _lanes(n: int) -> _Lanes:
    with _LANES_LOCK:
        if n not in _LANES:
            lanes = _LANES[n] = _Lanes(n)
            lanes.run([lambda: None] + [_init_worker] * (n - 1))
        return _LANES[n]


def _split(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges covering ``0 .. total`` (multiples of ``align`` but the
    last); empty ranges where there is too little to share."""
    share = -(-total // parts)
    step = -(-share // align) * align
    return [(min(total, i * step), min(total, (i + 1) * step)) for i in range(parts)]


def _np(t: torch.Tensor) -> tp.Any:
    return t.detach().numpy()


def mamba_chunked(m: Mamba, h: torch.Tensor, out: torch.Tensor | None = None, *,
                  norm: nn.LayerNorm | None = None, residual: torch.Tensor | None = None,
                  proj_dtype: torch.dtype = torch.float32,
                  out_proj_dtype: torch.dtype | None = None, chunk: int | None = None,
                  lanes: int | None = None) -> torch.Tensor:
    """``out = residual + m(norm(h))`` (``residual``/``norm`` optional), inference on CPU.

    ``h, residual, out: [B, L, d_model]`` float32, C-contiguous; ``out`` (allocated when
    None) may be ``h`` or ``residual`` (in place). ``norm``: a LayerNorm over ``d_model``
    applied to ``h`` first. ``proj_dtype``: float32, or bfloat16 for in_proj and (unless
    ``out_proj_dtype`` says otherwise) out_proj.
    ``chunk``: steps per chunk (default :func:`chunk_steps`); ``lanes``: threads (default
    torch's thread count). Returns ``out``.
    """
    from upsr.nn._scan_numba import (
        _conv_silu_cl_serial,
        _mamba_scan_cl_serial,
        compile_notice,
    )

    bsz, length, d_model = h.shape
    if d_model != m.d_model or h.dtype != torch.float32 or not h.is_contiguous():
        raise ValueError(f"mamba_chunked: h must be a contiguous float32 [B, L, {m.d_model}] "
                         f"tensor, got {h.dtype} {list(h.shape)}")
    if out is None:
        out = torch.empty_like(h)
    for t, what in ((out, "out"), (residual, "residual")):
        if t is not None and (t.shape != h.shape or t.dtype != torch.float32
                              or not t.is_contiguous()):
            raise ValueError(f"mamba_chunked: {what} must be a contiguous float32 "
                             f"{list(h.shape)} tensor")
    if chunk is not None and chunk < 1:
        raise ValueError(f"mamba_chunked: chunk must be >= 1, got {chunk}")
    if length == 0:
        return out
    threads = torch.get_num_threads()
    n_lanes = max(1, threads if lanes is None else lanes)
    di, k, n_state, rank = m.d_inner, m.d_conv, m.d_state, m.dt_rank
    steps = min(length, chunk_steps(di, n_lanes) if chunk is None else chunk)
    low = proj_dtype != torch.float32
    out_dtype = proj_dtype if out_proj_dtype is None else out_proj_dtype
    low_out = out_dtype != torch.float32
    compile_notice(_mamba_scan_cl_serial, "channel-last forward")
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        w_in = m.in_proj.weight.detach().to(proj_dtype).t()  # [d_model, 2·Di]
        w_out = m.out_proj.weight.detach().to(out_dtype).t()  # [Di, d_model]
        b_in = None if m.in_proj.bias is None else m.in_proj.bias.detach().to(proj_dtype)
        b_out = None if m.out_proj.bias is None else m.out_proj.bias.detach().float()
        w_x = m.x_proj.weight.detach().float().t()  # [Di, R+2N]
        w_conv = _np(m.conv1d.weight.detach()[:, 0, :].float().t().contiguous())  # [K, Di]
        b_conv = _np(torch.zeros(di) if m.conv1d.bias is None
                     else m.conv1d.bias.detach().float().contiguous())
        wdt_t = _np(m.dt_proj.weight.detach().float().t().contiguous())  # [R, Di]
        bdt = _np(m.dt_proj.bias.detach().float().contiguous())
        a_t = _np((-torch.exp(m.A_log.detach().float()) * math.log2(math.e)).t().contiguous())
        d_skip = _np(m.D.detach().float().contiguous())
        # in_proj output (x, then z) of the chunk below the K - 1 conv inputs before it
        xz = torch.empty(1, k - 1 + steps, 2 * di)
        xc = torch.empty(1, steps, di)  # SiLU(conv(x))
        xdbl = torch.empty(1, steps, rank + 2 * n_state)
        y = torch.empty(1, steps, di)  # gated scan output
        state = torch.empty(1, di, n_state)
        xz_np, xc_np, xdbl_np, y_np, state_np = map(_np, (xz, xc, xdbl, y, state))
        channels = _split(di, n_lanes, 16)
        scan_block = min(128, max(1, channels[0][1]))
        pool = _lanes(n_lanes) if n_lanes > 1 else None

        def run(fns: list[tp.Callable[[], None]]) -> None:
            if pool is None:
                fns[0]()
            else:
                pool.run(fns)

        def project_in(b: int, t0: int, r0: int, r1: int) -> None:
            """Phase 1, chunk rows r0..r1 (sequence steps t0 + r)."""
            if r0 >= r1:
                return
            a = h[b, t0 + r0:t0 + r1]
            if norm is not None:
                a = F.layer_norm(a, (d_model,), norm.weight, norm.bias, norm.eps)
            dst = xz[0, k - 1 + r0:k - 1 + r1]
            if low:
                p = torch.mm(a.to(proj_dtype), w_in)
                dst.copy_(p if b_in is None else p + b_in)
            elif b_in is None:
                torch.mm(a, w_in, out=dst)
            else:
                torch.addmm(b_in, a, w_in, out=dst)

        def conv_x_proj(r0: int, r1: int) -> None:
            """Phase 2: conv + SiLU and x_proj, chunk rows r0..r1."""
            if r0 >= r1:
                return
            _conv_silu_cl_serial(xz_np[:, k - 1 + r0:k - 1 + r1], xz_np[:, r0:r0 + k - 1],
                                 w_conv, b_conv, xc_np[:, r0:r1])
            torch.mm(xc[0, r0:r1], w_x, out=xdbl[0, r0:r1])

        def scan(n: int, c0: int, c1: int, carry: bool) -> None:
            """Phase 3: the scan of the chunk's n steps, channels c0..c1."""
            if c0 < c1:
                _mamba_scan_cl_serial(xc_np[:, :n], xdbl_np[:, :n], rank, wdt_t, bdt, a_t,
                                      d_skip, xz_np[:, k - 1:k - 1 + n], di, True, y_np[:, :n],
                                      state_np, carry, c0, c1, scan_block)

        def project_out(b: int, t0: int, r0: int, r1: int) -> None:
            """Phase 4: out_proj + residual, chunk rows r0..r1."""
            if r0 >= r1:
                return
            o = out[b, t0 + r0:t0 + r1]
            r = None if residual is None else residual[b, t0 + r0:t0 + r1]
            src = y[0, r0:r1]
            if low_out:
                p = torch.mm(src.to(out_dtype), w_out)
                if r is None:
                    o.copy_(p)
                else:
                    torch.add(r, p, out=o)
            elif r is None:
                torch.mm(src, w_out, out=o)
            elif r.data_ptr() == o.data_ptr():  # in place: out is residual
                o.addmm_(src, w_out)
            else:
                torch.addmm(r, src, w_out, out=o)
            if b_out is not None:
                o.add_(b_out)

        def phase1(b: int, t0: int, rows: tuple[int, int], prev: tuple[int, int, int] | None,
                   prev_rows: tuple[int, int] | None) -> tp.Callable[[], None]:
            def fn() -> None:
                if prev is not None and prev_rows is not None:  # the previous chunk's phase 4
                    project_out(prev[0], prev[1], *prev_rows)
                project_in(b, t0, *rows)
            return fn

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            prev: tuple[int, int, int] | None = None  # (batch row, t0, n) waiting for phase 4
            for b in range(bsz):
                xz[0, :k - 1].zero_()
                for t0 in range(0, length, steps):
                    n = min(steps, length - t0)
                    rows = _split(n, n_lanes, 16)
                    prev_rows = _split(prev[2], n_lanes, 16) if prev else [None] * n_lanes
                    run([phase1(b, t0, rows[i], prev, prev_rows[i]) for i in range(n_lanes)])
                    run([functools.partial(conv_x_proj, *r) for r in rows])
                    run([functools.partial(scan, n, c0, c1, t0 > 0) for c0, c1 in channels])
                    # the next chunk's conv inputs: the last K-1 of this one (and before it)
                    if k > 1:
                        xz[0, :k - 1, :di].copy_(xz[0, n:n + k - 1, :di].clone())
                    prev = (b, t0, n)
            if prev is not None:
                run([functools.partial(project_out, prev[0], prev[1], *r)
                     for r in _split(prev[2], n_lanes, 16)])
        finally:
            torch.set_num_threads(torch_threads)
    return out
