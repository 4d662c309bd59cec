"""Mamba inference in plain torch for tiny widths: a time-major, blocked selective scan.

For a block whose state is small (``d_inner·d_state`` of a few dozen numbers per row, as in the
10-30 k-parameter AEROMambas), the numba kernels of :mod:`upsr.nn._scan_numba` cost more to
bring up than to run: importing numba (with the scipy.linalg it loads) and loading the cached
kernels takes ~1.2 CPU s and ~120 MiB per process, more than a whole one-minute stereo file
through such a model needs for its scans. This path needs nothing but torch.

The recurrence (:mod:`upsr.nn.scan`) ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t = exp(Δ_t·A)``
and ``b_t = Δ_t·u_t·B_t`` runs on ``M = batch·d_inner·d_state`` lanes at once, time-major
(``[L, M]``), in segments of ``SEGMENT`` steps (bounded temporaries, cache-sized):

1. inside a segment, blocks of ``BLOCK`` steps are scanned side by side from a zero state, one
   step of every block per torch op (``BLOCK`` ops), and the decay ``P_t = a_1···a_t`` since
   the block's start is accumulated alongside;
2. the state entering each block follows from the block ends in order (one small op per
   block): ``s_{k+1} = P_end[k]·s_k + h_end[k]``, ``s_0`` = the previous segment's last state;
3. every step gets its block's entering state: ``h_t += P_t·s_k``.

Every factor is a product of ``a ∈ (0, 1]``: nothing overflows (unlike a log-space cumulative
sum), and the result equals the step-by-step recurrence up to float rounding.
"""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F

if tp.TYPE_CHECKING:
    from upsr.nn.mamba import Mamba

BLOCK = 64       # steps per block scanned side by side
SEGMENT = 8192   # steps per segment (temporaries ~ SEGMENT·M floats)
#: Widths (``d_inner·d_state`` per row) up to which :class:`upsr.nn.Mamba` takes this path on
#: CPU inference. Measured against the numba kernels (1 thread, CPU seconds, 4 rows of 20,000
#: steps, loaded machine): d_inner·d_state 32: 31 ms against 14 (numba), 64: 57 against 19,
#: 128: 79-141 against 18-31. At 32 the difference over the 24 calls of a one-minute stereo
#: file (~0.5 s) is less than numba's start (~1.2 s, ~120 MiB: benchmarks/enhance.py).
MAX_STATE = 32


def linear_recurrence_(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                       block: int = BLOCK) -> torch.Tensor:
    """``h_t = a_t·h_{t-1} + b_t`` along dim 0 of ``a, b: [L, M]`` (``h_{-1} = h0 [M]``, or
    zero), written into ``b`` (returned); ``a`` (values in [0, 1]) is overwritten too."""
    length = b.shape[0]
    if length == 0:
        return b
    if h0 is not None:
        b[0].addcmul_(a[0], h0)
    full = length // block * block
    if full >= 2 * block:
        nb = full // block
        av = a[:full].view(nb, block, -1)
        hv = b[:full].view(nb, block, -1)
        for t in range(1, block):  # every block from a zero state (block 0: from h0)
            hv[:, t].addcmul_(av[:, t], hv[:, t - 1])
            av[:, t].mul_(av[:, t - 1])  # decay since the block's start
        state = hv[0, -1]
        for k in range(1, nb):  # the state entering each block, in order
            hv[k].addcmul_(av[k], state)
            state = hv[k, -1]
        start = full
    else:
        start = 1
    for t in range(start, length):
        b[t].addcmul_(a[t], b[t - 1])
    return b


