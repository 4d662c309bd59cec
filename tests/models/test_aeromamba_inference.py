"""AEROMamba's inference paths against float64/float32 references: the explicit mixed-precision
path under bf16 autocast (decoder convolutions in bf16, everything else in float32) and the
channels-first entry to the Mamba blocks (paper mode)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.conftest import randomise_batchnorms, rel_l2
from upsr import models
from upsr.audio.synth import music_like
from upsr.models import aeromamba as am

SR = 11025


def _small(**kw) -> am.AEROMamba:
    torch.manual_seed(0)
    model = models.build("aeromamba", channels=4, **kw).eval()
    randomise_batchnorms(model)  # trained-like BatchNorms (fresh ones are identities)
    return model


def _rows(n: int) -> torch.Tensor:
    """Two rows of music-like audio, ``n`` samples (odd lengths test the padding)."""
    a = music_like(n / SR + 0.01, SR, channels=1, seed=1)[0][:n]
    b = music_like(n / SR + 0.01, SR, channels=1, seed=2)[0][:n]
    return torch.from_numpy(np.stack([a, 0.4 * b]).astype(np.float32))


def _bf16(model: nn.Module, x: torch.Tensor, inter: dict | None = None) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x, inter)


def test_bf16_path_is_close_to_float64_and_keeps_the_encoder_in_float32():
    """Under bf16 autocast at inference the decoder's convolutions and the first two encoder
    layers' products round to bf16, the rest stays float32 (the encoder outputs are float32
    and within 0.5 % of the float32 forward's): the output stays within 1 % relative L2 of the
    float64 network (measured 0.5 %), closer than plain per-op autocast (the autograd path
    under autocast: measured 0.9 %)."""
    model = _small(official_forward=True)
    x = _rows(1501)
    with torch.inference_mode():
        inter32: dict = {}
        y32 = model(x, inter32)
    inter16: dict = {}
    y16 = _bf16(model, x, inter16)
    with torch.no_grad():
        y64 = model.double()(x.double())
    model.float()
    assert y16.dtype == torch.float32 and y16.shape == y64.shape == (2, 4 * 1501)
    for k in range(4):
        assert inter16[f"encoder.{k}.out"].dtype == torch.float32
        assert rel_l2(inter16[f"encoder.{k}.out"], inter32[f"encoder.{k}.out"]) < 5e-3, k
    err16 = rel_l2(y16, y64)
    assert 1e-4 < err16 < 1e-2  # > 1e-4: bf16 did run
    assert rel_l2(y32, y64) < 1e-5
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast = model(x).detach().float()  # the autograd path: per-op autocast
    assert err16 < rel_l2(y_autocast, y64)


def test_bf16_path_with_frozen_statistics():
    """The engine's output pass (whole-signal statistics frozen, each GroupNorm one multiply-add
    in float32 rounded once to bf16) under bf16 stays within 1 % of float64 with the same
    statistics, for one row and for two."""
    model = _small(official_forward=True)
    x = _rows(1537)
    stats = model.finish_statistics(
        model.collect_statistics(x, (0, x.shape[-1]), True, None, None))
    model.use_statistics(stats)
    try:
        y16 = _bf16(model, x)
        model.use_statistics(stats[1:])
        y16_one = _bf16(model, x[1:])
        with torch.no_grad():
            model.double()
            model.use_statistics([{k: (m.double(), v.double()) for k, (m, v) in row.items()}
                                  for row in stats])
            y64 = model(x.double())
    finally:
        model.float().use_statistics(None)
    assert 1e-4 < rel_l2(y16, y64) < 1e-2
    assert 1e-4 < rel_l2(y16_one, y64[1:]) < 1e-2


def test_frozen_norm_of_bf16_rounds_once():
    """``_StatNorm``'s frozen path on a bf16 input computes in float32 and rounds once: equal
    to the float32 result rounded to bf16."""
    norm = am._StatNorm(2, 6)
    ctl = am._StatControl()
    norm.ctl, norm.key = ctl, "n"
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_(0, 1.0)
    x = (torch.randn(3, 6, 5, 17) * 0.01 + 40.0).bfloat16()  # a large mean: no mean rounding
    ctl.mode = "frozen"
    ctl.frozen = {"n": (torch.full((3, 2), 40.0, dtype=torch.float64),
                        torch.full((3, 2), 1e-4, dtype=torch.float64))}
    with torch.no_grad():
        got = norm(x)
        ref = norm(x.float())
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref.bfloat16())


def test_training_under_autocast_keeps_autograd():
    """With gradients on (training under autocast) the model takes its plain path: the
    explicit path is inference only."""
    model = _small(official_forward=True).train()
    x = _rows(1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().square().mean().backward()
    assert model.decoder[0].rewrite.weight.grad is not None


def test_mamba_residual_equals_the_transposed_block_in_float64():
    """The channels-first Mamba entry (``in_proj`` on the transposed view, the LayerScale folded
    into ``out_proj``, the residual added by the product) equals ``x + g·Mamba(yᵀ)ᵀ`` computed
    by the block's general path in float64, to float32 rounding (odd length, 3 rows)."""
    from upsr.nn.mamba import Mamba

    torch.manual_seed(0)
    m = Mamba(8, d_state=4).eval()
    g = torch.Generator().manual_seed(1)
    y, x = torch.randn(2, 3, 8, 301, generator=g)
    gain = torch.rand(8, generator=g) + 0.5
    with torch.inference_mode():
        got = am._mamba_residual(m, y, x, gain)
    with torch.no_grad():
        m64 = m.double()
        ref = x.double() + gain.double()[:, None] * m64(y.double().transpose(1, 2)).transpose(1, 2)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert rel_l2(got - x, ref - x.double()) < 1e-5


def test_bf16_weight_cache_follows_weight_updates():
    """The bf16 copies of the weights are kept between calls, and renewed when the weights
    change in place (``load_state_dict``, in-place ops; not through ``.data``, which hides
    them from the version counter) or are replaced: the bf16 output then equals that of a
    model that never cached the old ones."""
    model = _small(official_forward=True)
    x = _rows(700)
    _bf16(model, x)  # fills the cache
    other = _small(official_forward=True)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    model.load_state_dict(other.state_dict())
    assert torch.equal(_bf16(model, x), _bf16(other, x))
    model.decoder[1].rewrite.weight = nn.Parameter(other.decoder[1].rewrite.weight * 0.5)
    with torch.no_grad():
        other.decoder[1].rewrite.weight.mul_(0.5)
    assert torch.equal(_bf16(model, x), _bf16(other, x))
    with torch.no_grad():  # an in-place update of a cached weight (an optimiser step's kind)
        model.encoder[0].conv.weight.add_(0.01)
        other.encoder[0].conv.weight.add_(0.01)
    assert torch.equal(_bf16(model, x), _bf16(other, x))
