"""The trainer's diffusion system on the tiny MambaWave recipe: the loss falls, validation runs
the sampler and writes examples, the checkpoint restores a file through ``upsr enhance``, and a
GAN-only loss on a diffusion model (or the reverse) is a recipe error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from upsr.errors import UsageError
from upsr.train import loop
from upsr.train import recipe as R

from .helpers import RECIPES, mean, read_log, tiny_overrides


def test_tiny_mambawave_learns_validates_and_restores(tiny_data, tmp_path, run_cli):
    r = R.load(RECIPES / "tiny" / "mambawave.toml",
               tiny_overrides("wave_u_mamba", tiny_data, "valid.every=20"))
    run = loop.train(r, tmp_path / "run", device="cpu")
    rows = read_log(tmp_path / "run")
    assert [int(x["step"]) for x in rows] == list(range(1, 21))
    first, last = mean(rows[:5], "loss_g"), mean(rows[-5:], "loss_g")
    assert last < 0.95 * first, (first, last)
    final = rows[-1]
    for metric in ("lsd", "lsd_nuwave", "snr", "si_snr"):
        assert np.isfinite(float(final[metric])), metric
    valid = tmp_path / "run" / "valid" / "step_0000020"
    assert len(list(valid.glob("*.wav"))) == 3 and len(list(valid.glob("*.png"))) == 1
    ckpt = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    from upsr import load_model

    model = load_model(str(ckpt))
    for k, v in model.state_dict().items():
        assert torch.equal(v, run.state.generator.state_dict()[k]), k
    # a 24 kHz file through the CLI, with the diffusion options
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2400) / 24000).astype(np.float32)
    src = tmp_path / "in" / "a.wav"
    src.parent.mkdir()
    sf.write(src, x, 24000, subtype="FLOAT")
    outs = []
    for name in ("o1", "o2"):
        code, _, err = run_cli("enhance", src, "-o", tmp_path / name, "--model", ckpt,
                               "--steps", "3", "--seed", "5", "-q")
        assert code == 0, err
        y, sr = sf.read(tmp_path / name / "a.wav")
        assert sr == 48000 and y.shape == (4800,) and np.isfinite(y).all()
        outs.append(y)
    assert np.array_equal(outs[0], outs[1])  # --seed: deterministic
    code, _, err = run_cli("enhance", src, "-o", tmp_path / "o3", "--model", ckpt,
                           "--guidance", "3", "-q")
    assert code != 0 and "guidance" in err and "Traceback" not in err


def test_diffusion_losses_match_the_model():
    text = (RECIPES / "tiny" / "mambawave.toml").read_text()
    with pytest.raises(UsageError, match="diffusion model"):
        R.loads(text.replace("diffusion = 1.0", "diffusion = 1.0\nl1 = 1.0"))
    gan = (RECIPES / "tiny" / "wave_u_mamba.toml").read_text()
    with pytest.raises(UsageError, match="not a diffusion model"):
        R.loads(gan.replace("[losses]", "[losses]\ndiffusion = 1.0"))