def mamba_forward_small(m: Mamba, hidden_states: torch.Tensor) -> torch.Tensor:
    """:meth:`upsr.nn.Mamba.forward` in plain torch (inference, float32):
    ``hidden_states [B, L, d_model] -> [B, L, d_model]``. Same math as the general path
    (in_proj, causal depthwise conv + SiLU, x_proj, Δ = softplus(dt_proj), the scan, D skip,
    SiLU(z) gate, out_proj), computed time-major ``[L, B, ·]``. Runs on one thread: its
    operations are small (at most ``SEGMENT·M`` numbers), and with two threads each became
    a parallel region whose start and join cost more than the split saved (measured on the
    loaded machine: 23 ms at 1 thread, 49-346 ms at 2, one 4-row 20,000-step call)."""
    threads = torch.get_num_threads()
    if threads == 1:
        return _forward_small(m, hidden_states)
    torch.set_num_threads(1)
    try:
        return _forward_small(m, hidden_states)
    finally:
        torch.set_num_threads(threads)


def _forward_small(m: Mamba, hidden_states: torch.Tensor) -> torch.Tensor:
    bsz, length, _ = hidden_states.shape
    di, n, rank, k = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    h = hidden_states.transpose(0, 1).float().contiguous()           # [L, B, d_model]
    xz = m.in_proj(h)                                                # [L, B, 2·Di]
    x, z = xz[..., :di], xz[..., di:]
    w = m.conv1d.weight[:, 0, :]                                     # [Di, K]
    xp = F.pad(x, (0, 0, 0, 0, k - 1, 0))                            # zeros before t = 0
    u = xp[k - 1:] * w[:, k - 1]
    if m.conv1d.bias is not None:
        u += m.conv1d.bias
    for j in range(k - 1):
        u.addcmul_(xp[j:j + length], w[:, j])
    u = F.silu(u, inplace=True)                                      # [L, B, Di]
    xdbl = m.x_proj(u)                                               # [L, B, R+2N]
    dt, bm, cm = xdbl.split([rank, n, n], dim=-1)
    delta = F.softplus(m.dt_proj(dt))                                # [L, B, Di]
    du = (delta * u).view(length, 1, bsz * di)                     # [L, 1, B·Di]
    # lanes ordered (state, batch, channel): the per-step products run over B·Di contiguous
    # numbers instead of N (a broadcast over a last axis of 4-16 is several times slower)
    A = (-torch.exp(m.A_log.float())).t()                            # [N, Di]
    A = A[:, None, :].expand(n, bsz, di).reshape(1, n, bsz * di)
    bt = bm.transpose(1, 2)[..., None]                               # [L, N, B, 1]
    ct = cm.transpose(1, 2)[..., None]
    delta = delta.view(length, 1, bsz * di)
    y = torch.empty_like(u)
    seg = min(length, SEGMENT)
    a_buf, b_buf = u.new_empty(seg, n, bsz * di), u.new_empty(seg, n, bsz, di)
    state: torch.Tensor | None = None
    for s0 in range(0, length, SEGMENT):
        s1 = min(length, s0 + SEGMENT)
        a, b = a_buf[:s1 - s0], b_buf[:s1 - s0]                      # [S, N, B·Di]
        torch.exp(torch.mul(delta[s0:s1], A, out=a), out=a)
        torch.mul(du[s0:s1].view(s1 - s0, 1, bsz, di), bt[s0:s1], out=b)
        hs = linear_recurrence_(a.view(s1 - s0, -1), b.view(s1 - s0, -1), state, BLOCK)
        state = hs[-1].clone()
        ys, c = y[s0:s1], ct[s0:s1]                                  # y_t = <h_t, C_t>
        torch.mul(b[:, 0], c[:, 0], out=ys)
        for j in range(1, n):
            ys.addcmul_(b[:, j], c[:, j])
    y.addcmul_(u, m.D.float()).mul_(F.silu(z.contiguous()))
    out = m.out_proj(y)                                              # [L, B, d_model]
    return out.transpose(0, 1).to(hidden_states.dtype)


__all__ = ["BLOCK", "MAX_STATE", "SEGMENT", "linear_recurrence_", "mamba_forward_small"]
