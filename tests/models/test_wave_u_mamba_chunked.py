"""Wave-U-Mamba's Mamba stacks on the chunked CPU path (:mod:`upsr.nn.mamba_chunked`): the
official fixture with every stack chunked, float64, batch > 1 and odd lengths, bf16
projections under autocast, and the module path wherever a forward hook is registered."""

from __future__ import annotations

import json
import typing as tp

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import upsr.models.wave_u_mamba as wum
from tests.conftest import fixture_path, rel_l2
from tests.models.test_wave_u_mamba_inference import official_forward, small_model
from upsr import checkpoint
from upsr.models import build
from upsr.nn.mamba import Mamba


def _count_chunked(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Patch mamba_chunked to record each call's in_proj dtype (the stacks import it lazily)."""
    import upsr.nn.mamba_chunked as mc

    calls: list[torch.dtype] = []
    real = mc.mamba_chunked

    def spy(*args: tp.Any, **kw: tp.Any) -> torch.Tensor:
        calls.append(kw.get("proj_dtype", torch.float32))
        return real(*args, **kw)

    monkeypatch.setattr(mc, "mamba_chunked", spy)
    return calls


def test_official_fixture_with_every_stack_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hooks anywhere: all 19 blocks run chunked; the output matches the official model's
    to the fixture tolerance (1e-5)."""
    path = fixture_path("wave_u_mamba.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    official = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    assert len(official) == len(json.loads(meta["state_keys"]))
    overrides, state = wum.convert_official({"generator": official})
    model: tp.Any = build("wave-u-mamba", **overrides).eval()
    checkpoint.load_state_strict(model, state, "fixture")
    calls = _count_chunked(monkeypatch)
    with torch.inference_mode():
        got = model(tensors["input"])
    assert len(calls) == sum(isinstance(m, Mamba) for m in model.modules())
    assert rel_l2(got, tensors["output"]) <= 1e-5


@pytest.mark.parametrize("bsz,length", [(2, 16 * 37), (3, 16 * 5)])
def test_chunked_model_equals_float64_official_layout(monkeypatch: pytest.MonkeyPatch,
                                                      bsz: int, length: int) -> None:
    """Small chunks (many per block, a short last one), batch > 1: the chunked stacks give the
    float64 official-layout output to 1e-5, and restore() on odd lengths crops the same."""
    monkeypatch.setattr("upsr.nn.mamba_chunked.MIN_CHUNK", 8)
    monkeypatch.setattr("upsr.nn.mamba_chunked.LANE_BYTES", 8 * 4 * 24)  # ~24 steps
    model = small_model(5)
    x = 0.3 * torch.randn(bsz, 1, length)
    calls = _count_chunked(monkeypatch)
    with torch.inference_mode():
        got = model(x)
        odd = model.restore(x[:, 0, :length - 7])
    assert calls
    model64 = small_model(5).double()
    with torch.no_grad():
        want = official_forward(model64, x.double())
        want_odd = model64.restore(x[:, 0, :length - 7].double())
    assert rel_l2(got, want) < 1e-5
    assert odd.shape == (bsz, length - 7) and rel_l2(odd, want_odd) < 1e-5


def test_bf16_runs_mamba_projections_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the chunked blocks get bf16 in_proj/out_proj (``MAMBA_BF16``); the
    output stays within bf16 rounding of float32 and differs from the run with float32
    projections (so bf16 is really used); without autocast they stay float32."""
    model = small_model(2)
    x = 0.3 * torch.randn(1, 1, 16 * 40)
    calls = _count_chunked(monkeypatch)
    with torch.inference_mode():
        y32 = model(x)
        assert set(calls) == {torch.float32}
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = model(x)
        assert calls and set(calls) == {torch.bfloat16}
        monkeypatch.setattr(wum, "MAMBA_BF16", ())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16_fp32_proj = model(x)
    assert y16.dtype == torch.float32
    assert 0 < rel_l2(y16, y32) < 2e-2
    assert not torch.equal(y16, y16_fp32_proj)


def test_hooked_blocks_run_as_modules() -> None:
    """A forward hook on a block's module makes its stack run block by block (so the hook
    sees the block's input and output); the result equals the chunked one to 1e-6."""
    model = small_model(4)
    x = 0.3 * torch.randn(2, 1, 16 * 30)
    with torch.inference_mode():
        chunked = model(x)
    seen: list[tuple[int, ...]] = []
    first = model.emb.cnn_stem[0].mambablocks.blocks[0][1].mamba
    handle = first.register_forward_hook(lambda _m, i, _o: seen.append(tuple(i[0].shape)))
    with torch.inference_mode():
        hooked = model(x)
    handle.remove()
    assert seen == [(2, 16 * 30 // 2, model.config.channels[0])]
    assert rel_l2(hooked, chunked) < 1e-6
