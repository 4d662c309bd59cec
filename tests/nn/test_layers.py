"""Snake and RMSNorm against closed forms; weight/spectral norm and the legacy key map."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from upsr.nn.discriminators import MultiScaleDiscriminator
from upsr.nn.layers import (
    RMSNorm,
    Snake,
    legacy_norm_keys_to_parametrized,
    parametrized_norm_keys_to_legacy,
    remove_norms,
    spectral_norm,
    weight_norm,
)


def _legacy_weight_norm(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


def test_snake_closed_form_and_grad():
    torch.manual_seed(0)
    snake = Snake(3, alpha=1.0)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 3.0]))
    x = torch.randn(2, 3, 50, dtype=torch.float64, requires_grad=True)
    y = snake.double()(x)
    a = np.array([0.5, 1.0, 3.0])[None, :, None]
    xn = x.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), xn + np.sin(a * xn) ** 2 / a, rtol=1e-7)
    y.sum().backward()
    # d/dx (x + sin²(αx)/α) = 1 + sin(2αx)
    np.testing.assert_allclose(x.grad.numpy(), 1 + np.sin(2 * a * xn), rtol=1e-7, atol=1e-8)
    assert snake.alpha.grad is not None and torch.isfinite(snake.alpha.grad).all()


def test_snake_logscale_stores_log_alpha():
    snake = Snake(4, alpha=2.0, logscale=True)
    np.testing.assert_allclose(snake.alpha.detach().numpy(), np.log(2.0), rtol=1e-6)
    x = torch.linspace(-3, 3, 40).view(1, 1, -1).repeat(1, 4, 1)
    expected = x + torch.sin(2.0 * x) ** 2 / 2.0
    torch.testing.assert_close(snake(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [-1, 1])
def test_rmsnorm_matches_numpy(dim):
    torch.manual_seed(1)
    norm = RMSNorm(6, eps=1e-5, dim=dim)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    shape = (2, 5, 6) if dim == -1 else (2, 6, 5)
    x = torch.randn(*shape)
    xn = x.numpy().astype(np.float64)
    w = np.arange(1.0, 7.0).reshape([-1 if i == dim % 3 else 1 for i in range(3)])
    ref = xn / np.sqrt((xn**2).mean(axis=dim, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(norm(x).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert norm(x.half()).dtype == torch.float16


def test_weight_norm_is_g_times_direction():
    torch.manual_seed(2)
    conv = weight_norm(nn.Conv1d(3, 4, 5))
    g = conv.parametrizations.weight.original0
    v = conv.parametrizations.weight.original1
    expected = g * v / v.norm(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(conv.weight, expected)
    assert g.shape == (4, 1, 1)


def test_spectral_norm_has_unit_top_singular_value():
    torch.manual_seed(3)
    conv = spectral_norm(nn.Conv2d(4, 8, 3))
    for _ in range(50):  # each training-mode access runs one power iteration
        conv(torch.randn(1, 4, 5, 5))
    conv.eval()
    sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(8, -1), ord=2)
    assert float(sigma) == pytest.approx(1.0, rel=1e-3)


def test_legacy_weight_norm_round_trip_is_exact():
    torch.manual_seed(4)
    old = _legacy_weight_norm(nn.Conv1d(3, 5, 7, padding=3))
    old_state = old.state_dict()
    assert set(old_state) == {"bias", "weight_g", "weight_v"}
    new = weight_norm(nn.Conv1d(3, 5, 7, padding=3))
    new.load_state_dict(legacy_norm_keys_to_parametrized(old_state), strict=True)
    x = torch.randn(2, 3, 40)
    assert torch.equal(old(x), new(x))
    # ... and back: parametrized keys → legacy keys into a fresh legacy module.
    back = _legacy_weight_norm(nn.Conv1d(3, 5, 7, padding=3))
    back.load_state_dict(parametrized_norm_keys_to_legacy(new.state_dict()), strict=True)
    assert torch.equal(back(x), old(x))


def test_legacy_spectral_norm_key_map_preserves_eval_output():
    torch.manual_seed(5)
    old = torch.nn.utils.spectral_norm(nn.Conv1d(2, 6, 3))
    for _ in range(3):
        old(torch.randn(1, 2, 20))  # move u, v away from their initial values
    old.eval()
    state = old.state_dict()
    assert {"weight_orig", "weight_u", "weight_v"} <= set(state)
    new = spectral_norm(nn.Conv1d(2, 6, 3))
    new.load_state_dict(legacy_norm_keys_to_parametrized(state), strict=True)
    new.eval()
    x = torch.randn(2, 2, 30)
    torch.testing.assert_close(new(x), old(x), rtol=1e-6, atol=1e-7)
    assert set(parametrized_norm_keys_to_legacy(new.state_dict())) == set(state)


def test_key_map_round_trip_on_a_mixed_model():
    msd = MultiScaleDiscriminator(width=16)  # scale 0 spectral norm, scales 1-2 weight norm
    state = msd.state_dict()
    legacy = parametrized_norm_keys_to_legacy(state)
    assert "discriminators.0.convs.0.weight_orig" in legacy
    assert "discriminators.0.convs.0.weight_u" in legacy
    assert "discriminators.1.conv_post.weight_g" in legacy
    assert "discriminators.1.conv_post.weight_v" in legacy
    assert not any("parametrizations" in k for k in legacy)
    back = legacy_norm_keys_to_parametrized(legacy)
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)


def test_remove_norms_keeps_outputs_and_leaves_plain_weights():
    torch.manual_seed(6)
    model = nn.Sequential(weight_norm(nn.Conv1d(1, 4, 3)), nn.ReLU(),
                          spectral_norm(nn.Conv1d(4, 2, 3)))
    model.eval()
    x = torch.randn(1, 1, 32)
    before = model(x)
    remove_norms(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(model(x), before)
