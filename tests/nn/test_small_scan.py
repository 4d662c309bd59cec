"""The plain-torch Mamba path for tiny widths (``upsr.nn.small_scan``): the blocked recurrence
against a step-by-step loop, the block against the general path, and the dispatch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import rel_l2
from upsr.nn import Mamba
from upsr.nn import small_scan as S


def _naive(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    h = torch.zeros(b.shape[1], dtype=b.dtype) if h0 is None else h0
    out = []
    for t in range(b.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out) if out else b.clone()


@pytest.mark.parametrize("length", [0, 1, 5, 7, 8, 9, 31, 32, 45])
@pytest.mark.parametrize("with_h0", [False, True])
def test_blocked_recurrence_equals_the_step_loop(length: int, with_h0: bool) -> None:
    """float64, blocks of 4 (so 8+ steps take the blocked path, with a ragged tail), decays
    from 0 to 1 (a = 0 cuts the history, a = 1 keeps it whole)."""
    g = torch.Generator().manual_seed(length)
    a = torch.rand(length, 6, generator=g, dtype=torch.float64)
    if length > 3:
        a[3, 0], a[2, 1] = 0.0, 1.0
    b = torch.randn(length, 6, generator=g, dtype=torch.float64)
    h0 = torch.randn(6, generator=g, dtype=torch.float64) if with_h0 else None
    want = _naive(a, b, h0)
    got = S.linear_recurrence_(a.clone(), b.clone(), h0, block=4)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv_bias", [True, False])
def test_small_block_equals_the_general_path(monkeypatch, conv_bias: bool) -> None:
    """Against the general path in float64 (the ``ref`` scan, a different code path): several
    segments (shortened to 40 steps) with blocks of 8, batch 3, L = 101."""
    monkeypatch.setattr(S, "SEGMENT", 40)
    monkeypatch.setattr(S, "BLOCK", 8)
    torch.manual_seed(0)
    m = Mamba(4, d_state=4, conv_bias=conv_bias).eval()
    assert m.d_inner * m.d_state <= S.MAX_STATE
    with torch.no_grad():  # larger Δ than the init's, so the state forgets within the signal
        m.dt_proj.bias.add_(2.0)
    x = torch.randn(3, 101, 4)
    with torch.no_grad():
        m.backend = "ref"
        want = m.double()(x.double())
        m.backend = "auto"
        m.float()
        got = S.mamba_forward_small(m, x)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert rel_l2(got.double(), want) < 2e-6


def test_dispatch_takes_the_torch_path_only_where_it_applies(monkeypatch) -> None:
    calls = []
    real = S.mamba_forward_small
    import upsr.nn.mamba as M

    monkeypatch.setattr(M, "mamba_forward_small", lambda m, x: calls.append(1) or real(m, x))
    torch.manual_seed(1)
    small = Mamba(4, d_state=4).eval()
    x = torch.randn(2, 50, 4)
    torch.set_num_threads(2)
    with torch.no_grad():
        y = small(x)
        assert calls == [1]
        assert torch.get_num_threads() == 2  # runs on one thread, then gives the two back
        torch.set_num_threads(1)
        torch.testing.assert_close(small(x), y, rtol=0, atol=0)
        torch.set_num_threads(2)
        assert small._use_small_torch(x)
        assert not Mamba(16, d_state=4)._use_small_torch(torch.randn(2, 50, 16))  # 128 states
        assert not small._use_small_torch(x.double())                 # float64: general path
        assert not Mamba(4, d_state=4, backend="ref")._use_small_torch(x)  # explicit backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not small._use_small_torch(x)                      # autocast: numba's
    assert not small._use_small_torch(x)                              # autograd: general path
    assert calls == [1, 1]


def _printed_by(code: str) -> list[str]:
    """What a fresh Python process running ``code`` prints, split into words."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_a_tiny_mamba_on_cpu_never_imports_numba() -> None:
    """The point of the path: a process that runs only tiny Mambas does not load numba (nor
    the scipy.linalg numba pulls in)."""
    code = ("import sys, torch; from upsr.nn import Mamba\n"
            "m = Mamba(4, d_state=4).eval()\n"
            "with torch.inference_mode(): m(torch.randn(1, 300, 4))\n"
            "print('numba' in sys.modules, 'scipy.linalg' in sys.modules)\n")
    assert _printed_by(code) == ["False", "False"]


def test_a_tiny_aeromamba_with_mamba_running_never_imports_numba() -> None:
    """AEROMamba's channels-first Mamba entry (paper mode) must honour the same dispatch: the
    11 k-parameter model of benchmarks/enhance.py runs without loading numba."""
    code = ("import sys, torch; from upsr.models import build\n"
            "m = build('aeromamba', channels=4, growth=1, n_fft=64, hop_length=32,"
            " strides=(8, 4), d_state=4, dconv_depth=1).eval()\n"
            "with torch.inference_mode(): y = m(torch.randn(1, 2205))\n"
            "print('numba' in sys.modules, bool(torch.isfinite(y).all()))\n")
    assert _printed_by(code) == ["False", "True"]
