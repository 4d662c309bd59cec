"""The selective scan of Mamba (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv:2312.00752, Algorithm 2 and eqs. (2a), (4)), with interchangeable backends.

For every batch ``b`` and channel ``d`` it runs the diagonal linear recurrence, in ``N`` states::

    Δ      = softplus(Δ + delta_bias)              (optional, per b, d, l)
    Ā_l    = exp(Δ_l · A[d])                       zero-order hold for A          [N]
    h_l    = Ā_l ⊙ h_{l-1} + Δ_l · B_l · u_l       Euler step for B, h_{-1} = 0  [N]
    y_l    = ⟨h_l, C_l⟩ + D[d] · u_l
    out_l  = y_l · SiLU(z_l)                       (optional gate)

which is what ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` computes.

Backends (``backend=``):

- ``"cuda"``: mamba_ssm's fused CUDA kernel, imported lazily, only when asked for or when the
  input is on a CUDA device and the package imports (the ``upsr[cuda]`` extra);
- ``"cpu"``: numba kernels parallel over (batch, channel), forward and backward
  (:mod:`upsr.nn._scan_numba`), with the ``D`` skip and the gate multiplication fused in;
- ``"chunked"``: plain torch, parallel over time inside chunks of ``CHUNK_T`` steps (the
  segment-sum form: ``h_t = Σ_{s≤t} exp(S_t − S_s)·Δ_s B_s u_s`` with ``S`` the running sum of
  ``Δ·A`` inside the chunk, so every exponent is ≤ 0 and nothing overflows), then one short
  loop over chunks carrying the state: a Python loop over L/CHUNK_T chunks, not over L steps.
  The path for GPUs without mamba_ssm (and MPS), and for CPUs without numba;
- ``"ref"``: a plain per-step loop in torch, vectorised over (batch, channel, state), used by
  tests as the independent reference.

``"auto"`` picks ``cuda`` for CUDA tensors when mamba_ssm imports, ``cpu`` for CPU tensors
when numba imports, and ``chunked`` otherwise (with a one-time warning on CUDA).

Precision: the recurrence runs in float32 for float16/bfloat16/float32 inputs, as mamba_ssm's
reference does; float64 inputs stay in float64 (mamba_ssm would downcast them), which is what
``torch.autograd.gradcheck`` needs. The output has the dtype of ``u``.

Shapes (``Bsz`` batch, ``Di`` channels, ``N`` states, ``L`` steps, ``G`` groups):
``u, delta, z: [Bsz, Di, L]``; ``A: [Di, N]`` (real; complex A is not supported);
``B, C``: time-invariant ``[Di, N]``, per batch ``[Bsz, N, L]`` (what Mamba uses) or grouped
``[Bsz, G, N, L]`` (channel ``d`` uses group ``d // (Di // G)``); ``D, delta_bias: [Di]``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from upsr.errors import UsageError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "cpu", "chunked", "ref")
CHUNK_T = 32                # steps per chunk of the chunked scan
CHUNK_ELEMENTS = 1 << 25    # at most this many [.., T, T, N] weights at once (128 MiB fp32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_groups(X: torch.Tensor, name: str, batch: int, channels: int, length: int) -> torch.Tensor:
    """Bring ``B`` or ``C`` to the 4-d layout ``[Bb, G, N, Lb]`` (a view, never a copy).

    ``Bb`` is 1 (shared over the batch) or ``batch``; ``Lb`` is 1 (time-invariant) or ``length``;
    ``G`` divides ``channels``. Time-invariant ``[Di, N]`` becomes ``[1, Di, N, 1]``.
    """
    if X.is_complex():
        raise UsageError(f"selective_scan: complex {name} is not supported (Mamba v1 is real)")
    if X.dim() == 2:
        if X.shape[0] != channels:
            raise UsageError(f"selective_scan: {name} is {list(X.shape)}, "
                             f"expected [Di={channels}, N]")
        return X[None, :, :, None]
    if X.dim() == 3:
        X = X[:, None]
    if X.dim() != 4 or X.shape[0] != batch or X.shape[3] != length or channels % X.shape[1]:
        raise UsageError(
            f"selective_scan: {name} is {list(X.shape)}; expected [Di, N], [B={batch}, N, "
            f"L={length}] or [B, G, N, L] with G dividing Di={channels}"
        )
    return X


def per_channel(X4: torch.Tensor, channels: int) -> torch.Tensor:
    """``[Bb, G, N, Lb]`` → ``[Bb, Di, N, Lb]``, each group repeated over its channels."""
    bb, g, n, lb = X4.shape
    return X4[:, :, None].expand(bb, g, channels // g, n, lb).reshape(bb, channels, n, lb)


def scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B4: torch.Tensor, C4: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare recurrence, one time step per Python iteration (the reference).

    ``u, delta: [Bsz, Di, L]`` (delta already positive), ``A: [Di, N]``, ``B4, C4: [Bb, G, N, Lb]``
    (see :func:`as_groups`). Returns ``y: [Bsz, Di, L]`` (no ``D``, no gate) and the last state
    ``h: [Bsz, Di, N]``. Differentiable by autograd.
    """
    bsz, di, length = u.shape
    Bc = per_channel(B4, di)
    Cc = per_channel(C4, di)
    # unbind (not indexing) per step: its backward stacks the step gradients instead of
    # scattering each into a full-size zero tensor, which would make backward O(L²).
    us, ds = u.unbind(-1), delta.unbind(-1)
    bs = Bc.unbind(-1) if Bc.shape[-1] != 1 else (Bc[..., 0],) * length
    cs = Cc.unbind(-1) if Cc.shape[-1] != 1 else (Cc[..., 0],) * length
    h = u.new_zeros(bsz, di, A.shape[1])
    ys = []
    for t in range(length):
        dt = ds[t][..., None]
        h = torch.exp(dt * A) * h + dt * bs[t] * us[t][..., None]
        ys.append((h * cs[t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(bsz, di, 0)
    return y, h


def scan_chunked(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B4: torch.Tensor, C4: torch.Tensor,
    chunk: int = CHUNK_T,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence of :func:`scan_ref`, parallel over time within chunks (module doc).

    Same arguments and results as :func:`scan_ref` (``y`` without ``D`` or gate, last state
    ``h``); differentiable by autograd. Memory: ``Bsz·Di·chunk²·N`` per group of chunks, at most
    ``CHUNK_ELEMENTS`` elements.
    """
    bsz, di, length = u.shape
    n = A.shape[1]
    if length == 0:
        return u.new_zeros(bsz, di, 0), u.new_zeros(bsz, di, n)
    T = max(1, min(chunk, length))
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    # [Bsz, Di, L, N] layouts (time before state); padded steps have Δ = 0: no decay, no input
    Bc = per_channel(B4, di).transpose(2, 3).expand(bsz, di, -1, n)
    Cc = per_channel(C4, di).transpose(2, 3).expand(bsz, di, -1, n)
    if Bc.shape[2] == 1:
        Bc = Bc.expand(bsz, di, length, n)
    if Cc.shape[2] == 1:
        Cc = Cc.expand(bsz, di, length, n)
    if pad:
        u, delta = F.pad(u, (0, pad)), F.pad(delta, (0, pad))
        Bc = F.pad(Bc, (0, 0, 0, pad))
        Cc = F.pad(Cc, (0, 0, 0, pad))
    shape = (bsz, di, n_chunks, T)
    dA = (delta[..., None] * A[:, None, :]).reshape(*shape, n)          # Δ_t·A ≤ 0
    cum = dA.cumsum(3)                                                   # S_t within its chunk
    x = ((delta * u)[..., None] * Bc).reshape(*shape, n)                 # Δ_s B_s u_s
    Cr = Cc.reshape(*shape, n)
    causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()  # [t, s]: s ≤ t
    per_group = max(1, CHUNK_ELEMENTS // max(1, bsz * di * T * T * n))
    h_in = []
    for c0 in range(0, n_chunks, per_group):
        cs = cum[:, :, c0:c0 + per_group]                               # [B, D, g, T, N]
        seg = cs[:, :, :, :, None, :] - cs[:, :, :, None, :, :]          # [B, D, g, t, s, N]
        w = torch.exp(seg.masked_fill(~causal[:, :, None], float("-inf")))
        h_in.append(torch.einsum("bdgtsn,bdgsn->bdgtn", w, x[:, :, c0:c0 + per_group]))
    h_intra = torch.cat(h_in, dim=2)                                     # zero start state
    decay = torch.exp(cum)                                               # S_t: decay from start
    # carry the state across chunks: h_start[c+1] = exp(S_end[c])·h_start[c] + h_intra_end[c]
    starts = []
    h = u.new_zeros(bsz, di, n)
    for c in range(n_chunks):
        starts.append(h)
        h = decay[:, :, c, -1] * h + h_intra[:, :, c, -1]
    h0 = torch.stack(starts, dim=2)                                      # [B, D, n_chunks, N]
    states = h_intra + decay * h0[:, :, :, None, :]
    y = (states * Cr).sum(-1).reshape(bsz, di, n_chunks * T)[..., :length]
    last = states.reshape(bsz, di, n_chunks * T, n)[:, :, length - 1]
    return y, last


@functools.cache
def _warn_no_fast_scan(device_type: str) -> None:
    log.warning("selective scan on %s without mamba_ssm's kernel: using the chunked torch scan "
                "(pip install 'upsr[cuda]' for the fused kernel)", device_type)


@functools.cache
def _cuda_scan_fn() -> Callable[..., Any] | None:
    """mamba_ssm's ``selective_scan_fn``, or None where the package does not import.

    Any exception counts as "not available": depending on the version, importing mamba_ssm
    without its compiled extension raises ImportError, OSError or even RuntimeError.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.debug("mamba_ssm selective scan unavailable: %s", exc)
        return None
    return selective_scan_fn  # type: ignore[no-any-return]


@functools.cache
def _cpu_scan_fn() -> Callable[..., Any] | None:
    """The numba autograd function's ``apply``, or None where numba does not import."""
    try:
        from upsr.nn._scan_numba import SelectiveScanCPU
    except ImportError as exc:
        log.warning("numba is not importable (%s); the CPU selective scan falls back to the "
                    "chunked torch scan", exc)
        return None
    return SelectiveScanCPU.apply  # type: ignore[no-any-return]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for a request (``auto`` resolved); UsageError if unavailable."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown selective-scan backend {backend!r}; choose one of "
                         f"{', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" and _cuda_scan_fn() is not None:
            return "cuda"
        if device.type == "cpu" and _cpu_scan_fn() is not None:
            return "cpu"
        if device.type != "cpu":
            _warn_no_fast_scan(device.type)
        return "chunked"
    if backend == "cuda" and _cuda_scan_fn() is None:
        raise UsageError("selective-scan backend 'cuda' needs mamba_ssm with its CUDA kernels "
                         "(pip install 'upsr[cuda]')")
    if backend == "cpu":
        if device.type != "cpu":
            raise UsageError(f"selective-scan backend 'cpu' needs CPU tensors, got {device}")
        if _cpu_scan_fn() is None:
            raise UsageError("selective-scan backend 'cpu' needs numba (pip install numba)")
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics (see the module doc).

    Returns ``out: [Bsz, Di, L]`` in ``u``'s dtype, and with ``return_last_state`` also the
    final state ``h_{L-1}: [Bsz, Di, N]`` in the compute dtype.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise UsageError(f"selective_scan: u and delta must both be [B, Di, L], got "
                         f"{list(u.shape)} and {list(delta.shape)}")
    bsz, di, length = u.shape
    if A.is_complex():
        raise UsageError("selective_scan: complex A is not supported (Mamba v1 is real)")
    if A.dim() != 2 or A.shape[0] != di:
        raise UsageError(f"selective_scan: A is {list(A.shape)}, expected [Di={di}, N]")
    if z is not None and z.shape != u.shape:
        raise UsageError(f"selective_scan: z is {list(z.shape)}, expected {list(u.shape)}")
    B4 = as_groups(B, "B", bsz, di, length)
    C4 = as_groups(C, "C", bsz, di, length)
    if B4.shape[2] != A.shape[1] or C4.shape[2] != A.shape[1]:
        raise UsageError(f"selective_scan: B/C state size differs from A's N={A.shape[1]}")

    name = resolve_backend(backend, u.device)
    if name == "cuda":
        fn = _cuda_scan_fn()
        assert fn is not None
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,  # type: ignore[no-any-return]
                  return_last_state)

    dtype_in = u.dtype
    cdt = compute_dtype(dtype_in)

    def cast(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(cdt)

    uc = u.to(cdt)
    dc = delta.to(cdt)
    if delta_bias is not None:
        dc = dc + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dc = F.softplus(dc)
    gate = None if z is None else F.silu(z.to(cdt))
    if name == "cpu":
        fn = _cpu_scan_fn()
        assert fn is not None
        out, last = fn(uc, dc, A.to(cdt), B4.to(cdt), C4.to(cdt), cast(D), gate)
    else:
        inner = scan_chunked if name == "chunked" else scan_ref
        y, last = inner(uc, dc, A.to(cdt), B4.to(cdt), C4.to(cdt))
        out = y if D is None else y + uc * D.to(cdt)[:, None]
        if gate is not None:
            out = out * gate
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out
