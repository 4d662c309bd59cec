"""Roformer pieces against plain float64 references written another way (loops, explicit
softmax, channel-first 1×1 convolutions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upsr.nn.roformer import (
    RMSNorm,
    RoformerBlock,
    Workspace,
    apply_rope,
    apply_rope_batched,
    rms_normalize,
    rope_matrices,
    rope_tables,
)


def _rope_loop(x: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Rotate each interleaved pair (2i, 2i+1) at position p by p * theta**(-2i/d)."""
    length, d = x.shape[-2:]
    out = np.empty_like(x)
    for p in range(length):
        for i in range(d // 2):
            a, b = x[..., p, 2 * i], x[..., p, 2 * i + 1]
            ang = p * theta ** (-2 * i / d)
            out[..., p, 2 * i] = a * math.cos(ang) - b * math.sin(ang)
            out[..., p, 2 * i + 1] = b * math.cos(ang) + a * math.sin(ang)
    return out


def test_apply_rope_matches_pairwise_rotation():
    x = torch.randn(3, 2, 20, 8)
    cos, sin = rope_tables(20, 8)
    np.testing.assert_allclose(apply_rope(x, cos, sin).numpy(),
                               _rope_loop(x.double().numpy()), atol=2e-5)


def test_rope_preserves_norms_and_relative_positions():
    """A rotation keeps each pair's norm; q·k depends only on the position difference."""
    cos, sin = rope_tables(40, 16)
    q, k = torch.randn(16).double(), torch.randn(16).double()
    rq = apply_rope(q.expand(40, 16), cos.double(), sin.double())
    rk = apply_rope(k.expand(40, 16), cos.double(), sin.double())
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(40), rtol=1e-6, atol=0)
    dots = rq @ rk.T
    torch.testing.assert_close(dots[5, 2], dots[30, 27], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [1, -1])
def test_rms_norm_matches_float64(dim):
    x = torch.randn(4, 12, 9)
    norm = RMSNorm(x.shape[dim], dim=dim)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    xd = x.double().numpy()
    shape = [1, 1, 1]
    shape[dim] = -1
    ref = xd / np.sqrt((xd**2).mean(axis=dim, keepdims=True) + 1e-5)
    ref = ref * norm.weight.detach().double().numpy().reshape(shape)
    np.testing.assert_allclose(norm(x).detach().numpy(), ref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(rms_normalize(x.movedim(dim, -1)).movedim(-1, dim).numpy(),
                               xd / np.sqrt((xd**2).mean(axis=dim, keepdims=True) + 1e-5),
                               rtol=2e-6, atol=1e-6)


def _block_reference(block: RoformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block in float64, channel-first [N, C, L] with its 1×1 convs, explicit softmax."""
    b = {k: v.double() for k, v in block.state_dict().items()}
    h, d = block.num_heads, block.head_dim
    xc = x.double().transpose(1, 2)  # [N, C, L]
    n, _, length = xc.shape

    def rms(v, w):
        return v / torch.sqrt(v.pow(2).mean(1, keepdim=True) + 1e-5) * w[None, :, None]

    qkv = F.conv1d(rms(xc, b["input_norm.weight"]), b["weight.weight"])
    qkv = qkv.reshape(n, h, 3 * d, length).transpose(2, 3)  # per head [q | k | v]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    q = torch.from_numpy(_rope_loop(q.contiguous().numpy()))
    k = torch.from_numpy(_rope_loop(k.contiguous().numpy()))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v  # [N, H, L, d]
    y = F.conv1d(att.transpose(2, 3).reshape(n, h * d, length), b["output.weight"]) + xc
    hid = F.silu(F.conv1d(rms(y, b["MLP.0.weight"]), b["MLP.1.weight"]))
    gate, z = hid.chunk(2, dim=1)
    out = y + F.conv1d(F.silu(gate) * z, b["MLP_output.weight"])
    return out.transpose(1, 2)


def test_roformer_block_matches_float64_reference():
    torch.manual_seed(0)
    block = RoformerBlock(32, num_heads=8, max_positions=100).eval()
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    x = torch.randn(5, 80, 32)
    with torch.no_grad():
        y = block(x)
    ref = _block_reference(block, x)
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6
    assert not any("freq" in k for k in block.state_dict())  # RoPE tables are not saved


def test_roformer_block_rejects_sequences_longer_than_its_table():
    block = RoformerBlock(16, max_positions=10)
    with pytest.raises(ValueError, match="RoPE table"):
        block(torch.randn(1, 11, 16))


def test_rms_normalize_bf16_keeps_its_dtype_with_float32_statistics():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 64)[:, None]  # rows over six decades
    xb = x.bfloat16()
    xd = xb.double()
    ref = xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5)
    y = rms_normalize(xb)
    assert y.dtype == torch.bfloat16
    # a few bf16 roundings (2^-9 each): the norm, the scale and the product
    assert float(((y.double() - ref).abs() / ref.abs().clamp_min(1e-6)).max()) < 1e-2
    assert float((y.double() - ref).norm() / ref.norm()) < 5e-3


def test_roformer_block_bf16_inference_matches_float64_reference():
    """Without gradients a bf16 input takes the bf16 path (no autocast); same function within
    bf16 rounding, input untouched, a shared workspace changes nothing."""
    torch.manual_seed(0)
    block = RoformerBlock(32, num_heads=8, max_positions=100).eval()
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    x = torch.randn(5, 80, 32).bfloat16()
    x0 = x.clone()
    ws = Workspace()
    with torch.inference_mode():
        y = block(x)
        y_ws = block(x, ws)
        y_ws2 = block(x[:3], ws)  # a smaller call reuses the same buffers
    ref = _block_reference(block, x.float())
    assert y.dtype == torch.bfloat16 and torch.equal(x, x0)
    assert 1e-4 < float((y.double() - ref).norm() / ref.norm()) < 2e-2
    assert torch.equal(y, y_ws) and torch.equal(y_ws2, y[:3])


def test_workspace_reuses_storage_per_name():
    ws = Workspace()
    like = torch.zeros(1, dtype=torch.bfloat16)
    a = ws.get("h", (4, 8), like)
    b = ws.get("h", (2, 8), like)
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 8)
    assert ws.get("g", (2, 8), like).data_ptr() != a.data_ptr()
    assert ws.get("h", (8, 8), like).shape == (8, 8)  # larger: a new buffer
    assert ws.get("h", (2, 8), like.float()).dtype == torch.float32


def test_batched_rope_equals_pairwise_rotation():
    """RoPE as per-position rotation matrices (the bf16 path's GEMM) equals the loop."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 20, 8, dtype=torch.float64)
    cos, sin = rope_tables(100, 8, dtype=torch.float64)  # float32 angles, as Apollo's
    rot = rope_matrices(cos[:20], sin[:20])
    got = apply_rope_batched(x, rot)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), apply_rope(x, cos[:20], sin[:20]).numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), _rope_loop(x.numpy()), atol=2e-5)
