"""Chunked Mamba inference (:mod:`upsr.nn.mamba_chunked`) and the kernels' carried state,
against the float64 per-step reference (``ref`` backend) and the unchunked kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_l2
from upsr.nn import Mamba
from upsr.nn._scan_numba import conv_silu_channel_last, mamba_scan_channel_last
from upsr.nn.mamba_chunked import mamba_chunked


def _block(d_model: int, seed: int, d_conv: int = 4, bias: bool = False
           ) -> tuple[Mamba, torch.nn.LayerNorm]:
    """A Mamba block with non-structured weights (realistic Δ) and a LayerNorm."""
    torch.manual_seed(seed)
    m = Mamba(d_model, d_state=8, d_conv=d_conv, bias=bias).eval()
    norm = torch.nn.LayerNorm(d_model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(m.named_parameters()) + list(norm.named_parameters()):
            if name == "A_log":
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 10 + 0.25))
            elif name == "dt_proj.bias":  # softplus(bias) ≈ 0.01-0.1, some far larger/smaller
                p.copy_(torch.randn(p.shape, generator=g) * 2 - 3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m, norm


def _float64_residual(m: Mamba, norm: torch.nn.LayerNorm, h: torch.Tensor) -> torch.Tensor:
    """``h + Mamba(LN(h))`` in float64 on the per-step ``ref`` backend (autograd path)."""
    ref = Mamba(m.d_model, d_state=m.d_state, d_conv=m.d_conv, bias=m.in_proj.bias is not None,
                backend="ref").double()
    ref.load_state_dict(m.state_dict())
    h64 = h.double()
    with torch.no_grad():
        return h64 + ref(F.layer_norm(h64, (m.d_model,), norm.weight.double(),
                                      norm.bias.double(), norm.eps))


@pytest.mark.parametrize("d_model,bsz,length,chunk,d_conv", [
    (16, 1, 1000, 256, 4),   # chunks a multiple of the vector width, a short last one
    (20, 2, 333, 100, 4),    # batch > 1, Di = 40, odd length
    (12, 3, 50, 7, 4),       # many chunks, none a multiple of anything
    (12, 1, 37, 2, 4),       # chunks shorter than the conv: its inputs carried over 2 chunks
    (12, 2, 29, 1, 3),       # one step per chunk
    (12, 1, 45, 8, 1),       # d_conv 1: nothing to carry
    (16, 2, 3, 4096, 4),     # one chunk shorter than the conv
])
def test_chunked_block_equals_float64_reference(d_model: int, bsz: int, length: int,
                                                chunk: int, d_conv: int) -> None:
    """``h + Mamba(LN(h))`` computed chunk by chunk (conv inputs and scan state carried) equals
    the float64 per-step reference to 1e-5, into a new tensor and in place."""
    m, norm = _block(d_model, seed=length + chunk, d_conv=d_conv)
    h = torch.randn(bsz, length, d_model)
    want = _float64_residual(m, norm, h)
    with torch.inference_mode():
        got = mamba_chunked(m, h, norm=norm, residual=h, chunk=chunk)
        inplace = h.clone()
        back = mamba_chunked(m, inplace, inplace, norm=norm, residual=inplace, chunk=chunk)
    assert back is inplace
    assert got.dtype == torch.float32 and got.shape == h.shape
    assert rel_l2(got, want) < 1e-5
    assert rel_l2(inplace, want) < 1e-5


@pytest.mark.parametrize("lanes,chunk", [(1, 100), (2, 100), (3, 37), (2, 5)])
def test_lanes_give_the_same_result(lanes: int, chunk: int) -> None:
    """The phases shared between 1, 2 or 3 threads (rows split for the GEMMs and the conv,
    channels for the scan; lanes with no rows in short chunks) compute what one thread does,
    float32 rounding apart, for batch > 1, in place."""
    m, norm = _block(20, seed=7)
    h = torch.randn(2, 301, 20)
    want = _float64_residual(m, norm, h)
    with torch.inference_mode():
        one = mamba_chunked(m, h, norm=norm, residual=h, chunk=chunk, lanes=1)
        got = h.clone()
        mamba_chunked(m, got, got, norm=norm, residual=got, chunk=chunk, lanes=lanes)
    assert rel_l2(got, one) < 1e-6
    assert rel_l2(got, want) < 1e-5


@pytest.mark.parametrize("lanes,d_conv,bias", [(2, 4, True), (3, 20, False)])
def test_lanes_read_conv_inputs_of_other_lanes(lanes: int, d_conv: int, bias: bool) -> None:
    """A lane's first conv inputs are rows another lane computed (d_conv 20: from two lanes'
    rows and the rows above the chunk, carried from the previous chunk), with in_proj biases,
    float32 and bf16 projections: equal to one lane (the GEMMs' row splits differ, so up to
    rounding) and to float64. Wrong conv inputs at a lane's first rows move the result by
    ~1e-2."""
    m, norm = _block(16, seed=11, d_conv=d_conv, bias=bias)
    h = torch.randn(2, 203, 16)
    want = _float64_residual(m, norm, h)
    with torch.inference_mode():
        for proj, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-4)):
            one = mamba_chunked(m, h, norm=norm, residual=h, chunk=40, lanes=1,
                                proj_dtype=proj)
            got = mamba_chunked(m, h, norm=norm, residual=h, chunk=40, lanes=lanes,
                                proj_dtype=proj)
            assert rel_l2(got, one) < tol
            if proj == torch.float32:
                assert rel_l2(got, want) < 1e-5


def test_chunked_block_without_norm_or_residual_and_with_biases() -> None:
    """Plain ``Mamba(h)`` (no LayerNorm, no residual), in_proj/out_proj with biases: equals the
    module's own inference path (whole sequence) to 1e-6 and float64 to 1e-5."""
    m, _ = _block(24, seed=3, bias=True)
    h = torch.randn(2, 301, 24)
    ref = Mamba(24, d_state=8, bias=True, backend="ref").double()
    ref.load_state_dict(m.state_dict())
    with torch.inference_mode():
        got = mamba_chunked(m, h, chunk=64)
        whole = m(h)
        want = ref(h.double())
    assert rel_l2(got, whole) < 1e-6
    assert rel_l2(got, want) < 1e-5


