"""The trainer on the tiny recipes: learning, validation, checkpoints usable by enhance, and
exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from upsr.errors import UsageError
from upsr.train import data as D
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
    # the logged validation score is what the saved checkpoint scores on the held-out item
    from upsr.audio.synth import music_like
    from upsr.eval import metrics as M

    item = run.valid[0]
    with torch.no_grad():
        est = model.eval().restore(torch.from_numpy(item.lr)).numpy()
    n = min(est.shape[-1], item.hr.shape[-1])
    assert M.lsd(item.hr[:, :n], est[:, :n]) == pytest.approx(float(final["lsd"]), rel=1e-4)
    # and upsr enhance's engine runs it on audio at the model's input rate
    in_sr = model.in_rate or run.recipe.data.sample_rate
    x = music_like(0.25, in_sr, channels=1, seed=9)
    y, out_sr = enhance_array(x, in_sr, model)
    assert out_sr == run.recipe.data.sample_rate
    assert y.shape[-1] == round(x.shape[-1] * out_sr / in_sr) and np.std(y) > 1e-3


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


def test_best_is_chosen_at_every_validation(tiny_data, tmp_path, monkeypatch):
    """Validations at steps 1, 2, 3 (checkpoints only at the end): best is step 2's model."""
    scores = iter([1.0, 0.5, 2.0])
    seen = {}

    def fake_validate(run):
        seen[run.state.step] = {k: v.clone() for k, v in run.state.generator.state_dict().items()}
        return {"lsd": next(scores)}

    monkeypatch.setattr(loop, "validate", fake_validate)
    _train("aeromamba", tiny_data, tmp_path / "run", "train.steps=3", "valid.every=1",
           "checkpoint.every=0", "data.batch_size=1")
    from upsr import checkpoint

    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    meta = checkpoint.read_metadata(best)
    assert meta["step"] == "2" and json.loads(meta["metrics"]) == {"lsd": 0.5}
    model = checkpoint.load(best)
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[2][k]), k


