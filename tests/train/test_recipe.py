"""Recipes: every shipped recipe validates; round trips; errors name the key and the choices."""

from __future__ import annotations

import dataclasses

import pytest

from upsr.errors import UsageError
from upsr.train import recipe as R

from .helpers import RECIPES

ALL = sorted(RECIPES.glob("*.toml")) + sorted((RECIPES / "tiny").glob("*.toml"))

MINIMAL = """
[model]
name = "wave-u-mamba"
[data]
train = "somewhere"
[losses]
mel = 1.0
[train]
steps = 3
"""


def test_every_trainable_system_has_a_full_and_a_tiny_recipe():
    names = {p.stem for p in ALL}
    assert names == {"aeromamba", "apollo", "wave_u_mamba", "mambawave", "audiosr",
                     "audiosr_vae", "audiosr_vocoder"}
    assert len(ALL) == 14


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_recipes_validate_and_round_trip(path):
    r = R.load(path)
    assert r.name == path.stem
    again = R.loads(R.dump(r), name=r.name)
    assert again == r  # the resolved TOML saved in runs and checkpoints is the same recipe


def test_published_numbers_in_full_recipes():
    aero = R.load(RECIPES / "aeromamba.toml")
    assert aero.losses["feature_matching"] == pytest.approx(100 * 4 / (4 + 1) / 3)
    assert (aero.optim.generator.name, aero.optim.generator.lr) == ("adam", 3e-4)
    assert aero.optim.generator.betas == (0.9, 0.999) and aero.train.seed == 2036
    apollo = R.load(RECIPES / "apollo.toml")
    assert apollo.degrade.mp3 == "24,32,48,64,96,128" and apollo.data.segment_s == 3.0
    assert apollo.optim.discriminator.betas == (0.5, 0.99) and apollo.schedule.gamma == 0.98
    wum = R.load(RECIPES / "wave_u_mamba.toml")
    assert wum.losses["mel"] == 45.0 and wum.losses["stft_wave_u_mamba"] == 10.0
    assert int(wum.data.segment_s * wum.data.sample_rate) == 25600
    assert (wum.optim.generator.grad_clip, wum.optim.discriminator.grad_clip) == (3.0, 2.0)
    mw = R.load(RECIPES / "mambawave.toml")
    g = mw.optim.generator
    assert (g.name, g.lr, g.grad_clip, mw.data.batch_size) == ("adam", 4e-4, 1.0, 2)
    assert (mw.schedule.kind, mw.schedule.unit, mw.schedule.gamma) == ("step", "epoch", 0.9)
    assert mw.losses == {"diffusion": 1.0} and mw.degrade.resample == "24k"


def test_defaults_fill_what_a_recipe_omits():
    r = R.loads(MINIMAL)
    assert r.data == R.DataSection(train=r.data.train)
    assert r.optim.generator == R.OptimizerSection()


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "recipe train.stepz: unknown key (allowed: ema, epochs, log_every, "
                      "precision, seed, steps)"),
    ("bogus.x=1", "recipe bogus: unknown key"),
    ('discriminator.kind="stylegan"', "recipe discriminator.kind: 'stylegan' is not one of "
                                      "melgan, hifigan, multi_frequency"),
    ('data.batch_size="four"', "recipe data.batch_size: must be a whole number"),
    ("data.batch_size=0", "recipe data.batch_size: must be >= 1, got 0"),
    ("data.segment_s=0", "recipe data.segment_s: must be > 0"),
    ("optim.generator.betas=[0.5]", "recipe optim.generator.betas: must be two numbers"),
    ("optim.generator.betas=[0.5, 1.5]", "betas must lie in [0, 1)"),
    ("train.ema=2", "recipe train.ema: must be <= 1"),
    ("losses.perceptual=1.0", "recipe losses.perceptual: unknown loss (allowed: stft_aero"),
    ("losses.mel=-1", "recipe losses.mel: weight must be a number >= 0"),
    ("model.config.widht=3", "unknown config key 'widht'"),
    ('model.name="nope"', "unknown model 'nope'"),
    ('model.name="sbr"', "nothing to train"),
    ("train.steps=0", "train.steps / train.epochs: give at least one"),
    ('degrade.mp3="33"', "33 is not an MP3 bitrate"),
    ('degrade.lowpass="cheby1:8"', "must be TYPE:ORDER:CUTOFF"),
    ("losses.mel=0", "needs a reconstruction loss"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(UsageError) as err:
        R.loads(MINIMAL, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_model_and_data_and_bad_toml():
    with pytest.raises(UsageError, match="model.name: missing"):
        R.loads("[data]\ntrain='x'\n[losses]\nmel=1.0\n[train]\nsteps=1\n")
    with pytest.raises(UsageError, match="data.train: missing"):
        R.loads("[model]\nname='apollo'\n[losses]\nmel=1.0\n[train]\nsteps=1\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        R.loads("[model\n")
    with pytest.raises(UsageError, match="no such recipe file"):
        R.load("/nonexistent/recipe.toml")


def test_set_overrides_parse_toml_values_and_nest():
    r = R.loads(MINIMAL, ["train.steps=7", "optim.generator.betas=[0.5, 0.9]",
                          "model.config.channels=[4, 8, 8, 8]", "data.train=bare/path",
                          "train.ema=0.999", "discriminator.options.width=16"])
    assert r.train.steps == 7 and r.optim.generator.betas == (0.5, 0.9)
    assert r.model.config == {"channels": [4, 8, 8, 8]}
    assert r.data.train == "bare/path" and r.train.ema == 0.999
    assert r.discriminator.options == {"width": 16}
    assert R.parse_value("1e-4") == 1e-4 and R.parse_value("true") is True
    for bad in ("train.steps", "=3", "train..steps=3"):
        with pytest.raises(UsageError, match="must be section.key=value"):
            R.loads(MINIMAL, [bad])
    with pytest.raises(UsageError, match="'steps' is not a table"):
        R.loads(MINIMAL, ["train.steps.x=1"])


def test_relative_data_paths_resolve_against_the_base_dir(tmp_path):
    r = R.loads(MINIMAL, base_dir=tmp_path)
    assert r.data.train == str(tmp_path / "somewhere")
    assert dataclasses.replace(r, name="x").data.valid == ""
