"""Mamba inference on the CPU, one time chunk after the other (channel-last, no autograd).

:func:`mamba_chunked` computes ``out = residual + Mamba(norm(h))`` for ``h: [B, L, d_model]``
in chunks of a few thousand steps, so that every intermediate of the block (in_proj's output
``[T, 2·Di]``, the conv output, x_proj's output, the gated scan output) stays in the CPU caches
and lives in a few buffers reused from chunk to chunk, instead of ~20 full-length ``[L, ·]``
tensors per block (each newly allocated, page-faulted in and streamed through memory several
times). Between chunks only the causal conv's last ``K - 1`` inputs and the scan state
``[Di, N]`` are carried, so the result is the whole-sequence block's up to float32 rounding
(the GEMMs see other row counts).

Per chunk: LayerNorm (torch), in_proj (a GEMM), causal conv + SiLU
(:func:`upsr.nn._scan_numba._conv_silu_cl`, with the carried inputs), x_proj (a GEMM), one
numba pass for Δ, softplus, the scan, D skip and SiLU(z) gate (``_mamba_scan_cl`` with the
carried state), then out_proj and the residual add in one ``addmm``. ``out`` may be ``h``
itself (a residual stream updated in place: each chunk reads its rows of ``h`` before writing
them). ``proj_dtype=torch.bfloat16`` runs in_proj and out_proj as bf16 GEMMs (weights cast once
per call); the kernels, the scan state, x_proj and the residual stream stay float32.
"""

from __future__ import annotations

import math
import typing as tp

import numba
import torch
import torch.nn.functional as F
from torch import nn

if tp.TYPE_CHECKING:
    from upsr.nn.mamba import Mamba

# in_proj's float32 output per chunk, bytes: [T, 2·Di] stays in a core's L2 (1 MiB on the
# machine this was tuned on) with the other per-chunk buffers in the shared L3
CHUNK_BYTES = 1 << 20
MIN_CHUNK = 256  # steps: below this the per-chunk call overhead (~50 µs) starts to show


def chunk_steps(d_inner: int) -> int:
    """Time steps per chunk for a block of ``d_inner`` channels."""
    return max(MIN_CHUNK, CHUNK_BYTES // (2 * d_inner * 4))


def _np(t: torch.Tensor) -> tp.Any:
    return t.detach().numpy()


def mamba_chunked(m: Mamba, h: torch.Tensor, out: torch.Tensor | None = None, *,
                  norm: nn.LayerNorm | None = None, residual: torch.Tensor | None = None,
                  proj_dtype: torch.dtype = torch.float32,
                  chunk: int | None = None) -> torch.Tensor:
    """``out = residual + m(norm(h))`` (``residual``/``norm`` optional), inference on CPU.

    ``h, residual, out: [B, L, d_model]`` float32, C-contiguous; ``out`` (allocated when
    None) may be ``h`` or ``residual`` (in place). ``norm``: a LayerNorm over ``d_model``
    applied to ``h`` first. ``proj_dtype``: float32, or bfloat16 for in_proj/out_proj.
    ``chunk``: steps per chunk (default :func:`chunk_steps`). Returns ``out``.
    """
    from upsr.nn._scan_numba import _conv_silu_cl, _mamba_scan_cl, _num_threads, compile_notice

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
    if length == 0:
        return out
    di, k, n_state, rank = m.d_inner, m.d_conv, m.d_state, m.dt_rank
    steps = min(length, chunk_steps(di) if chunk is None else chunk)
    if steps < 1:
        raise ValueError(f"mamba_chunked: chunk must be >= 1, got {chunk}")
    f32 = torch.float32
    low = proj_dtype != f32
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        w_in = m.in_proj.weight.detach().to(proj_dtype).t()  # [d_model, 2·Di]
        w_out = m.out_proj.weight.detach().to(proj_dtype).t()  # [Di, d_model]
        b_in = None if m.in_proj.bias is None else m.in_proj.bias.detach().to(proj_dtype)
        b_out = None if m.out_proj.bias is None else m.out_proj.bias.detach().float()
        w_x = m.x_proj.weight.detach().float().t()  # [Di, R+2N]
        w_conv = _np(m.conv1d.weight.detach()[:, 0, :].float().contiguous())
        b_conv = _np(torch.zeros(di) if m.conv1d.bias is None
                     else m.conv1d.bias.detach().float().contiguous())
        wdt_t = _np(m.dt_proj.weight.detach().float().t().contiguous())  # [R, Di]
        bdt = _np(m.dt_proj.bias.detach().float().contiguous())
        a_t = _np((-torch.exp(m.A_log.detach().float()) * math.log2(math.e)).t().contiguous())
        d_skip = _np(m.D.detach().float().contiguous())
        xz = torch.empty(1, steps, 2 * di)  # in_proj output: x, then z
        xc = torch.empty(1, steps, di)  # SiLU(conv(x))
        xdbl = torch.empty(1, steps, rank + 2 * n_state)
        y = torch.empty(1, steps, di)  # gated scan output
        hist = torch.empty(1, k - 1, di)  # conv inputs before the chunk
        state = torch.empty(1, di, n_state)
        xz_np, xc_np, xdbl_np, y_np = _np(xz), _np(xc), _np(xdbl), _np(y)
        hist_np, state_np = _np(hist), _np(state)
        threads = _num_threads()
        numba.set_num_threads(threads)
        compile_notice(_mamba_scan_cl, "channel-last forward")
        scan_block = min(di, -(-min(128, -(-di // threads)) // 16) * 16)
        for b in range(bsz):
            hist.zero_()
            for t0 in range(0, length, steps):
                t1 = min(length, t0 + steps)
                n = t1 - t0
                a = h[b, t0:t1]
                if norm is not None:
                    a = F.layer_norm(a, (d_model,), norm.weight, norm.bias, norm.eps)
                xz2 = xz[0, :n]
                if low:
                    p = torch.mm(a.to(proj_dtype), w_in)
                    xz2.copy_(p if b_in is None else p + b_in)
                elif b_in is None:
                    torch.mm(a, w_in, out=xz2)
                else:
                    torch.addmm(b_in, a, w_in, out=xz2)
                conv_block = max(64, -(-n // (4 * threads)))
                _conv_silu_cl(xz_np[:, :n], hist_np, w_conv, b_conv, xc_np[:, :n], conv_block,
                              False)
                if t1 < length:  # the next chunk's conv sees this one's last K-1 inputs
                    if n >= k - 1:
                        hist[0].copy_(xz2[n - (k - 1):, :di])
                    else:  # a chunk shorter than the conv (chunk < K - 1)
                        hist[0].copy_(torch.cat([hist[0], xz2[:, :di]])[n:])
                torch.mm(xc[0, :n], w_x, out=xdbl[0, :n])
                _mamba_scan_cl(xc_np[:, :n], xdbl_np[:, :n], rank, wdt_t, bdt, a_t, d_skip,
                               xz_np[:, :n], di, True, False, False, y_np[:, :n], state_np,
                               t0 > 0, scan_block)
                o = out[b, t0:t1]
                r = None if residual is None else residual[b, t0:t1]
                if low:
                    p = torch.mm(y[0, :n].to(proj_dtype), w_out)
                    if r is None:
                        o.copy_(p)
                    else:
                        torch.add(r, p, out=o)
                elif r is None:
                    torch.mm(y[0, :n], w_out, out=o)
                elif r.data_ptr() == o.data_ptr():  # in place: out is residual
                    o.addmm_(y[0, :n], w_out)
                else:
                    torch.addmm(r, y[0, :n], w_out, out=o)
                if b_out is not None:
                    o.add_(b_out)
    return out
