"""Selective scan: fixture parity, float64 references, extreme Δ, gradients, backend dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import fixture_path, rel_l2
from upsr.errors import UsageError
from upsr.nn import Mamba, scan, selective_scan

TRAINABLE = ["cpu", "ref"]


def numpy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False):
    """Independent float64 reference (numpy, per step), B/C as [Bsz, N, L] or [Di, N]."""
    u, delta, A = (np.asarray(x, np.float64) for x in (u, delta, A))
    B, C = np.asarray(B, np.float64), np.asarray(C, np.float64)
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)[:, None]
    if softplus:
        delta = np.logaddexp(0.0, delta)
    bsz, di, length = u.shape
    h = np.zeros((bsz, di, A.shape[1]))
    y = np.empty((bsz, di, length))
    for t in range(length):
        bt = B[None] if B.ndim == 2 else B[:, None, :, t]
        ct = C[None] if C.ndim == 2 else C[:, None, :, t]
        dt = delta[:, :, t, None]
        h = np.exp(dt * A) * h + dt * bt * u[:, :, t, None]
        y[:, :, t] = (h * ct).sum(-1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)[:, None]
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y, h


@pytest.mark.parametrize("backend", ["auto", "cpu", "ref"])
def test_fixture_parity(backend: str) -> None:
    """mamba_ssm's selective_scan_ref call: output and last state to 1e-5 (float32)."""
    t = load_file(str(fixture_path("mamba_selective_scan.safetensors")))
    out, last = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], z=t["z"],
                               delta_bias=t["delta_bias"], delta_softplus=True,
                               return_last_state=True, backend=backend)
    assert out.dtype == torch.float32 and out.shape == t["output"].shape
    assert rel_l2(out, t["output"]) <= 1e-5
    assert rel_l2(last, t["last_state"]) <= 1e-5


@pytest.mark.parametrize("name", ["mamba_v1.safetensors", "mamba_v1_d48.safetensors"])
def test_module_fixture_scan_intermediates(name: str) -> None:
    """The scan called inside the official module (inter.scan.*) is reproduced to 1e-5."""
    path = fixture_path(name)
    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        assert "state_keys" in f.metadata()
    A = -torch.exp(t["state.A_log"])
    y = selective_scan(t["inter.scan.u"], t["inter.scan.delta"], A, t["inter.scan.B"],
                       t["inter.scan.C"], t["state.D"], z=t["inter.scan.z"],
                       delta_bias=t["state.dt_proj.bias"], delta_softplus=True)
    assert rel_l2(y, t["inter.scan.y"]) <= 1e-5


def _random(bsz, di, n, length, dtype=torch.float32, seed=0, dmax=0.5, bc="batch", groups=1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(bsz, di, length, generator=g, dtype=torch.float64)
    delta = torch.rand(bsz, di, length, generator=g, dtype=torch.float64) * dmax
    A = -(torch.rand(di, n, generator=g, dtype=torch.float64) * 19.75 + 0.25)
    if bc == "batch":
        shape: tuple[int, ...] = (bsz, n, length)
    elif bc == "group":
        shape = (bsz, groups, n, length)
    else:
        shape = (di, n)
    B = torch.randn(*shape, generator=g, dtype=torch.float64)
    C = torch.randn(*shape, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (u, delta, A, B, C)]


@pytest.mark.parametrize("backend", TRAINABLE)
@pytest.mark.parametrize("bc", ["batch", "invariant"])
def test_matches_float64_numpy_reference(backend: str, bc: str) -> None:
    """D, z, bias, softplus and both B/C layouts against the numpy float64 loop."""
    u, delta, A, B, C = _random(2, 6, 5, 150, torch.float64, seed=1, bc=bc)
    g = torch.Generator().manual_seed(2)
    D, bias = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g,
                                                                           dtype=torch.float64)
    z = torch.randn(2, 6, 150, generator=g, dtype=torch.float64)
    want, h = numpy_scan(u, delta, A, B, C, D, z, bias, softplus=True)
    got, last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend=backend)
    assert got.dtype == torch.float64
    assert rel_l2(got, want) < 1e-13 and rel_l2(last, h) < 1e-13
    got32, last32 = selective_scan(*(x.float() for x in (u, delta, A, B, C, D, z, bias)),
                                   delta_softplus=True, return_last_state=True, backend=backend)
    assert rel_l2(got32, want) < 1e-5 and rel_l2(last32, h) < 1e-5


