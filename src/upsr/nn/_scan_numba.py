"""CPU kernels for the selective-scan recurrence (numba), forward and backward.

The recurrence of :mod:`upsr.nn.scan` (Gu & Dao 2023, Algorithm 2), for one (batch, channel)::

    h_l = a_l ⊙ h_{l-1} + Δ_l·u_l·B_l,   a_l = exp(Δ_l·A) ∈ (0, 1]^N,   y_l = ⟨h_l, C_l⟩

is run directly, one step after the other, in the input precision. That is stable for any Δ:
every factor ``a_l`` is at most 1, so nothing overflows (a log-space cumulative sum would, once
``Σ Δ·|A|`` over a chunk passes ~88 in float32). Parallelism is over (batch, channel) pairs.

Backward is the adjoint recurrence run in reverse time (λ_l = g_l·C_l + a_{l+1} ⊙ λ_{l+1})::

    ∂u_l = Δ_l ⟨λ_l, B_l⟩            ∂Δ_l = ⟨λ_l, B_l·u_l + A ⊙ a_l ⊙ h_{l-1}⟩
    ∂A  += Δ_l λ_l ⊙ a_l ⊙ h_{l-1}   ∂B_l += Δ_l u_l λ_l            ∂C_l += g_l h_l

It needs ``h_{l-1}`` in reverse order. Running the recurrence backwards divides by ``a_l``,
which blows up, so the forward pass stores the state at the start of every ``CHUNK`` steps
(``[Bsz, Di, ceil(L/CHUNK), N]``) and the backward recomputes each chunk's states from its
checkpoint. ``B``/``C`` are shared by many channels, so each worker accumulates their gradients
in its own slice ``[worker, ...]``; the slices are summed afterwards, in a fixed order, which
also makes the result deterministic for a given thread count.

The ``D·u`` skip and the multiplication by the gate ``SiLU(z)`` are fused into both kernels (the
backward recomputes ``y_l = ⟨h_l, C_l⟩`` for the gate's gradient), saving several passes over
``[Bsz, Di, L]`` tensors. In these autograd kernels the transcendental parts (softplus of Δ, SiLU
of z) stay in torch.

Inference (no autograd) has channel-last kernels instead, used by :class:`upsr.nn.Mamba` and
:class:`upsr.nn.BiMamba`: :func:`conv_silu_channel_last` (causal or anti-causal depthwise conv +
SiLU on in_proj's output in place) and :func:`mamba_scan_channel_last` (Δ's low-rank projection,
softplus, the scan, D skip and SiLU gate in one pass, forwards or backwards in time). Their
loops run over channels innermost, so LLVM vectorises the state update across channels with
B_t, C_t broadcast; softplus and SiLU use the vectorisable :func:`_expf` / :func:`_log1pf`.

Array layouts (all C-contiguous): ``u, delta: [Bsz, Di, L]``; ``A: [Di, N]``;
``Bt, Ct: [Bb, G, Lb, N]`` (time last-but-one so the inner loop over N is contiguous; ``Bb`` is
1 or Bsz, ``Lb`` is 1 or L, ``G`` divides Di).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

log = logging.getLogger(__name__)

CHUNK = 64  # steps between stored states: memory B·Di·N·L/CHUNK, recompute one forward

# Only these fast-math flags: reassociation lets LLVM vectorise the sum over states, contraction
# allows FMA. No 'nnan'/'ninf': NaN and inf inputs must still propagate as in the reference.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _njit(**kw: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **kw)``, falling back to no cache where none can be written.

    numba refuses ``cache=True`` at decoration time when it finds no writable cache location
    (read-only install, no home directory); compiling on first use still works then.
    """

    def deco(fn: Callable[..., Any]) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", numba.NumbaWarning)
                return numba.njit(cache=True, **kw)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **kw)(fn)

    return deco