def test_chunked_block_bf16_projections() -> None:
    """bf16 in_proj/out_proj (scan, conv, x_proj and the residual stream float32): within bf16
    rounding of float64, and the residual stream itself stays float32."""
    m, norm = _block(32, seed=5)
    h = torch.randn(2, 517, 32)
    want = _float64_residual(m, norm, h)
    with torch.inference_mode():
        got = mamba_chunked(m, h, norm=norm, residual=h, proj_dtype=torch.bfloat16, chunk=200)
    assert got.dtype == torch.float32
    # the residual part is exact; the Mamba part carries bf16 rounding (~1e-2 relative)
    delta, delta_ref = got.double() - h.double(), want - h.double()
    assert 1e-4 < rel_l2(delta, delta_ref) < 3e-2
    assert rel_l2(got, want) < 1e-2


def test_bad_arguments_are_value_errors() -> None:
    m, _ = _block(8, seed=0)
    with pytest.raises(ValueError, match="h must be"):
        mamba_chunked(m, torch.randn(1, 10, 9))
    with pytest.raises(ValueError, match="h must be"):
        mamba_chunked(m, torch.randn(1, 8, 10).transpose(1, 2))
    with pytest.raises(ValueError, match="out must be"):
        mamba_chunked(m, torch.randn(1, 10, 8), torch.empty(1, 9, 8))
    with pytest.raises(ValueError, match="chunk must be"):
        mamba_chunked(m, torch.randn(1, 10, 8), chunk=-1)
    assert mamba_chunked(m, torch.randn(2, 0, 8)).shape == (2, 0, 8)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_with_carried_inputs_equals_whole_sequence(reverse: bool) -> None:
    """The conv kernel with ``hist`` (the K-1 inputs before a chunk; after it when reversed)
    computes the whole sequence's conv on that chunk, batch > 1, x with extra channels."""
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(2, 41, 30, generator=g)
    w = torch.randn(12, 1, 4, generator=g)
    bias = torch.randn(12, generator=g)
    whole = conv_silu_channel_last(xz, w, bias, 12, reverse)
    cut = 17
    if reverse:  # the chunk [0, cut) sees the inputs at cut .. cut+2
        part = conv_silu_channel_last(xz[:, :cut].contiguous(), w, bias, 12, True,
                                      hist=xz[:, cut:cut + 3])
        assert rel_l2(part, whole[:, :cut]) < 1e-6
    else:
        part = conv_silu_channel_last(xz[:, cut:].contiguous(), w, bias, 12,
                                      hist=xz[:, cut - 3:cut])
        assert rel_l2(part, whole[:, cut:]) < 1e-6
    with pytest.raises(ValueError, match="hist is"):
        conv_silu_channel_last(xz, w, bias, 12, hist=xz[:, :2])


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_from_a_carried_state_equals_whole_sequence(reverse: bool) -> None:
    """Scanning [0, cut) and then [cut, L) from the state the first part left (reversed: the
    later part first) equals one scan over [0, L), outputs and last state; the given state
    tensor itself is not modified."""
    g = torch.Generator().manual_seed(2)
    bsz, length, di, n, rank = 2, 90, 20, 6, 3
    x = torch.randn(bsz, length, di, generator=g)
    xdbl = torch.randn(bsz, length, rank + 2 * n, generator=g)
    wdt = torch.randn(di, rank, generator=g)
    bdt = torch.randn(di, generator=g) - 2
    A = -(torch.rand(di, n, generator=g) * 5 + 0.25)
    D = torch.randn(di, generator=g)
    xz = torch.randn(bsz, length, 2 * di, generator=g)
    whole, last = mamba_scan_channel_last(x, xdbl, wdt, bdt, A, D, xz, di, reverse=reverse)
    cut = 37
    first, second = (slice(cut, None), slice(None, cut)) if reverse else (
        slice(None, cut), slice(cut, None))

    def run(sl: slice, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return mamba_scan_channel_last(x[:, sl], xdbl[:, sl], wdt, bdt, A, D,
                                       xz[:, sl].contiguous(), di, reverse=reverse, state=state)

    y1, s1 = run(first, None)
    s1_copy = s1.clone()
    y2, s2 = run(second, s1)
    assert torch.equal(s1, s1_copy)
    assert rel_l2(y1, whole[:, first]) < 1e-6 and rel_l2(y2, whole[:, second]) < 1e-6
    assert rel_l2(s2, last) < 1e-6
    with pytest.raises(ValueError, match="state is"):
        run(first, torch.zeros(bsz, di, n + 1))
