"""The trainer on the tiny recipes: learning, validation, checkpoints usable by enhance, and
exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upsr.train import loop
from upsr.train import recipe as R

from .helpers import RECIPES, mean, read_log, tiny_overrides

RECON = {"aeromamba": "stft_aero", "apollo": "freq_mae", "wave_u_mamba": "mel"}


def _train(name, data, out, *extra, resume=False):
    r = R.load(RECIPES / "tiny" / f"{name}.toml", tiny_overrides(name, data, *extra))
    return loop.train(r, out, resume=resume, device="cpu")


@pytest.mark.parametrize("name", ["aeromamba", "wave_u_mamba", "apollo"])
def test_tiny_recipe_learns_validates_and_checkpoints(name, tiny_data, tmp_path):
    from upsr import load_model
    from upsr.infer.engine import enhance_array

    run = _train(name, tiny_data, tmp_path / "run", "data.batch_size=1")
    rows = read_log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    key = RECON[name]
    first, last = mean(rows[:5], key), mean(rows[-5:], key)
    assert last < 0.9 * first, (first, last)
    final = rows[-1]
    for metric in ("lsd", "lsd_hf", "si_snr"):
        assert np.isfinite(float(final[metric]))
    valid = tmp_path / "run" / "valid" / "step_0000030"
    assert len(list(valid.glob("*.png"))) == 1 and len(list(valid.glob("*.wav"))) == 3
    assert (tmp_path / "run" / "recipe.toml").read_text() == run.recipe_text
    model = load_model(str(tmp_path / "run" / "checkpoints" / "latest.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, run.state.generator.state_dict()[k])
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    sr = 48000 if name == "wave_u_mamba" else 11025
    y, out_sr = enhance_array(np.zeros((1, sr // 4), np.float32) + 0.01, sr, model)
    assert out_sr == run.recipe.data.sample_rate and np.isfinite(y).all()


def test_resume_continues_exactly(tiny_data, tmp_path):
    """4 steps == 2 steps, stop, --resume, 2 more (EMA, per-step schedule, mid-epoch stop)."""
    extra = ("train.steps=4", "train.ema=0.9", 'schedule.kind="step"', 'schedule.unit="step"',
             "schedule.gamma=0.5", "data.epoch_items=6", "data.batch_size=1")
    whole = _train("aeromamba", tiny_data, tmp_path / "a", *extra)
    _train("aeromamba", tiny_data, tmp_path / "b", *extra, "train.steps=2")
    resumed = _train("aeromamba", tiny_data, tmp_path / "b", *extra, resume=True)
    assert resumed.state.step == whole.state.step == 4
    for part in ("generator", "discriminator"):
        a = getattr(whole.state, part).state_dict()
        b = getattr(resumed.state, part).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    assert whole.state.ema is not None and resumed.state.ema is not None
    for k in whole.state.ema:
        assert torch.equal(whole.state.ema[k], resumed.state.ema[k])
    assert whole.state.opt_g.param_groups[0]["lr"] == resumed.state.opt_g.param_groups[0]["lr"]
    assert [r["step"] for r in read_log(tmp_path / "b")] == ["1", "2", "3", "4"]
