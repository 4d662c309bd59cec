"""Wave-U-Mamba's fast path (channel-last activations, convolutions as channels-last conv2d,
conv weights cached for inference, float32 regions under autocast) against the official
layout run with the plain layers, the training path and float64."""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F

from tests.conftest import rel_l2
from upsr.models import build
from upsr.models.wave_u_mamba import (
    LRELU_SLOPE,
    MambaStack,
    WaveUMamba,
    WaveUMambaConfig,
    conv1d,
    conv_transpose1d,
    conv_weight_2d,
    float32_region,
)

SMALL = {"channels": (4, 8, 8, 16), "down_mambas": 1, "bottleneck_mambas": 1, "up_mambas": 2,
         "d_state": 4}


def small_model(seed: int = 0) -> WaveUMamba:
    torch.manual_seed(seed)
    model = tp.cast(WaveUMamba, build("wave-u-mamba", **SMALL)).eval()
    with torch.no_grad():  # weight-norm gains away from their init (g = ||v||)
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)
    return model


def official_forward(model: tp.Any, x: torch.Tensor) -> torch.Tensor:
    """The official ``WaveUmamba.forward`` written out with the model's own layers in the
    official ``[B, C, L]`` layout (nn.Conv1d/ConvTranspose1d calls, weight norm recomputed,
    F.pad, avg_pool1d, transposes around every LayerNorm and Mamba)."""

    def ln(norm: tp.Any, t: torch.Tensor) -> torch.Tensor:
        return norm.layernorm(t.transpose(1, 2)).transpose(1, 2)

    def stack(st: tp.Any, t: torch.Tensor) -> torch.Tensor:
        for norm, tm in st.blocks:
            t = t + tm.mamba(ln(norm, t).transpose(1, 2)).transpose(1, 2)
        return t

    def down(b: tp.Any, t: torch.Tensor) -> torch.Tensor:
        t = F.leaky_relu(ln(b.init_ln, b.init_conv(F.pad(t, (0, b.kernel - 1)))), LRELU_SLOPE)
        for conv, norm in zip(b.convs, b.convlns, strict=True):
            t = t + F.leaky_relu(ln(norm, conv(F.pad(t, (0, b.kernel - 1)))), LRELU_SLOPE)
        if b.pool:
            t = F.avg_pool1d(t, 2, 2)
        return stack(b.mambablocks, t)

    skips, h = [x], x
    for i, (block, norm) in enumerate(zip(model.emb.cnn_stem, model.emb.ln_stem, strict=True)):
        h = down(block, h)
        if i < len(model.ups):
            skips.append(h)
            h = F.leaky_relu(ln(norm, h), LRELU_SLOPE)
        else:
            h = ln(norm, h)
    skips = skips[::-1]
    for i, (up, st, rb) in enumerate(zip(model.ups, model.mambablocks, model.resblocks,
                                         strict=True)):
        h = stack(st, up(F.leaky_relu(h, LRELU_SLOPE) + skips[i]))
        for c1, c2 in zip(rb.convs1, rb.convs2, strict=True):
            h = h + c2(F.leaky_relu(c1(F.leaky_relu(h, LRELU_SLOPE)), LRELU_SLOPE))
    return torch.tanh(model.conv_post(F.leaky_relu(h))) + skips[-1]


def test_mamba_stack_equals_block_by_block() -> None:
    """The stack on the ``[B, L, C]`` view is the official ``x ← x + block(x)`` loop, bit for
    bit, for a channel-last and for a contiguous input."""
    torch.manual_seed(0)
    stack = MambaStack(8, 3, WaveUMambaConfig(d_state=4)).eval()
    channel_last = torch.randn(2, 96, 8).transpose(1, 2)
    for x in (channel_last, channel_last.contiguous()):
        with torch.no_grad():
            got = stack(x)
            ref = x
            for block in stack.blocks:
                ref = ref + block(ref)
        assert torch.equal(got, ref)
    assert got.transpose(1, 2).is_contiguous()  # stays channel-last


def test_cached_conv_weight_follows_parameter_updates() -> None:
    model = small_model()
    up, post = model.ups[0], model.conv_post
    with torch.no_grad():
        w1 = conv_weight_2d(up)
        assert conv_weight_2d(up) is w1  # computed once
        assert w1.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(w1, up.weight.unsqueeze(2), rtol=0, atol=0)
    g = up.parametrizations.weight.original0
    with torch.no_grad():
        g.mul_(2.0)  # in place, as an optimiser step: the cache must notice
        w2 = conv_weight_2d(up)
    assert w2 is not w1
    torch.testing.assert_close(w2, 2.0 * w1)
    # load_state_dict copies in place too; plain (not weight-normed) convs are cached as well
    plain = model.emb.cnn_stem[1].init_conv
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("conv_post.parametrizations.weight.original1", "emb.cnn_stem.1.init_conv.weight"):
        state[key] = torch.randn_like(state[key])
    with torch.no_grad():
        before = (conv_weight_2d(post), conv_weight_2d(plain))
    model.load_state_dict(state)
    with torch.no_grad():
        after = (conv_weight_2d(post), conv_weight_2d(plain))
    for layer, old, new in zip((post, plain), before, after, strict=True):
        assert not torch.equal(old, new)
        torch.testing.assert_close(new, layer.weight.unsqueeze(2), rtol=0, atol=0)
    # with autograd the parametrization runs, so gradients reach g and v
    x = torch.randn(1, post.in_channels, 40)
    conv1d(post, x).square().sum().backward()
    assert post.parametrizations.weight.original0.grad is not None
    assert post.parametrizations.weight.original1.grad is not None


