"""Wave-U-Mamba's inference path (cached weight norm, channel-last Mamba stacks, float32
regions under autocast) against the general/training path."""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F

from tests.conftest import rel_l2
from upsr.models import build
from upsr.models.wave_u_mamba import (
    MambaStack,
    WaveUMamba,
    WaveUMambaConfig,
    float32_region,
    normed_weight,
    wn_conv1d,
    wn_conv_transpose1d,
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


def test_mamba_stack_equals_block_by_block() -> None:
    """The channel-last stack is the official ``x ← x + block(x)`` loop, bit for bit."""
    torch.manual_seed(0)
    stack = MambaStack(8, 3, WaveUMambaConfig(d_state=4)).eval()
    x = torch.randn(2, 8, 96)
    with torch.no_grad():
        got = stack(x)
        ref = x
        for block in stack.blocks:
            ref = ref + block(ref)
    assert got.is_contiguous()
    assert torch.equal(got, ref)


def test_cached_weight_norm_follows_parameter_updates() -> None:
    model = small_model()
    up, post = model.ups[0], model.conv_post
    with torch.no_grad():
        w1 = normed_weight(up)
        assert normed_weight(up) is w1  # computed once
        torch.testing.assert_close(w1, up.weight, rtol=0, atol=0)
    g = up.parametrizations.weight.original0
    with torch.no_grad():
        g.mul_(2.0)  # in place, as an optimiser step: the cache must notice
        w2 = normed_weight(up)
    assert w2 is not w1
    torch.testing.assert_close(w2, 2.0 * w1)
    # load_state_dict copies in place too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "conv_post.parametrizations.weight.original1"
    state[key] = torch.randn_like(state[key])
    with torch.no_grad():
        before = normed_weight(post)
    model.load_state_dict(state)
    with torch.no_grad():
        after = normed_weight(post)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, post.weight, rtol=0, atol=0)
    # with autograd the parametrization runs, so gradients reach g and v
    x = torch.randn(1, post.in_channels, 40)
    wn_conv1d(post, x).square().sum().backward()
    assert post.parametrizations.weight.original0.grad is not None
    assert post.parametrizations.weight.original1.grad is not None


def test_weight_norm_helpers_equal_the_layers() -> None:
    model = small_model()
    x = torch.randn(2, model.ups[1].in_channels, 50)
    r = torch.randn(2, model.resblocks[0].convs1[1].in_channels, 50)
    with torch.no_grad():
        torch.testing.assert_close(wn_conv_transpose1d(model.ups[1], x), model.ups[1](x),
                                   rtol=0, atol=0)
        conv = model.resblocks[0].convs1[1]  # dilation 3
        torch.testing.assert_close(wn_conv1d(conv, r), conv(r), rtol=0, atol=0)


def test_inference_path_equals_training_path() -> None:
    """No-grad inference (cached weights, the Mamba blocks' channel-last numba path) against
    the grad-enabled forward (parametrized weights, the general Mamba path): float32
    rounding only (rel. L2 < 1e-5), and the training path still back-propagates."""
    model = small_model(3)
    x = 0.3 * torch.randn(2, 1, 16 * 40)
    with torch.no_grad():
        fast = model(x)
    model.train()
    slow = model(x)
    slow.square().mean().backward()
    assert rel_l2(fast, slow.detach()) < 1e-5
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # float64 (the general path everywhere) agrees too
    model64 = small_model(3).double()
    with torch.no_grad():
        ref = model64(x.double())
    assert rel_l2(fast, ref) < 1e-5


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


def test_bf16_keeps_upsampling_and_head_in_float32(monkeypatch) -> None:
    """Under bf16 autocast the transposed convolutions and the output conv see and return
    float32 (the rest runs in bf16), and the output stays close to float32's."""
    model = small_model(1)
    seen: dict[str, torch.dtype] = {}
    orig = F.conv_transpose1d

    def spy(x: torch.Tensor, *args: tp.Any, **kw: tp.Any) -> torch.Tensor:
        y = orig(x, *args, **kw)
        seen[f"up{len(seen)}"] = y.dtype
        return y

    x = 0.3 * torch.randn(1, 1, 16 * 30)
    with torch.no_grad():
        y32 = model(x)
        monkeypatch.setattr(F, "conv_transpose1d", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = model(x)
    assert list(seen.values()) == [torch.float32] * 4
    assert y16.dtype == torch.float32
    assert 0 < rel_l2(y16, y32) < 2e-2