@intrinsic
def _bits_as_f32(typingctx: Any, bits: Any) -> Any:
    """Reinterpret the low 32 bits of an integer as float32 (an LLVM bitcast: it vectorises)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        low = args[0]
        if bits.bitwidth > 32:  # type: ignore[attr-defined]
            low = builder.trunc(low, ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f32_as_bits(typingctx: Any, x: Any) -> Any:
    """The bits of a float32 as an int32 (an LLVM bitcast: it vectorises)."""
    if x != types.float32:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


def exp_ad(x):  # type: ignore[no-untyped-def]  # numba matches this signature exactly
    """``exp(x)`` for the discretisation ``exp(Δ·A)``: float32 gets a vectorisable version."""
    return math.exp(x)


@_njit(fastmath=FASTMATH - {"reassoc"})
def _expf(x):  # pragma: no cover - compiled
    """float32 exp that LLVM can vectorise (libm's expf is an opaque call; numba has no SVML).

    Cody–Waite reduction ``x = k·ln2 + r`` with ``|r| ≤ ln2/2`` (ln2 split in a hi part exact in
    float32 and a lo correction), a degree-6 Taylor polynomial for ``exp(r)`` (truncation
    < 1.2e-7 relative), and ``2**k`` built from its exponent bits. Below -87.3 the result is 0
    (libm gives a denormal < 1.2e-38 there), above log(FLT_MAX) inf (between 88.37 and 88.72
    it saturates near 2.4e38); NaN stays NaN. Max error 2.6 ulp (measured over [-87, 80]).
    Compiled without 'reassoc' (the flags are per instruction and survive inlining):
    reassociating ``xc - k·hi - k·lo`` loses the point of the split (5 ulp).
    """
    f = np.float32
    xc = min(max(x, f(-87.3)), f(88.37))  # 2**k stays a normal float32
    k = np.floor(xc * f(1.4426950408889634) + f(0.5))
    r = xc - k * f(0.693145751953125) - k * f(1.428606765330187e-06)
    p = f(1.0 / 720.0)
    p = p * r + f(1.0 / 120.0)
    p = p * r + f(1.0 / 24.0)
    p = p * r + f(1.0 / 6.0)
    p = p * r + f(0.5)
    p = p * r + f(1.0)
    p = p * r + f(1.0)
    scale = _bits_as_f32((np.int32(k) + 127) << 23)
    out = p * scale
    if x < f(-87.3):
        out = f(0.0)
    if x > f(88.72):  # log(FLT_MAX)
        out = f(np.inf)
    if x != x:
        out = x
    return out


@overload(exp_ad, jit_options={"fastmath": FASTMATH})
def _exp_ad_overload(x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _expf(x)
    return lambda x: math.exp(x)


def exp2_ad(x):  # type: ignore[no-untyped-def]  # numba matches this signature exactly
    """``2**x`` for the discretisation ``exp(Δ·A) = 2**(Δ·A·log2(e))``: float32 gets a
    vectorisable version."""
    return 2.0**x


# 1.5·2**23 + 127: adding it to |x| ≤ 2**22 rounds x to the nearest integer k and leaves
# k + 127 (2**k's exponent field) in the low mantissa bits of the sum
_EXP2_ROUND = 12583039.0


@_njit(fastmath=FASTMATH - {"reassoc"})
def _exp2f(x):  # pragma: no cover - compiled
    """float32 ``2**x`` that LLVM vectorises, cheaper than :func:`_expf` (the scan's hot loop
    evaluates one per state update): ``x = k + r``, ``k = round(x)``, ``|r| ≤ ½`` exactly
    (no ln2 split needed), ``2**r`` by a degree-5 polynomial with constant term exactly 1
    (so ``2**0 == 1``: a state with Δ ≈ 0 must not grow by an ulp per step) fitted to minimise
    the relative error on [-½, ½] (9.1e-8), ``2**k`` from its exponent bits. Below -126.5 the
    result is 0 (flushed denormals), above 127.5 inf (``2**k`` with k = 128 is inf's bit
    pattern); NaN stays NaN. Max error 2 ulp (measured over [-126, 127]). mamba_ssm's CUDA
    kernel computes the discretisation the same way (exp2f of Δ·A·log2 e).

    The rounding is the add of :data:`_EXP2_ROUND` (round to nearest even; no floor, no
    float-to-int conversion), whose sum already holds ``k + 127`` in its low bits, so ``2**k``
    is one shift of those bits (16 vector instructions per state update with the update
    itself, 21 with ``floor``/``cvt``). NaN needs no test: the clamps keep it (``max`` and
    ``min`` return ``x`` when it is NaN), and so do ``r`` and the polynomial. Compiled without
    'reassoc', which would fold ``(x + c) - c`` to ``x`` (flags are per instruction, so this
    holds where it is inlined too).
    """
    f = np.float32
    xc = min(max(x, f(-127.0)), f(128.0))
    t = xc + f(_EXP2_ROUND)
    r = xc - (t - f(_EXP2_ROUND))
    p = f(0.0013264727)
    p = p * r + f(0.009671513)
    p = p * r + f(0.055507336)
    p = p * r + f(0.24022242)
    p = p * r + f(0.69314700)
    p = p * r + f(1.0)
    return p * _bits_as_f32(_f32_as_bits(t) << 23)


@overload(exp2_ad, jit_options={"fastmath": FASTMATH})
def _exp2_ad_overload(x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp2f(x)
    return lambda x: math.exp(x * 0.6931471805599453)


@_njit(fastmath=FASTMATH - {"reassoc"}, error_model="numpy")
def _log1pf(y):  # pragma: no cover - compiled
    """float32 ``log1p(y)`` for ``y ≥ 0`` that LLVM can vectorise (no libm call).

    ``s = 1 + y = 2**e·m`` with ``m ∈ [√½, √2)`` from the exponent bits; ``log m = 2·atanh(f)``,
    ``f = (m-1)/(m+1)``, ``|f| ≤ 0.172``, as the odd series to ``f⁹/9`` (truncation < 3e-9
    relative); ``log s = e·ln2 + log m`` with ln2 split hi/lo. The rounding of ``1 + y`` is
    undone by Goldberg's correction ``log1p(y) = log(s)·y/(s-1)`` (exact ``y`` where
    ``s == 1``), so small ``y`` keep full relative precision. NaN stays NaN. Compiled without
    'reassoc' (fast-math flags are per instruction, so this holds where it is inlined too):
    reassociation would fold ``(1 + y) - 1`` to ``y`` and undo the correction.
    """
    f = np.float32
    s = f(1.0) + y
    bits = _f32_as_bits(s)
    ef = f(np.int32(bits >> 23)) - f(127.0)  # int32 → float32: one vector conversion
    m = _bits_as_f32((bits & 0x7FFFFF) | 0x3F800000)  # [1, 2)
    if m > f(1.4142135623730951):
        m = m * f(0.5)
        ef = ef + f(1.0)
    g = (m - f(1.0)) / (m + f(1.0))
    g2 = g * g
    p = f(1.0 / 9.0)
    p = p * g2 + f(1.0 / 7.0)
    p = p * g2 + f(1.0 / 5.0)
    p = p * g2 + f(1.0 / 3.0)
    p = p * g2 + f(1.0)
    log_s = ef * f(0.693145751953125) + (ef * f(1.428606765330187e-06) + f(2.0) * g * p)
    sm1 = s - f(1.0)
    out = log_s * (y / sm1)
    if sm1 == f(0.0):
        out = y
    return out


def softplus_ad(x):  # type: ignore[no-untyped-def]  # numba matches this signature exactly
    """``softplus(x) = log1p(exp(x))``, ``x`` itself above 20 (torch's default threshold)."""
    return x if x > 20.0 else math.log1p(math.exp(x))


@_njit(fastmath=FASTMATH, error_model="numpy")
def _softplusf(x):  # pragma: no cover - compiled
    """float32 softplus from :func:`_expf` and :func:`_log1pf` (both vectorisable)."""
    out = _log1pf(_expf(x))
    if x > np.float32(20.0):
        out = x
    return out


@overload(softplus_ad, jit_options={"fastmath": FASTMATH})
def _softplus_ad_overload(x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _softplusf(x)
    return lambda x: x if x > 20.0 else math.log1p(math.exp(x))


@_njit(parallel=True, nogil=True, fastmath=FASTMATH)
def _forward(u, delta, A, Bt, Ct, D, gate, has_gate, out, last, ckpt,
             save):  # pragma: no cover - compiled
    bsz, di, length = u.shape
    n_state = A.shape[1]
    gb = di // Bt.shape[1]
    gc = di // Ct.shape[1]
    for i in prange(bsz * di):
        b = i // di
        d = i % di
        bb = b if Bt.shape[0] > 1 else 0
        bc = b if Ct.shape[0] > 1 else 0
        tb = Bt.shape[2] > 1
        tc = Ct.shape[2] > 1
        a = A[d]
        h = np.zeros(n_state, dtype=u.dtype)
        for t in range(length):
            if save and t % CHUNK == 0:
                ckpt[b, d, t // CHUNK, :] = h
            dt = delta[b, d, t]
            ut = u[b, d, t]
            du = dt * ut
            brow = Bt[bb, d // gb, t if tb else 0]
            crow = Ct[bc, d // gc, t if tc else 0]
            acc = u.dtype.type(0.0)
            for n in range(n_state):
                hn = exp_ad(dt * a[n]) * h[n] + du * brow[n]
                h[n] = hn
                acc += hn * crow[n]
            o = acc + D[d] * ut
            if has_gate:
                o = o * gate[b, d, t]
            out[b, d, t] = o
        last[b, d, :] = h


@_njit(parallel=True, nogil=True, fastmath=FASTMATH)
def _backward(u, delta, A, Bt, Ct, D, gate, has_gate, gout, glast, ckpt,
              du_out, ddelta, dgate, dA_part, dB_part, dC_part,
              dD_part):  # pragma: no cover - compiled
    bsz, di, length = u.shape
    n_state = A.shape[1]
    n_work = dA_part.shape[0]
    gb = di // Bt.shape[1]
    gc = di // Ct.shape[1]
    n_chunks = (length + CHUNK - 1) // CHUNK
    for w in prange(n_work):
        hbuf = np.empty((CHUNK + 1, n_state), dtype=u.dtype)  # h_{t0-1} .. h_{t1-1}
        ebuf = np.empty((CHUNK, n_state), dtype=u.dtype)  # a_t = exp(Δ_t·A)
        eh = np.empty(n_state, dtype=u.dtype)
        lam = np.empty(n_state, dtype=u.dtype)
        dA_c = np.empty(n_state, dtype=u.dtype)
        dA_loc = np.empty(n_state, dtype=np.float64)
        for i in range(w, bsz * di, n_work):
            b = i // di
            d = i % di
            bb = b if Bt.shape[0] > 1 else 0
            bc = b if Ct.shape[0] > 1 else 0
            tb = Bt.shape[2] > 1
            tc = Ct.shape[2] > 1
            a = A[d]
            lam[:] = glast[b, d, :]
            dA_loc[:] = 0.0
            dD_loc = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * CHUNK
                t1 = min(length, t0 + CHUNK)
                hbuf[0, :] = ckpt[b, d, c, :]
                for t in range(t0, t1):  # recompute a_t and h_{t0} .. h_{t1-1}
                    k = t - t0
                    dt = delta[b, d, t]
                    dtu = dt * u[b, d, t]
                    brow = Bt[bb, d // gb, t if tb else 0]
                    hprev = hbuf[k]
                    hnext = hbuf[k + 1]
                    erow = ebuf[k]
                    for n in range(n_state):
                        erow[n] = exp_ad(dt * a[n])
                    for n in range(n_state):
                        hnext[n] = erow[n] * hprev[n] + dtu * brow[n]
                dA_c[:] = 0.0
                # The loops below are split so that each touches few arrays: LLVM vectorises a
                # loop over n only when it can rule out aliasing between all of them.
                for t in range(t1 - 1, t0 - 1, -1):
                    k = t - t0
                    dt = delta[b, d, t]
                    ut = u[b, d, t]
                    lb = t if tb else 0
                    lc = t if tc else 0
                    brow = Bt[bb, d // gb, lb]
                    crow = Ct[bc, d // gc, lc]
                    dbrow = dB_part[w, bb, d // gb, lb]
                    dcrow = dC_part[w, bc, d // gc, lc]
                    hprev = hbuf[k]
                    hcur = hbuf[k + 1]
                    erow = ebuf[k]
                    g = gout[b, d, t]
                    if has_gate:  # out = (y + D·u)·gate; y_t recomputed from h_t
                        ysum = u.dtype.type(0.0)
                        for n in range(n_state):
                            ysum += hcur[n] * crow[n]
                        dgate[b, d, t] = g * (ysum + D[d] * ut)
                        g = g * gate[b, d, t]
                    dD_loc += g * ut
                    for n in range(n_state):
                        lam[n] += g * crow[n]  # λ_t = g_t C_t + a_{t+1} ⊙ λ_{t+1}
                    for n in range(n_state):
                        dcrow[n] += g * hcur[n]
                    dtu = dt * ut
                    for n in range(n_state):
                        dbrow[n] += lam[n] * dtu
                    for n in range(n_state):
                        eh[n] = erow[n] * hprev[n]  # a_t ⊙ h_{t-1}
                    s_u = u.dtype.type(0.0)
                    s_d = u.dtype.type(0.0)
                    for n in range(n_state):
                        s_u += lam[n] * brow[n]
                        s_d += lam[n] * (brow[n] * ut + a[n] * eh[n])
                    for n in range(n_state):
                        dA_c[n] += lam[n] * eh[n] * dt
                    for n in range(n_state):
                        lam[n] *= erow[n]  # carries a_t ⊙ λ_t to step t-1
                    du_out[b, d, t] = s_u * dt + g * D[d]
                    ddelta[b, d, t] = s_d
                for n in range(n_state):  # chunk sums in float64 keep long sequences exact
                    dA_loc[n] += dA_c[n]
            for n in range(n_state):
                dA_part[w, d, n] += dA_loc[n]
            dD_part[w, d] += dD_loc


@_njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
def _scan_cl_job(x, xdbl, dt_rank, wdt_t, bdt, a_t, D, gate, gate_offset, has_gate, reverse,
                 accumulate, out, last, carry, b, d0, nb):  # pragma: no cover - compiled
    """One job of :func:`_mamba_scan_cl`: batch row ``b``, channels ``d0 .. d0+nb``."""
    n_state = a_t.shape[0]
    length = out.shape[1]
    one = out.dtype.type(1.0)
    at = np.ascontiguousarray(a_t[:, d0:d0 + nb])  # [N, nb], A·log2(e)
    wt = np.ascontiguousarray(wdt_t[:, d0:d0 + nb])  # [R, nb]
    bias = bdt[d0:d0 + nb].copy()
    skip = D[d0:d0 + nb].copy()
    h = np.zeros((n_state, nb), dtype=out.dtype)
    if carry:
        for j in range(nb):
            for n in range(n_state):
                h[n, j] = last[b, d0 + j, n]
    dl = np.empty(nb, dtype=out.dtype)
    du = np.empty(nb, dtype=out.dtype)
    acc = np.empty(nb, dtype=out.dtype)
    for step in range(length):
        t = length - 1 - step if reverse else step
        xr = xdbl[b, t]
        ur = x[b, t, d0:d0 + nb]  # slices, not offset indices: those compile to gathers
        orow = out[b, t, d0:d0 + nb]
        for j in range(nb):
            dl[j] = bias[j]
        for r in range(dt_rank):
            s = xr[r]
            wr = wt[r]
            for j in range(nb):
                dl[j] += s * wr[j]
        for j in range(nb):
            v = softplus_ad(dl[j])
            uj = ur[j]
            dl[j] = v
            du[j] = v * uj
            acc[j] = skip[j] * uj
        for n in range(n_state):
            bn = xr[dt_rank + n]
            cn = xr[dt_rank + n_state + n]
            hn = h[n]
            an = at[n]
            for j in range(nb):
                hv = exp2_ad(dl[j] * an[j]) * hn[j] + du[j] * bn
                hn[j] = hv
                acc[j] += hv * cn
        if has_gate:  # SiLU(z) fused: z is read from the in_proj output itself
            zr = gate[b, t, gate_offset + d0:gate_offset + d0 + nb]
            for j in range(nb):
                zt = zr[j]
                acc[j] = acc[j] * zt / (one + exp_ad(-zt))
        if accumulate:
            for j in range(nb):
                orow[j] += acc[j]
        else:
            for j in range(nb):
                orow[j] = acc[j]
    for j in range(nb):
        for n in range(n_state):
            last[b, d0 + j, n] = h[n, j]


@_njit(parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _mamba_scan_cl(x, xdbl, dt_rank, wdt_t, bdt, a_t, D, gate, gate_offset, has_gate,
                   reverse, accumulate, out, last, carry, block):  # pragma: no cover - compiled
    """Channel-last inference scan of a Mamba branch, Δ computed inside.

    ``x: [Bsz, L, Di]`` (the SiLU(conv) output = the scan's ``u``), ``xdbl: [Bsz, L, R+2N]``
    (x_proj's output: the low-rank Δ, then B, then C; read in place, no slicing),
    ``wdt_t: [R, Di]`` (dt_proj.weight transposed), ``bdt: [Di]`` (dt_proj.bias),
    ``a_t: [N, Di]`` (A·log2(e), transposed: ``exp(Δ·A)`` is computed as ``2**(Δ·a_t)``),
    ``D: [Di]``, the gate input ``z = gate[...,
    gate_offset:gate_offset + Di]`` (SiLU applied here), ``out: [Bsz, L, Di]``,
    ``last: [Bsz, Di, N]`` (the state after the last step; with ``carry`` it also holds the
    state to start from, so a sequence can be scanned chunk by chunk).
    ``Δ = softplus(bdt + wdt_t^T·xdbl[:R])`` (torch's threshold 20).
    With ``reverse`` time runs from L-1 down to 0 (the backward branch of a bidirectional
    block, without flipping anything); with ``accumulate`` the result is added to ``out``.

    Parallel over (batch, block of ``block`` channels). Every loop over channels is innermost
    and contiguous, with time-step scalars (B_t[n], C_t[n]) broadcast, so LLVM vectorises the
    state update over channels: no horizontal sum over states, no strided access. The state
    lives in ``h: [N, block]``.
    """
    bsz, length, di = out.shape
    n_blocks = (di + block - 1) // block
    for job in prange(bsz * n_blocks):
        b = job // n_blocks
        d0 = (job % n_blocks) * block
        _scan_cl_job(x, xdbl, dt_rank, wdt_t, bdt, a_t, D, gate, gate_offset, has_gate, reverse,
                     accumulate, out, last, carry, b, d0, min(di, d0 + block) - d0)


@_njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
def _mamba_scan_cl_serial(x, xdbl, dt_rank, wdt_t, bdt, a_t, D, gate, gate_offset, has_gate,
                          out, last, carry, c0, c1, block):  # pragma: no cover - compiled
    """:func:`_mamba_scan_cl` (forward in time, no accumulation) on the calling thread, for
    channels ``c0 .. c1`` only, in blocks of ``block``: one lane of
    :mod:`upsr.nn.mamba_chunked`, which runs one such call per core on its own threads."""
    for b in range(out.shape[0]):
        for d0 in range(c0, c1, block):
            _scan_cl_job(x, xdbl, dt_rank, wdt_t, bdt, a_t, D, gate, gate_offset, has_gate,
                         False, False, out, last, carry, b, d0, min(c1, d0 + block) - d0)


@_njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
def _conv_cl_rows(x, hist, wt, bias, out, b, t0, t1, reverse):  # pragma: no cover - compiled
    """Steps ``t0 .. t1`` of batch row ``b`` of :func:`_conv_silu_cl`; ``wt: [K, Di]``."""
    length, di = out.shape[1], out.shape[2]
    k = wt.shape[0]
    one = out.dtype.type(1.0)
    acc = np.empty(di, dtype=out.dtype)
    for t in range(t0, t1):
        for d in range(di):
            acc[d] = bias[d]
        for j in range(k):
            s = t + k - 1 - j if reverse else t - k + 1 + j
            if 0 <= s < length:
                xrow = x[b, s]
            elif hist.shape[1] > 0:
                xrow = hist[b, s - length if reverse else s + k - 1]
            else:
                continue
            wrow = wt[j]
            for d in range(di):
                acc[d] += wrow[d] * xrow[d]
        orow = out[b, t]
        for d in range(di):
            v = acc[d]
            orow[d] = v / (one + exp_ad(-v))


@_njit(parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _conv_silu_cl(x, hist, weight, bias, out, block, reverse):  # pragma: no cover - compiled
    """``out[b, t, d] = SiLU(bias[d] + Σ_k weight[d, k]·x[b, t-K+1+k, d])`` (zeros before
    t = 0): the causal depthwise conv and its SiLU in one pass over channel-last ``x: [Bsz, L,
    ≥Di]`` (the first Di channels are used, so x may be the whole in_proj output), parallel
    over (batch, block of ``block`` time steps), vectorised over channels. With ``reverse``
    the conv is anti-causal, ``x[b, t+K-1-k, d]`` (zeros after L-1): the causal conv of the
    time-reversed sequence, in the original time order. ``hist: [Bsz, K-1, ≥Di]`` holds the
    inputs before step 0 (with ``reverse``: after step L-1), in time order, for a sequence
    run chunk by chunk; ``[Bsz, 0, ·]`` means zeros."""
    bsz, length = out.shape[0], out.shape[1]
    n_blocks = (length + block - 1) // block
    wt = np.ascontiguousarray(weight.T)  # [K, Di]
    for job in prange(bsz * n_blocks):
        t0 = (job % n_blocks) * block
        _conv_cl_rows(x, hist, wt, bias, out, job // n_blocks, t0, min(length, t0 + block),
                      reverse)


@_njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
def _conv_silu_cl_serial(x, hist, wt, bias, out):  # pragma: no cover - compiled
    """:func:`_conv_silu_cl` (causal) on the calling thread, ``wt: [K, Di]``: one lane of
    :mod:`upsr.nn.mamba_chunked`."""
    for b in range(out.shape[0]):
        _conv_cl_rows(x, hist, wt, bias, out, b, 0, out.shape[1], False)


def conv_silu_channel_last(xz: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           channels: int, reverse: bool = False,
                           hist: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU of the causal depthwise conv over the first ``channels`` channels of channel-last
    ``xz: [Bsz, L, ≥channels]`` (C-contiguous) → ``[Bsz, L, channels]``; ``weight: [Di, 1, K]``
    (nn.Conv1d's layout). ``reverse``: the conv of the time-reversed sequence, returned in
    the original order (= ``flip(conv(flip(x)))``). ``hist: [Bsz, K-1, ≥channels]``: the
    inputs just before step 0 (with ``reverse``: just after step L-1), in time order, for a
    sequence run chunk by chunk; None = zeros. Inference only."""
    bsz, length, _ = xz.shape
    out = xz.new_empty(bsz, length, channels)
    if length == 0:
        return out
    k = weight.shape[-1]
    w = weight.detach()[:, 0, :].to(xz.dtype).contiguous()
    b = xz.new_zeros(channels) if bias is None else bias.detach().to(xz.dtype).contiguous()
    if hist is None:
        hist = xz.new_zeros(bsz, 0, channels)
    elif hist.shape[:2] != (bsz, k - 1) or hist.shape[2] < channels:
        raise ValueError(f"conv_silu_channel_last: hist is {list(hist.shape)}, expected "
                         f"[{bsz}, {k - 1}, >={channels}]")
    threads = _num_threads()
    block = max(64, -(-length // (4 * threads)))
    numba.set_num_threads(threads)
    compile_notice(_conv_silu_cl, "causal conv")
    _conv_silu_cl(xz.detach().contiguous().numpy(), hist.detach().to(xz.dtype).contiguous()
                  .numpy(), w.numpy(), b.numpy(), out.numpy(), block, reverse)
    return out


def mamba_scan_channel_last(x: torch.Tensor, xdbl: torch.Tensor, dt_weight: torch.Tensor,
                            dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor | None,
                            z: torch.Tensor | None, z_offset: int = 0, reverse: bool = False,
                            out: torch.Tensor | None = None, state: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-only gated selective scan of one Mamba branch on channel-last tensors.

    ``x: [Bsz, L, Di]`` (SiLU(conv(x)), the scan input ``u``), ``xdbl: [Bsz, L, R+2N]``
    (x_proj's output: low-rank Δ, B, C), ``dt_weight: [Di, R]``, ``dt_bias: [Di]``
    (dt_proj's), ``A: [Di, N]`` (= -exp(A_log)), ``D: [Di]``, the gate's input at channels
    ``z_offset .. z_offset+Di`` of ``z: [Bsz, L, ≥Di]`` (so in_proj's whole output can be
    passed). Computes ``Δ = softplus(xdbl[..., :R]·dt_weightᵀ + dt_bias)`` and
    ``out = (y + D·u)·SiLU(z): [Bsz, L, Di]`` in one pass (float32; float64 if ``x`` is;
    bf16 arguments from autocast are converted: the state stays float32). ``reverse`` scans
    from the last step to the first (a bidirectional block's backward branch, no flips);
    ``out`` (float32/64 ``[Bsz, L, Di]``, contiguous), when given, is added to instead of
    overwritten. ``state: [Bsz, Di, N]``: the state to start from (a sequence scanned chunk by
    chunk; None = zeros). Returns ``out`` and the last state ``[Bsz, Di, N]`` (the state after
    step 0 with ``reverse``).
    """
    bsz, length, di = x.shape
    n_state = A.shape[1]
    rank = dt_weight.shape[1]
    if xdbl.shape != (bsz, length, rank + 2 * n_state):
        raise ValueError(f"mamba_scan_channel_last: xdbl is {list(xdbl.shape)}, expected "
                         f"[{bsz}, {length}, {rank + 2 * n_state}]")
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    accumulate = out is not None
    if out is None:
        out = x.new_empty(bsz, length, di, dtype=cdt)
    elif out.shape != (bsz, length, di) or out.dtype != cdt or not out.is_contiguous():
        raise ValueError("mamba_scan_channel_last: out must be a contiguous "
                         f"[{bsz}, {length}, {di}] {cdt} tensor")
    if state is None:
        last = x.new_zeros(bsz, di, n_state, dtype=cdt)
    elif state.shape != (bsz, di, n_state):
        raise ValueError(f"mamba_scan_channel_last: state is {list(state.shape)}, expected "
                         f"[{bsz}, {di}, {n_state}]")
    else:
        last = state.detach().to(cdt, copy=True).contiguous()
    if length == 0:
        return out, last
    threads = _num_threads()
    jobs_per_row = max(1, -(-threads // bsz))
    block = min(128, -(-di // jobs_per_row))
    block = min(di, -(-block // 16) * 16)  # whole vectors where possible
    Dc = x.new_zeros(di) if D is None else D.detach()
    g = x.new_zeros(1, 1, 1) if z is None else z.detach()
    numba.set_num_threads(threads)
    compile_notice(_mamba_scan_cl, "channel-last forward")
    x, xdbl, g, Dc, bias = (a.detach().to(cdt).contiguous() for a in (x, xdbl, g, Dc, dt_bias))
    wdt_t = dt_weight.detach().to(cdt).t().contiguous()
    a_t = (A.detach().to(cdt) * math.log2(math.e)).t().contiguous()  # exp(Δ·A) = 2**(Δ·A·log2 e)
    _mamba_scan_cl(x.numpy(), xdbl.numpy(), rank, wdt_t.numpy(), bias.numpy(), a_t.numpy(),
                   Dc.numpy(), g.numpy(), z_offset, z is not None, reverse, accumulate,
                   out.numpy(), last.numpy(), state is not None, block)
    return out, last


_announced: set[str] = set()


def compile_notice(kernel: Any, what: str) -> None:
    """Say once per process, before numba compiles ``kernel`` without a cached copy, that the
    first call takes a while (silent otherwise: ~30 s on a loaded 2-core machine).

    numba caches the machine code (``cache=True``) beside this module, or in the user cache
    folder where that is read-only (``$NUMBA_CACHE_DIR`` overrides both), so this appears
    once per install and numba version, not once per run.
    """
    if _announced or kernel.signatures:  # said already, or compiled/loaded in this process
        return
    cache = getattr(kernel, "_cache", None)
    index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
    if index is not None and os.path.exists(index):
        return  # cached: loading takes well under a second
    _announced.add(what)
    where = getattr(cache, "_cache_path", None)
    log.warning("compiling the CPU Mamba kernels (first use only, about half a minute; "
                "cached in %s)", where or "memory only: no writable cache folder")


def _num_threads() -> int:
    """numba threads = torch's intra-op thread count (bounded by numba's pool).

    Launches numba's thread pool first: the launch of numba's OpenMP layer can set the OpenMP
    thread count torch reads to NUMBA_NUM_THREADS (all cores), silently undoing
    ``torch.set_num_threads`` (``--threads``) at the first Mamba call; torch's count is read
    before and put back. (With the torch 2.13 CPU wheel, torch loads its own bundled libgomp
    and numba's layer the system's: two OpenMP pools, whose idle workers spin after each
    parallel region, which is why :mod:`upsr.nn.mamba_chunked` runs on its own threads.)
    """
    want = torch.get_num_threads()
    numba.get_num_threads()  # launches the pool (once per process)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return max(1, min(want, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]


class SelectiveScanCPU(torch.autograd.Function):
    """Selective scan on CPU: ``(u, delta, A, B4, C4, D, gate)`` → ``(out, last_state)``.

    ``out = (y + D·u)·gate`` with ``y`` the recurrence output (module docstring).
    ``u, delta, gate: [Bsz, Di, L]`` (delta already positive: bias and softplus applied),
    ``A: [Di, N]``, ``B4, C4: [Bb, G, N, Lb]`` as made by :func:`upsr.nn.scan.as_groups`,
    ``D: [Di]``; ``D`` and ``gate`` may be None. All of one float dtype (float32 or float64).
    Returns ``out: [Bsz, Di, L]`` and ``last: [Bsz, Di, N]``.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                B4: torch.Tensor, C4: torch.Tensor, D: torch.Tensor | None,
                gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, di, length = u.shape
        n_state = A.shape[1]
        save = any(ctx.needs_input_grad)
        uc, dc, Ac = (x.detach().contiguous() for x in (u, delta, A))
        Bt = B4.detach().transpose(2, 3).contiguous()
        Ct = C4.detach().transpose(2, 3).contiguous()
        Dc = uc.new_zeros(di) if D is None else D.detach().contiguous()
        gc = uc.new_zeros(1, 1, 1) if gate is None else gate.detach().contiguous()
        out = torch.empty_like(uc)
        last = uc.new_empty(bsz, di, n_state)
        n_ck = (length + CHUNK - 1) // CHUNK if save else 0
        ckpt = uc.new_empty(bsz, di, n_ck, n_state)
        if length == 0:
            last.zero_()
        else:
            numba.set_num_threads(_num_threads())
            compile_notice(_forward, "forward")
            _forward(uc.numpy(), dc.numpy(), Ac.numpy(), Bt.numpy(), Ct.numpy(), Dc.numpy(),
                     gc.numpy(), gate is not None, out.numpy(), last.numpy(), ckpt.numpy(),
                     save)
        if save:
            ctx.save_for_backward(uc, dc, Ac, Bt, Ct, Dc, gc, ckpt)
            ctx.shapes = (B4.shape, C4.shape)
            ctx.has_gate = gate is not None
        return out, last

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor | None,
                 glast: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        uc, dc, Ac, Bt, Ct, Dc, gc, ckpt = ctx.saved_tensors
        has_gate = ctx.has_gate
        bsz, di, length = uc.shape
        gout = torch.zeros_like(uc) if gout is None else gout.to(uc.dtype).contiguous()
        glast = (uc.new_zeros(bsz, di, Ac.shape[1]) if glast is None
                 else glast.to(uc.dtype).contiguous())
        n_work = max(1, min(_num_threads(), bsz * di))
        du = torch.empty_like(uc)  # the kernel writes every element
        ddelta = torch.empty_like(uc)
        dgate = torch.empty_like(uc) if has_gate else uc.new_zeros(1, 1, 1)
        dA_part = torch.zeros(n_work, *Ac.shape, dtype=torch.float64)
        dB_part = uc.new_zeros(n_work, *Bt.shape)
        dC_part = uc.new_zeros(n_work, *Ct.shape)
        dD_part = torch.zeros(n_work, di, dtype=torch.float64)
        if length > 0:
            numba.set_num_threads(n_work)
            compile_notice(_backward, "backward")
            _backward(uc.numpy(), dc.numpy(), Ac.numpy(), Bt.numpy(), Ct.numpy(), Dc.numpy(),
                      gc.numpy(), has_gate, gout.numpy(), glast.numpy(), ckpt.numpy(),
                      du.numpy(), ddelta.numpy(), dgate.numpy(), dA_part.numpy(),
                      dB_part.numpy(), dC_part.numpy(), dD_part.numpy())
        b_shape, c_shape = ctx.shapes
        dA = dA_part.sum(0).to(uc.dtype)
        dB = dB_part.sum(0).transpose(2, 3).reshape(b_shape)
        dC = dC_part.sum(0).transpose(2, 3).reshape(c_shape)
        dD = dD_part.sum(0).to(uc.dtype) if ctx.needs_input_grad[5] else None
        dg = dgate if (has_gate and ctx.needs_input_grad[6]) else None
        return du, ddelta, dA, dB, dC, dD, dg