def test_conv_helpers_equal_the_layers() -> None:
    model = small_model()
    x = torch.randn(2, model.ups[1].in_channels, 50)
    down = model.emb.cnn_stem[2].convs[0]
    r = torch.randn(2, model.resblocks[0].convs1[1].in_channels, 50)
    d = torch.randn(2, down.in_channels, 50)
    conv = model.resblocks[0].convs1[1]  # dilation 3
    k = down.kernel_size[0]
    with torch.no_grad():
        pairs = [(conv_transpose1d(model.ups[1], x), model.ups[1](x)),
                 (conv1d(conv, r), conv(r)),
                 (conv1d(down, d, right_pad=True), down(F.pad(d, (0, k - 1))))]
        for dtype in (torch.float32, torch.float64):
            m64 = small_model().to(dtype)
            c64 = m64.resblocks[0].convs1[1]
            pairs.append((conv1d(c64, r.to(dtype)), c64(r.to(dtype))))
    for got, ref in pairs:
        assert got.shape == ref.shape
        assert got.stride(1) == 1  # channel-last result (channels innermost)
        tol = 1e-12 if got.dtype == torch.float64 else 1e-6
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_forward_equals_official_layout_and_training_path() -> None:
    """The fast path (no grad: cached weights, the Mamba blocks' channel-last numba kernels)
    against the official layout with the plain layers: float32 rounding only (rel. L2
    < 1e-5); in float64 (general paths everywhere) to 1e-12; the grad-enabled forward of the
    model agrees too and back-propagates to every parameter."""
    model = small_model(3)
    x = 0.3 * torch.randn(2, 1, 16 * 40)
    with torch.no_grad():
        fast = model(x)
        ref = official_forward(model, x)
    assert rel_l2(fast, ref) < 1e-5
    model64 = small_model(3).double()
    with torch.no_grad():
        got64 = model64(x.double())
        ref64 = official_forward(model64, x.double())
    assert rel_l2(got64, ref64) < 1e-12
    assert rel_l2(fast, ref64) < 1e-5
    model.train()
    slow = model(x)
    slow.square().mean().backward()
    assert rel_l2(slow.detach(), ref64) < 1e-5
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_float32_region_under_autocast() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 7)
    x = torch.randn(3, 7)
    exact = F.linear(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.linear(x, w)
        kept = float32_region(lambda t: F.linear(t, w), x.bfloat16())
    assert low.dtype == torch.bfloat16
    assert kept.dtype == torch.float32
    torch.testing.assert_close(kept, F.linear(x.bfloat16().float(), w), rtol=0, atol=0)
    torch.testing.assert_close(float32_region(lambda t: F.linear(t, w), x), exact, rtol=0,
                               atol=0)


def test_bf16_keeps_upsampling_mamba_and_head_in_float32(monkeypatch) -> None:
    """Under bf16 autocast the transposed convolutions, the Mamba blocks (in_proj/out_proj
    included) and the output conv return float32, the other convolutions bf16, and the output
    stays close to float32's."""
    from upsr.nn.mamba import Mamba

    model = small_model(1)
    ups: list[torch.dtype] = []
    convs: list[torch.dtype] = []
    mambas: list[torch.dtype] = []
    conv_t, conv = F.conv_transpose2d, F.conv2d

    def spy_t(x: torch.Tensor, *args: tp.Any, **kw: tp.Any) -> torch.Tensor:
        ups.append(conv_t(x, *args, **kw).dtype)
        return conv_t(x, *args, **kw)

    def spy(x: torch.Tensor, *args: tp.Any, **kw: tp.Any) -> torch.Tensor:
        y = conv(x, *args, **kw)
        convs.append(y.dtype)
        return y

    for mod in model.modules():
        if isinstance(mod, Mamba):
            mod.in_proj.register_forward_hook(lambda _m, _i, out: mambas.append(out.dtype))
            mod.register_forward_hook(lambda _m, _i, out: mambas.append(out.dtype))
    x = 0.3 * torch.randn(1, 1, 16 * 30)
    with torch.no_grad():
        y32 = model(x)
        mambas.clear()
        monkeypatch.setattr(F, "conv_transpose2d", spy_t)
        monkeypatch.setattr(F, "conv2d", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = model(x)
    assert ups == [torch.float32] * 4
    n_mamba = sum(isinstance(m, Mamba) for m in model.modules())
    assert len(mambas) == 2 * n_mamba and set(mambas) == {torch.float32}
    assert convs[-1] == torch.float32  # conv_post
    assert set(convs[:-1]) == {torch.bfloat16}  # down path, bottleneck, ResBlocks
    assert y16.dtype == torch.float32
    assert 0 < rel_l2(y16, y32) < 2e-2