def test_resume_refuses_another_recipe_and_names_the_keys(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    _train("aeromamba", tiny_data, run_dir, "train.steps=2", "data.batch_size=1")
    saved = (run_dir / "recipe.toml").read_text()
    with pytest.raises(UsageError) as info:
        _train("aeromamba", tiny_data, run_dir, "train.steps=4", "data.batch_size=2",
               "optim.generator.lr=1e-4", resume=True)
    msg = str(info.value)
    assert "data.batch_size" in msg and "optim.generator.lr" in msg
    assert "train.steps" not in msg.split(" in ", 1)[1].split(";")[0]
    assert (run_dir / "recipe.toml").read_text() == saved  # untouched
    assert [r["step"] for r in read_log(run_dir)] == ["1", "2"]
    # steps and logging cadence may change: the run continues and records the new recipe
    run = _train("aeromamba", tiny_data, run_dir, "train.steps=3", "data.batch_size=1",
                 "train.log_every=3", resume=True)
    assert run.state.step == 3
    again = R.loads((run_dir / "recipe.toml").read_text())
    assert (again.train.steps, again.train.log_every) == (3, 3)


def test_tiny_recipes_train_on_builtin_audio_without_a_data_folder(tmp_path, monkeypatch):
    """As the README shows in a fresh clone: no --set data.train (and run from elsewhere)."""
    monkeypatch.chdir(tmp_path)
    r = R.load(RECIPES / "tiny" / "wave_u_mamba.toml", ["train.steps=2"])
    assert r.data.train == D.BUILTIN
    run = loop.train(r, tmp_path / "run", device="cpu")
    assert run.state.step == 2 and len(run.valid) == 1
    assert run.valid[0].hr.shape == (1, int(0.2 * 48000))
    # the generated clips are music-like, full band, at the recipe's rate and channels
    src = D.open_source(D.BUILTIN, "data.train", sr=44100, channels=2)
    assert len(src.clips) == D.BUILTIN_CLIPS
    x = src.clips[0].samples
    assert x is not None and x.shape == (2, 44100)
    crop = D.read_crop(src.clips[0], 0.5, 1000, 44100, 2)
    np.testing.assert_array_equal(crop, x[:, 22050:23050])


def test_missing_data_folder_names_the_set_option(tmp_path):
    with pytest.raises(UsageError, match=r"--set data\.train=DIR"):
        D.open_source(tmp_path / "nope", "data.train")


@pytest.mark.parametrize("spec, expected", [
    ("mp3=64", {"bitrate_kbps": 64.0}),
    ("mp3=32,128", {"bitrate_kbps": 64.0}),  # geometric mean: the choice is by log distance
    ("resample=11025", {"cutoff_hz": 5512.5}),
    ("lowpass=cheby1:8:4k-16k resample=22050", {"cutoff_hz": 8000.0}),
    ("lowpass=butter:4:6k mp3=128", {"bitrate_kbps": 128.0, "cutoff_hz": 6000.0}),
    ("", {}),
])
def test_variant_of_the_degradation(spec, expected):
    from upsr.data.spec import parse_spec

    src = D.Source(Path("x"), ())
    assert D.variant_of(parse_spec(spec), src) == expected


def test_checkpoints_carry_the_variant_that_bitrate_auto_picks(tiny_data, tmp_path,
                                                                 monkeypatch):
    """Two runs trained for 32 and 128 kbps: enhance --bitrate-auto's chooser takes the
    nearer one for a 48 kbps and a 112 kbps file."""
    from upsr import checkpoint, models
    from upsr.infer.batch import Item, pick_variant

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for kbps in (32, 128):
        _train("apollo", tiny_data, tmp_path / f"r{kbps}", "train.steps=1", "data.batch_size=1",
               f'degrade.mp3="{kbps}"')
        ck = tmp_path / f"r{kbps}" / "checkpoints"
        for name in ("latest", "best"):
            meta = checkpoint.read_metadata(ck / f"{name}.safetensors")
            assert json.loads(meta["variant"]) == {"bitrate_kbps": float(kbps)}
        (models_dir / f"apollo-{kbps}.safetensors").write_bytes(
            (ck / "latest.safetensors").read_bytes())
    monkeypatch.setenv("UPSR_MODEL_DIR", str(models_dir))
    monkeypatch.setattr(models, "model_dirs", lambda: [models_dir])
    base = models.build("apollo", feature_dim=16, layer=1)
    for kbps, want in ((48, 32), (112, 128)):
        item = Item(src="a.mp3", dst="b.wav", bitrate_kbps=kbps)
        assert pick_variant(base, "apollo", item) == str(models_dir / f"apollo-{want}.safetensors")


def test_ema_averages_trained_tensors_and_copies_frozen_ones_exactly():
    from upsr.train.loop import _ema_update

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    model[0].requires_grad_(False)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    start = {k: v.clone() for k, v in ema.items()}
    with torch.no_grad():
        model[1].weight.add_(1.0)
    decay = 0.9999
    _ema_update(ema, model, decay)
    # the plain float32 average of two equal tensors is not always equal to them (rounding):
    frozen_w = start["0.weight"]
    naive = frozen_w.clone().mul_(decay).add_(frozen_w, alpha=1 - decay)
    assert not torch.equal(naive, frozen_w)
    assert torch.equal(ema["0.weight"], frozen_w) and torch.equal(ema["0.bias"], start["0.bias"])
    want = decay * start["1.weight"].double() + (1 - decay) * model[1].weight.double()
    assert torch.allclose(ema["1.weight"].double(), want, atol=1e-6)
    assert not torch.equal(ema["1.weight"], start["1.weight"])


@pytest.mark.parametrize("path", sorted((RECIPES / "tiny").glob("*.toml")), ids=lambda p: p.stem)
def test_every_tiny_recipe_runs_on_builtin_audio_in_a_fresh_folder(path, tmp_path, monkeypatch):
    """The README's 'upsr train recipes/tiny/X.toml --out DIR' works for every system without
    a data folder: the tiny recipes default to generated audio."""
    monkeypatch.chdir(tmp_path)
    r = R.load(path, ["train.steps=1"])
    assert r.data.train == D.BUILTIN
    if path.stem in ("mambawave", "audiosr"):  # the others run in the tests above
        run = loop.train(r, tmp_path / "run", device="cpu")
        assert run.state.step == 1