def test_grouped_b_c() -> None:
    """[B, G, N, L] B/C: channel d uses group d // (Di/G); equals per-channel expansion."""
    u, delta, A, B, C = _random(2, 6, 3, 40, torch.float64, seed=3, bc="group", groups=3)
    got = selective_scan(u, delta, A, B, C, backend="cpu")
    want = torch.empty_like(u)
    for d in range(6):
        want[:, d : d + 1] = selective_scan(u[:, d : d + 1], delta[:, d : d + 1], A[d : d + 1],
                                            B[:, d // 2], C[:, d // 2], backend="ref")
    assert rel_l2(got, want) < 1e-13


@pytest.mark.parametrize("backend", TRAINABLE)
def test_extreme_delta_stays_finite_and_exact(backend: str) -> None:
    """Δ·|A| up to 50 per step (a log-space cumsum would overflow float32): exact, finite."""
    u, delta, A, B, C = _random(1, 4, 4, 300, torch.float64, seed=4, dmax=2.5)
    A[0] = -20.0
    delta[0, 0, ::37] = 2.5  # Δ·|A| = 50 exactly on these steps
    want, h = numpy_scan(u, delta, A, B, C)
    for dtype in (torch.float32, torch.float64):
        got, last = selective_scan(*(x.to(dtype) for x in (u, delta, A, B, C)),
                                   return_last_state=True, backend=backend)
        assert torch.isfinite(got).all() and torch.isfinite(last).all()
        assert rel_l2(got, want) < (1e-5 if dtype == torch.float32 else 1e-13)


def test_long_sequence_matches_float64() -> None:
    """L = 24000 (1 s at 48 kHz / 2): float32 CPU kernel vs numpy float64, with large Δ too."""
    u, delta, A, B, C = _random(1, 4, 4, 24000, torch.float64, seed=5, dmax=2.5)
    delta[..., ::7] *= 1e-3  # mix tiny steps (long memory) with huge ones
    want, h = numpy_scan(u, delta, A, B, C)
    got, last = selective_scan(*(x.float() for x in (u, delta, A, B, C)),
                               return_last_state=True, backend="cpu")
    assert torch.isfinite(got).all()
    assert rel_l2(got, want) < 1e-5 and rel_l2(last, h) < 1e-5


def test_nan_propagates() -> None:
    """A NaN input gives NaN downstream (no fast-math that would hide it)."""
    u, delta, A, B, C = _random(1, 2, 3, 10, seed=6)
    u[0, 0, 4] = float("nan")
    y = selective_scan(u, delta, A, B, C, backend="cpu")
    assert torch.isnan(y[0, 0, 4:]).all() and torch.isfinite(y[0, 0, :4]).all()
    assert torch.isfinite(y[0, 1]).all()


@pytest.mark.parametrize("backend,length", [("cpu", 70), ("ref", 9)])
@pytest.mark.parametrize("bc", ["batch", "invariant", "group"])
def test_gradcheck(backend: str, length: int, bc: str) -> None:
    """torch.autograd.gradcheck (float64) of every input, output and last state.

    L = 70 crosses the CPU kernel's 64-step checkpoint boundary.
    """
    u, delta, A, B, C = _random(2, 4, 3, length, torch.float64, seed=7, bc=bc, groups=2)
    g = torch.Generator().manual_seed(8)
    D = torch.randn(4, generator=g, dtype=torch.float64)
    z = torch.randn(2, 4, length, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64) * 0.3
    inputs = [x.requires_grad_() for x in (u, delta - 0.5, A, B, C, D, z, bias)]

    def f(*args):
        out, last = selective_scan(*args, delta_softplus=True, return_last_state=True,
                                   backend=backend)
        return out, last

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_gradients_float32_match_ref() -> None:
    """float32 gradients over many checkpoint chunks agree with the reference's."""
    args = [x.requires_grad_() for x in _random(2, 3, 4, 300, seed=9, dmax=1.0)]
    grads = {}
    for backend in TRAINABLE:
        out, last = selective_scan(*args, return_last_state=True, backend=backend)
        loss = (out * torch.linspace(-1, 1, 300)).sum() + last.square().sum()
        grads[backend] = torch.autograd.grad(loss, args)
    for gc, gr in zip(grads["cpu"], grads["ref"]):
        assert rel_l2(gc, gr) < 1e-5


def test_last_state_only_gradient() -> None:
    """Backward when only the last state is used (the output gradient is None)."""
    args = [x.requires_grad_() for x in _random(1, 2, 3, 20, torch.float64, seed=10)]
    grads = {}
    for backend in TRAINABLE:
        _, last = selective_scan(*args, return_last_state=True, backend=backend)
        grads[backend] = torch.autograd.grad(last.sum(), args, allow_unused=True)
    for a, b, x in zip(grads["cpu"], grads["ref"], args):
        b = torch.zeros_like(x) if b is None else b  # C does not reach the last state
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert grads["cpu"][0].abs().sum() > 0


def test_empty_sequence() -> None:
    u, delta, A, B, C = _random(1, 2, 3, 0)
    out, last = selective_scan(u, delta, A, B, C, return_last_state=True, backend="cpu")
    assert out.shape == (1, 2, 0) and torch.equal(last, torch.zeros(1, 2, 3))


# -- dispatch ----------------------------------------------------------------------------------


def test_auto_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    cuda = torch.device("cuda")
    monkeypatch.setattr(scan, "_cuda_scan_fn", lambda: None)
    assert scan.resolve_backend("auto", cpu) == "cpu"
    assert scan.resolve_backend("auto", cuda) == "chunked"  # CUDA without mamba_ssm
    with pytest.raises(UsageError, match=r"upsr\[cuda\]"):
        scan.resolve_backend("cuda", cpu)
    with pytest.raises(UsageError, match="unknown"):
        scan.resolve_backend("fast", cpu)
    with pytest.raises(UsageError, match="needs CPU tensors"):
        scan.resolve_backend("cpu", cuda)
    monkeypatch.setattr(scan, "_cuda_scan_fn", lambda: object())
    assert scan.resolve_backend("auto", cuda) == "cuda"
    assert scan.resolve_backend("auto", cpu) == "cpu"
    monkeypatch.setattr(scan, "_cpu_scan_fn", lambda: None)  # numba missing
    assert scan.resolve_backend("auto", cpu) == "chunked"


def test_gpu_without_mamba_ssm_warns_once_and_is_not_a_step_loop(monkeypatch, caplog) -> None:
    import logging

    monkeypatch.setattr(scan, "_cuda_scan_fn", lambda: None)
    scan._warn_no_fast_scan.cache_clear()
    with caplog.at_level(logging.WARNING, logger="upsr"):
        for dev in ("cuda", "cuda", "mps"):
            assert scan.resolve_backend("auto", torch.device(dev)) == "chunked"
    msgs = [r.getMessage() for r in caplog.records if "chunked" in r.getMessage()]
    assert len(msgs) == 2 and "cuda" in msgs[0] and "mps" in msgs[1]   # once per device type
    # the chunked path runs a Python loop over chunks, never over time steps
    calls = []
    real_stack = torch.stack

    def counting_stack(*a, **k):
        calls.append(1)
        return real_stack(*a, **k)

    u, delta, A, B, C = _random(1, 4, 3, 640, seed=5)
    monkeypatch.setattr(torch, "stack", counting_stack)
    scan.scan_chunked(u, delta.abs(), A, scan.as_groups(B, "B", 1, 4, 640),
                      scan.as_groups(C, "C", 1, 4, 640))
    assert len(calls) == 1      # one stack of 640 / CHUNK_T chunk start states


@pytest.mark.parametrize("grouped", [False, True])
def test_chunked_scan_matches_float64_reference(grouped: bool) -> None:
    """The chunked torch scan (forced, on CPU) against the numpy per-step reference in
    float64, with lengths that are and are not multiples of the chunk, strong decay and a
    time-invariant B; gradients against the per-step torch reference."""
    g = torch.Generator().manual_seed(3)
    bsz, di, n = 2, 6, 5
    for length in (1, 31, 32, 97):
        u = torch.randn(bsz, di, length, dtype=torch.float64, generator=g)
        delta = torch.randn(bsz, di, length, dtype=torch.float64, generator=g)
        A = -torch.rand(di, n, dtype=torch.float64, generator=g) * 30
        B = (torch.randn(bsz, 2, n, length, dtype=torch.float64, generator=g) if grouped
             else torch.randn(di, n, dtype=torch.float64, generator=g))
        C = torch.randn(bsz, n, length, dtype=torch.float64, generator=g)
        D = torch.randn(di, dtype=torch.float64, generator=g)
        z = torch.randn(bsz, di, length, dtype=torch.float64, generator=g)
        bias = torch.randn(di, dtype=torch.float64, generator=g)
        out, last = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                   return_last_state=True, backend="chunked")
        Bn = B.numpy() if not grouped else np.repeat(B.numpy(), di // 2, axis=1)
        if grouped:   # numpy_scan takes [Di, N] or [Bsz, N, L]: run per channel group
            ref = np.empty((bsz, di, length))
            h_ref = np.empty((bsz, di, n))
            for d in range(di):
                y_d, h_d = numpy_scan(u[:, d:d + 1], delta[:, d:d + 1], A[d:d + 1],
                                      Bn[:, d], C, D[d:d + 1], z[:, d:d + 1],
                                      bias[d:d + 1], softplus=True)
                ref[:, d], h_ref[:, d] = y_d[:, 0], h_d[:, 0]
        else:
            ref, h_ref = numpy_scan(u, delta, A, Bn, C, D, z, bias, softplus=True)
        assert rel_l2(out, ref) < 1e-12, length
        assert rel_l2(last, h_ref) < 1e-12, length
    args = [x.detach().clone().requires_grad_() for x in (u, delta, A, B, C, D, z, bias)]
    grads = {}
    for backend in ("chunked", "ref"):
        for a in args:
            a.grad = None
        w = torch.randn(bsz, di, length, dtype=torch.float64, generator=torch.Generator()
                        .manual_seed(1))
        (selective_scan(*args[:7], args[7], delta_softplus=True, backend=backend) * w
         ).sum().backward()
        grads[backend] = [a.grad.clone() for a in args]
    for gc, gr in zip(grads["chunked"], grads["ref"]):
        assert rel_l2(gc, gr) < 1e-10


def test_cuda_backend_forwards_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend='cuda' hands the untouched arguments to mamba_ssm's selective_scan_fn."""
    calls = []

    def fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        calls.append((u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state))
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              return_last_state, backend="ref")

    monkeypatch.setattr(scan, "_cuda_scan_fn", lambda: fake)
    u, delta, A, B, C = _random(1, 4, 3, 12, seed=11)
    D = torch.ones(4)
    out = selective_scan(u, delta, A, B, C, D, None, None, True, False, backend="cuda")
    assert len(calls) == 1 and calls[0][0] is u and calls[0][3] is B and calls[0][8] is True
    assert rel_l2(out, selective_scan(u, delta, A, B, C, D, delta_softplus=True)) < 1e-6


def test_mamba_cuda_path_uses_causal_conv1d(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cuda backend the block uses causal_conv1d_fn (faked here) with SiLU fused."""
    from upsr.nn import mamba

    conv_calls = []

    def fake_conv(x, weight, bias, activation=None):
        conv_calls.append((tuple(x.shape), tuple(weight.shape), activation))
        k = weight.shape[-1]
        y = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None], bias, groups=x.shape[1])
        return F.silu(y) if activation == "silu" else y

    monkeypatch.setattr(mamba, "_causal_conv1d_fn", lambda: fake_conv)
    monkeypatch.setattr(scan, "_cuda_scan_fn",
                        lambda: lambda *a: selective_scan(*a, backend="ref"))
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 30, 8)
    with torch.no_grad():
        want = Mamba.forward(m, x)  # auto on CPU: cpu backend, nn.Conv1d
        m.backend = "cuda"
        got = m(x)
    assert conv_calls == [((2, 16, 30), (16, 4), "silu")]
    assert rel_l2(got, want) < 1e-6


def test_njit_falls_back_when_cache_unwritable(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba raises RuntimeError for cache=True without a writable cache dir: we compile anyway."""
    import numba

    from upsr.nn import _scan_numba

    real = numba.njit
    seen = []

    def njit(*args, cache=False, **kw):
        seen.append(cache)
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, cache=cache, **kw)

    monkeypatch.setattr(numba, "njit", njit)
    fn = _scan_numba._njit()(lambda x: x + 1)
    assert seen == [True, False] and fn(2) == 3


def test_bad_arguments() -> None:
    u, delta, A, B, C = _random(1, 4, 3, 10)
    with pytest.raises(UsageError, match="u and delta"):
        selective_scan(u, delta[..., :5], A, B, C)
    with pytest.raises(UsageError, match="A is"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(UsageError, match="B is"):
        selective_scan(u, delta, A, B[..., :5], C)
    with pytest.raises(UsageError, match="G dividing"):
        selective_scan(u, delta, A, torch.randn(1, 3, 3, 10), C)
    with pytest.raises(UsageError, match="complex"):
        selective_scan(u, delta, A.to(torch.complex64), B, C)
    with pytest.raises(UsageError, match="state size"):
        selective_scan(u, delta, A, torch.randn(1, 5, 10), C)
    with pytest.raises(UsageError, match="z is"):
        selective_scan(u, delta, A, B, C, z=u[..., :3])


def test_first_compile_is_announced_once_and_not_when_cached(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from upsr.nn import _scan_numba as K

    def kernel(index_exists: bool, compiled: bool = False):
        index = tmp_path / ("cached.nbi" if index_exists else "missing.nbi")
        if index_exists:
            index.write_bytes(b"")
        cache = SimpleNamespace(_cache_file=SimpleNamespace(_index_path=str(index)),
                                _cache_path=str(tmp_path))
        return SimpleNamespace(signatures=["sig"] if compiled else [], _cache=cache)

    import pytest as _pytest

    mp = _pytest.MonkeyPatch()
    mp.setattr(K, "_announced", set())
    try:
        with caplog.at_level(logging.WARNING, logger="upsr"):
            K.compile_notice(kernel(True), "test-cached")      # cache on disk: loads silently
            K.compile_notice(kernel(False, True), "test-loaded")  # already in this process
            K.compile_notice(kernel(False), "test-cold")
            K.compile_notice(kernel(False), "test-cold-2")    # one line per process
        assert K._announced == {"test-cold"}
    finally:
        mp.undo()
    notices = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert len(notices) == 1 and str(tmp_path) in notices[0]


def _numpy_mamba_branch(x, xdbl, wdt, bdt, A, D, z, reverse):
    """float64 numpy reference of one channel-last Mamba branch: Δ from the low-rank
    projection and softplus, then :func:`numpy_scan` in the [B, Di, L] layout."""
    rank, n = wdt.shape[1], A.shape[1]
    x, xdbl, z = (np.asarray(a, np.float64) for a in (x, xdbl, z))
    if reverse:
        x, xdbl, z = x[:, ::-1], xdbl[:, ::-1], z[:, ::-1]
    delta = np.einsum("blr,dr->bdl", xdbl[..., :rank], np.asarray(wdt, np.float64))
    B = xdbl[..., rank:rank + n].transpose(0, 2, 1)
    C = xdbl[..., rank + n:].transpose(0, 2, 1)
    y, h = numpy_scan(x.transpose(0, 2, 1), delta, A, B, C, D, z.transpose(0, 2, 1), bdt,
                      softplus=True)
    y = y.transpose(0, 2, 1)
    return (y[:, ::-1] if reverse else y), h


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_scan_channel_last_matches_float64(reverse: bool) -> None:
    """The fused inference kernel (Δ = softplus(low-rank projection + bias) inside, gate read
    at an offset of in_proj's output, reversed time, accumulation into ``out``) against numpy
    float64; pre-softplus Δ spans [-40, 40] (softplus' threshold 20, exp underflow) and
    Δ·|A| reaches ~80 per step; Di = 37 (channel blocks with a remainder), L = 301."""
    from upsr.nn._scan_numba import mamba_scan_channel_last

    g = torch.Generator().manual_seed(7)
    bsz, length, di, n, rank = 2, 301, 37, 5, 3
    x = torch.randn(bsz, length, di, generator=g)
    xdbl = torch.randn(bsz, length, rank + 2 * n, generator=g)
    xdbl[..., :rank] *= 3
    wdt = torch.randn(di, rank, generator=g) * 2
    bdt = torch.randn(di, generator=g) * 4 - 3
    A = -(torch.rand(di, n, generator=g) * 19.75 + 0.25)
    D = torch.randn(di, generator=g)
    xz = torch.randn(bsz, length, 2 * di, generator=g)
    want, h = _numpy_mamba_branch(x, xdbl, wdt, bdt, A.double(), D, xz[..., di:], reverse)
    pre = np.einsum("blr,dr->bdl", xdbl[..., :rank].double().numpy(), wdt.double().numpy())
    pre = pre + bdt.double().numpy()[:, None]
    assert pre.min() < -30 and pre.max() > 25  # both softplus regimes are exercised
    got, last = mamba_scan_channel_last(x, xdbl, wdt, bdt, A, D, xz, di, reverse=reverse)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert rel_l2(got, want) < 1e-5 and rel_l2(last, h) < 1e-5
    base = torch.randn(bsz, length, di, generator=g)
    summed, _ = mamba_scan_channel_last(x, xdbl, wdt, bdt, A, D, xz, di, reverse=reverse,
                                        out=base.clone())
    assert rel_l2(summed, want + base.double().numpy()) < 1e-5
    empty, last0 = mamba_scan_channel_last(x[:, :0], xdbl[:, :0], wdt, bdt, A, D, xz[:, :0],
                                           di)
    assert empty.shape == (bsz, 0, di) and torch.equal(last0, torch.zeros(bsz, di, n))


def test_vectorised_softplus_matches_float64() -> None:
    """The kernels' float32 softplus (vectorisable exp and log1p) is within 5 ulp of the exact
    value over [-87, 80], including tiny results (log1p's relative precision); below that
    (exact result < 1.7e-38) it flushes to 0 as its exp does; NaN stays NaN."""
    import numba

    from upsr.nn._scan_numba import softplus_ad

    @numba.njit
    def apply(v):  # pragma: no cover - compiled
        out = np.empty_like(v)
        for i in range(v.shape[0]):
            out[i] = softplus_ad(v[i])
        return out

    v = np.concatenate([np.linspace(-87, 80, 20001), np.linspace(-1e-3, 1e-3, 101),
                        [19.99, 20.0, 20.01]]).astype(np.float32)
    got = apply(v).astype(np.float64)
    want = np.logaddexp(0.0, v.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 5, (ulps.max(), v[ulps.argmax()])
    deep = apply(np.array([-87.5, -100.0, -1e4], np.float32))
    assert np.all((deep >= 0) & (deep < 1.7e-38))
    assert np.isnan(apply(np.array([np.nan], np.float32))[0])


def test_vectorised_exp2_matches_float64() -> None:
    """The scan's float32 ``2**x`` (exp(Δ·A) = 2**(Δ·A·log2 e)) is within 2.5 ulp over
    [-126, 127], exactly 1 at 0 and for tiny arguments (a state with Δ ≈ 0 must not grow),
    0 below -126.5, inf above 127.5, NaN for NaN."""
    import numba

    from upsr.nn._scan_numba import exp2_ad

    @numba.njit
    def apply(v):  # pragma: no cover - compiled
        out = np.empty_like(v)
        for i in range(v.shape[0]):
            out[i] = exp2_ad(v[i])
        return out

    v = np.concatenate([np.linspace(-126, 127, 100001),
                        np.linspace(-1e-3, 1e-3, 1001)]).astype(np.float32)
    want = np.exp2(v.astype(np.float64))
    ulps = np.abs(apply(v) - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 2.5, (ulps.max(), v[ulps.argmax()])
    edge = apply(np.array([0.0, -1e-30, 1e-30, -127.0, -500.0, 128.0, 500.0, np.nan],
                          np.float32))
    assert list(edge[:5]) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert np.isinf(edge[5]) and np.isinf(edge[6]) and np.isnan(edge[7])


def test_numba_pool_launch_keeps_torchs_thread_count() -> None:
    """numba's OpenMP layer shares libgomp with torch: launching its pool set the process-wide
    thread count to all cores, undoing ``torch.set_num_threads(1)`` at the first Mamba call.
    In a fresh process (the pool launches once per process)."""
    import subprocess
    import sys

    code = ("import numba, torch; torch.set_num_threads(1)\n"
            "from upsr.nn._scan_numba import _num_threads\n"
            "numba.set_num_threads(_num_threads())  # what every kernel wrapper does\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "1"
