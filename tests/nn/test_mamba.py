"""Mamba / BiMamba blocks: parity with the official module, init, state dicts, step mode."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import fixture_path, rel_l2
from upsr.errors import UsageError
from upsr.nn import BiMamba, Mamba
from upsr.nn.mamba import causal_depthwise_conv1d

MODULE_FIXTURES = ["mamba_v1.safetensors", "mamba_v1_d48.safetensors"]


def _load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    path = fixture_path(name)
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return json.loads(meta["constructor_args"]), state, tensors | {"_keys": json.loads(
        meta["state_keys"])}


@pytest.mark.parametrize("backend", ["auto", "ref"])
@pytest.mark.parametrize("name", MODULE_FIXTURES)
def test_official_parity(name: str, backend: str) -> None:
    """Output and the scan's own output match the official Mamba (reference path) to 1e-5."""
    args, state, t = _load_fixture(name)
    m = Mamba(**args, backend=backend)
    assert list(m.state_dict()) == t["_keys"]  # same keys, same order as mamba_ssm
    m.load_state_dict(state, strict=True)
    captured: dict[str, torch.Tensor] = {}

    def hook(mod, inp, out):  # the gated scan output = inter.scan.y
        captured["y"] = inp[0].transpose(1, 2)

    m.out_proj.register_forward_hook(hook)
    with torch.no_grad():
        y = m(t["input"])
    assert rel_l2(y, t["output"]) <= 1e-5
    assert rel_l2(captured["y"], t["inter.scan.y"]) <= 1e-5


def test_state_dict_round_trip_with_official_layout() -> None:
    """An official state dict loads strictly, and ours comes back with the same keys/values."""
    args, state, t = _load_fixture("mamba_v1.safetensors")
    m = Mamba(**args)
    m.load_state_dict(state, strict=True)
    back = m.state_dict()
    assert list(back) == t["_keys"]
    for k, v in state.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v)
    # and a fresh module's state loads into one built from the official shapes
    fresh = Mamba(**args).state_dict()
    other = Mamba(**args)
    other.load_state_dict(fresh, strict=True)
    assert all(torch.equal(other.state_dict()[k], fresh[k]) for k in fresh)


@pytest.mark.parametrize("d_model,expected_rank", [(32, 2), (48, 3), (64, 4), (17, 2)])
def test_shapes_and_defaults(d_model: int, expected_rank: int) -> None:
    m = Mamba(d_model)
    di, n, k = 2 * d_model, 16, 4
    shapes = {k_: tuple(v.shape) for k_, v in m.state_dict().items()}
    assert shapes == {
        "A_log": (di, n), "D": (di,), "in_proj.weight": (2 * di, d_model),
        "conv1d.weight": (di, 1, k), "conv1d.bias": (di,),
        "x_proj.weight": (expected_rank + 2 * n, di), "dt_proj.weight": (di, expected_rank),
        "dt_proj.bias": (di,), "out_proj.weight": (d_model, di),
    }
    assert m.dt_rank == expected_rank == math.ceil(d_model / 16)
    with_bias = Mamba(d_model, bias=True, conv_bias=False).state_dict()
    assert "in_proj.bias" in with_bias and "out_proj.bias" in with_bias
    assert "conv1d.bias" not in with_bias


