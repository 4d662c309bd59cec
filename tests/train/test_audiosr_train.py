"""AudioSR's latent-diffusion stage through ``upsr train``: the tiny recipe learns (the
v-prediction loss falls), the VAE and vocoder stay frozen, EMA weights are exported, and the
checkpoint restores a file through ``upsr enhance --model FILE``."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from upsr.train import loop
from upsr.train import recipe as R

from .helpers import RECIPES, enhances_at_48k, read_log


def test_tiny_audiosr_diffusion_stage(tiny_data, tmp_path, run_cli):
    torch.set_num_threads(1)  # tiny ops: one thread is faster on the shared CI cores
    from upsr.models.audiosr.model import AudioSR, AudioSRConfig

    data = f'data.train="{tiny_data[48000]}"'
    r = R.load(RECIPES / "tiny" / "audiosr.toml", [data])
    # start from a "stage-trained" VAE + vocoder (random here) through model.init
    from upsr import checkpoint

    torch.manual_seed(5)
    init = AudioSR(AudioSRConfig(**r.model.config))
    checkpoint.save(tmp_path / "init.safetensors", init)
    r = R.load(RECIPES / "tiny" / "audiosr.toml",
               [data, f'model.init="{tmp_path / "init.safetensors"}"', "train.steps=16"])
    run = loop.train(r, tmp_path / "run", device="cpu")
    rows = read_log(tmp_path / "run")
    assert len(rows) == 16
    assert all(np.isfinite(float(row["loss_g"])) for row in rows)
    # the logged loss is one random (t, noise) per step; compare the objective itself on a
    # fixed batch and fixed draws, before and after training
    from upsr.audio.filters import lowpass

    hr = torch.from_numpy(sf.read(str(sorted(tiny_data[48000].glob("*.wav"))[0]),
                                  dtype="float32")[0].T.copy())
    lr = torch.from_numpy(lowpass(hr.numpy(), 48000, 4000.0, kind="cheby1", order=8))
    gen = run.state.generator

    def objective(model) -> float:
        with torch.no_grad():
            return float(np.mean([float(model.training_loss(hr, lr, torch.Generator()
                                                            .manual_seed(s), 0.0))
                                  for s in range(4)]))

    before, after = objective(init.eval()), objective(gen.eval())
    assert after < 0.95 * before, (before, after)  # measured ~10 % lower
    for name, v in gen.state_dict().items():  # frozen parts are the init's, exactly
        if name.startswith(("vae.", "vocoder.")):
            assert torch.equal(v, init.state_dict()[name]), name
    assert any(not torch.equal(v, init.state_dict()[k])
               for k, v in gen.state_dict().items() if k.startswith("unet."))
    ckpt = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    enhances_at_48k(run_cli, ckpt, tmp_path)


def test_published_numbers_in_the_audiosr_recipe():
    r = R.load(RECIPES / "audiosr.toml")
    assert (r.optim.generator.lr, r.schedule.warmup, r.data.batch_size) == (1e-4, 5000, 16)
    assert r.losses == {"diffusion": 1.0} and r.degrade.lowpass.startswith(
        "butter,cheby1,ellip,bessel:2-10:2k-16k")
    assert r.data.sample_rate == 48000 and r.train.ema > 0 and r.model.init