def test_initialisation() -> None:
    """S4D-real A, unit D, dt_proj weight range, softplus(bias) log-uniform in [dt_min, dt_max]."""
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.002, dt_max=0.05)
    assert torch.allclose(torch.exp(m.A_log), torch.arange(1.0, 17.0).repeat(128, 1))
    assert torch.equal(m.D.detach(), torch.ones(128))
    std = 4**-0.5
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= std and w.abs().max() > 0.9 * std
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    # log-uniform: log(dt) spreads over the whole log range
    logs = torch.log(dt)
    assert logs.min() < math.log(0.002) + 0.5 and logs.max() > math.log(0.05) - 0.5
    assert getattr(m.dt_proj.bias, "_no_reinit", False)
    assert getattr(m.A_log, "_no_weight_decay", False) and getattr(m.D, "_no_weight_decay", False)
    c = Mamba(32, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(c.dt_proj.weight, torch.full_like(c.dt_proj.weight, 2 * 2**-0.5))
    # floor: with dt_min below the floor, every dt is >= floor
    f = Mamba(32, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    assert torch.allclose(F.softplus(f.dt_proj.bias.detach().double()),
                          torch.full((64,), 1e-4, dtype=torch.float64), rtol=1e-4)


def _randomise(m: torch.nn.Module, seed: int) -> None:
    """Non-structured weights (as the fixtures do) so tests do not rest on init values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "A" in name and "log" in name:
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 10 + 0.25))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("k,bias", [(4, True), (1, True), (3, False)])
def test_causal_conv_equals_padded_conv1d(k: int, bias: bool) -> None:
    """Shift-and-add conv = official nn.Conv1d(padding=K-1)[..., :L], values and gradients."""
    conv = torch.nn.Conv1d(6, 6, k, groups=6, padding=k - 1, bias=bias).double()
    x = torch.randn(2, 6, 31, dtype=torch.float64, requires_grad=True)
    want = conv(x)[..., :31]
    got = causal_depthwise_conv1d(x, conv.weight, conv.bias)
    assert rel_l2(got.detach(), want.detach()) < 1e-14
    g = torch.randn_like(want)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    gw = torch.autograd.grad(want, params, g)
    gg = torch.autograd.grad(got, params, g)
    assert all(rel_l2(a, b) < 1e-13 for a, b in zip(gg, gw))


def test_step_mode_equals_forward() -> None:
    """Stepping token by token from zero states reproduces the parallel forward."""
    torch.manual_seed(1)
    m = Mamba(16, d_state=8, d_conv=3).double()
    _randomise(m, 3)
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        conv_state, ssm_state = m.allocate_inference_cache(2)
        assert conv_state.shape == (2, 32, 3) and ssm_state.shape == (2, 32, 8)
        steps = [m.step(x[:, t : t + 1], conv_state, ssm_state)[0] for t in range(37)]
    assert rel_l2(torch.cat(steps, dim=1), y) < 1e-12


def test_bimamba_matches_two_directions() -> None:
    """BiMamba = out_proj(fwd scan + flip(bwd scan of flipped x, z)), shared in_proj."""
    torch.manual_seed(2)
    bi = BiMamba(16, d_state=14).double()
    _randomise(bi, 4)
    keys = list(bi.state_dict())
    assert keys[:4] == ["A_log", "D", "A_b_log", "D_b"]
    assert {"conv1d_b.weight", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias"} <= set(keys)
    assert keys[-1] == "out_proj.weight"
    fwd = Mamba(16, d_state=14).double()
    bwd = Mamba(16, d_state=14).double()
    sd = bi.state_dict()
    fwd.load_state_dict({k: sd[k] for k in fwd.state_dict()})
    bwd_sd = {k: sd[k] for k in bwd.state_dict()}
    for k in ("A_log", "D"):
        bwd_sd[k] = sd[k.replace("_log", "_b_log") if k == "A_log" else "D_b"]
    for mod in ("conv1d", "x_proj", "dt_proj"):
        for k in list(bwd_sd):
            if k.startswith(mod + "."):
                bwd_sd[k] = sd[k.replace(mod, mod + "_b", 1)]
    bwd.load_state_dict(bwd_sd)
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    with torch.no_grad():
        got = bi(x)
        # out_proj is linear and bias-free: out_proj(a + b) = out_proj(a) + out_proj(b)
        want = fwd(x) + bwd(x.flip(1)).flip(1)
    assert rel_l2(got, want) < 1e-12


def test_training_gradients_flow() -> None:
    """A backward pass through the whole block reaches every parameter with finite values."""
    m = Mamba(8, d_state=4)
    _randomise(m, 5)
    x = torch.randn(2, 50, 8, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_cpu_and_ref_backends_agree_with_gradients() -> None:
    """Same module, two backends: equal outputs and parameter gradients (float64)."""
    m = Mamba(8, d_state=4).double()
    _randomise(m, 6)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    grads = {}
    outs = {}
    for backend in ("cpu", "ref"):
        m.zero_grad()
        m.backend = backend
        y = m(x)
        y.pow(2).sum().backward()
        outs[backend] = y.detach()
        grads[backend] = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert rel_l2(outs["cpu"], outs["ref"]) < 1e-12
    for k in grads["ref"]:
        assert rel_l2(grads["cpu"][k], grads["ref"][k]) < 1e-10, k


def test_bad_input_is_a_usage_error() -> None:
    m = Mamba(8)
    with pytest.raises(UsageError, match="input must be"):
        m(torch.randn(2, 5, 9))
    with pytest.raises(UsageError, match="unknown backend"):
        Mamba(8, backend="triton")
    with pytest.raises(UsageError, match="dt_init"):
        Mamba(8, dt_init="fancy")
    with pytest.raises(UsageError, match="no recurrent step"):
        BiMamba(8).step(torch.zeros(1, 1, 8), None, None)


@pytest.mark.parametrize("conv_bias,length", [(True, 257), (False, 3)])
def test_channel_last_inference_path_equals_the_general_path(conv_bias: bool,
                                                             length: int) -> None:
    """Without autograd on CPU, Mamba runs the transpose-free numba path (conv+SiLU kernel,
    channel-last scan with the gate fused); it must compute what the autograd path does,
    also for sequences shorter than the conv kernel."""
    torch.manual_seed(4)
    m = Mamba(24, d_state=8, d_conv=4, conv_bias=conv_bias).eval()
    with torch.no_grad():
        m.D.normal_()
    h = torch.randn(2, length, 24)
    general = m(h)                       # grad enabled: the [B, Di, L] path
    assert general.requires_grad
    with torch.inference_mode():
        fast = m(h)
    assert rel_l2(fast, general.detach()) < 1e-5


def _fast_vs_float64(cls: type, d_model: int, bsz: int, length: int, seed: int,
                     autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel-last inference output, float64 output of the same block on the ``ref``
    backend: the per-step torch loop, autograd path)."""
    torch.manual_seed(seed)
    m = cls(d_model, d_state=8, d_conv=4).eval()
    _randomise(m, seed)
    with torch.no_grad():  # realistic Δ: softplus(bias) ≈ 0.01-0.1, some far larger / smaller
        for name, p in m.named_parameters():
            if name.startswith("dt_proj") and name.endswith("bias"):
                p.copy_(torch.randn(p.shape) * 2 - 3)
    h = torch.randn(bsz, length, d_model)
    ref = cls(d_model, d_state=8, d_conv=4, backend="ref").double()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        want = ref(h.double())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = m(h)
    return got, want


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
@pytest.mark.parametrize("d_model,bsz,length", [(24, 1, 0), (24, 2, 1), (20, 3, 3),
                                                (24, 1, 131), (20, 2, 257)])
def test_inference_path_equals_float64_reference(cls: type, d_model: int, bsz: int,
                                                 length: int) -> None:
    """Mamba and BiMamba inference on CPU (channel-last kernels: conv+SiLU, Δ projection and
    softplus, scan, gate; BiMamba's backward branch as an anti-causal conv and a reversed scan)
    equals the float64 per-step reference to 1e-5 — empty and 1-step sequences, lengths shorter
    than the conv and not multiples of any block, batch > 1, Di = 40 and 48 (channel blocks
    not multiples of the vector width)."""
    got, want = _fast_vs_float64(cls, d_model, bsz, length, seed=length + bsz)
    assert got.dtype == torch.float32 and got.shape == (bsz, length, d_model)
    assert not got.requires_grad
    assert rel_l2(got, want) < 1e-5


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_inference_path_under_bf16_autocast(cls: type) -> None:
    """Under bf16 autocast the projections run in bf16, the kernels (state included) in
    float32: the output stays within bf16 rounding of the float64 reference."""
    got, want = _fast_vs_float64(cls, 24, 2, 200, seed=9, autocast=True)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
    assert rel_l2(got.float(), want) < 3e-2


def test_bimamba_inference_equals_its_general_path() -> None:
    """The transpose/flip-free BiMamba inference path equals its own autograd path (float32)."""
    torch.manual_seed(11)
    bi = BiMamba(16, d_state=14).eval()
    _randomise(bi, 12)
    h = torch.randn(2, 333, 16)
    general = bi(h)
    assert general.requires_grad
    with torch.no_grad():
        fast = bi(h)
    assert rel_l2(fast, general.detach()) < 1e-5
