"""AudioSR's VAE and vocoder fine-tuning stages through ``upsr train``: on fixed data the
stage's own objective falls, only the stage's part changes (the rest bit-identical), the
checkpoint restores a file through ``upsr enhance --model FILE`` and starts the diffusion
recipe (``model.init``); the full recipes carry the published numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upsr.errors import UsageError
from upsr.train import loop
from upsr.train import recipe as R

from .helpers import RECIPES, enhances_at_48k, read_log

PARTS = {"vae": "vae.", "vocoder": "vocoder."}


def _objective(model, stage: str, hr: torch.Tensor) -> float:
    """The stage's reconstruction term on a fixed batch (fixed posterior noise for the VAE)."""
    from upsr.models.audiosr import pipeline as P
    from upsr.train.audiosr_stages import StageForward

    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        fake, real, _ = StageForward(model)(hr)
        if stage == "vae":
            return float((fake - real).abs().mean())
        return float((P.mel_spectrogram(fake[:, 0])[0] - P.mel_spectrogram(real[:, 0])[0])
                     .abs().mean())


@pytest.mark.parametrize("stage", ["vae", "vocoder"])
def test_tiny_audiosr_stage(stage, tmp_path, run_cli):
    torch.set_num_threads(1)  # tiny ops: one thread is faster on the shared CI cores
    from upsr import checkpoint
    from upsr.audio import synth
    from upsr.models.audiosr.model import AudioSR, AudioSRConfig

    path = RECIPES / "tiny" / f"audiosr_{stage}.toml"
    torch.manual_seed(5)
    init = AudioSR(AudioSRConfig(**R.load(path).model.config))  # stands for an imported model
    checkpoint.save(tmp_path / "init.safetensors", init)
    r = R.load(path, [f'model.init="{tmp_path / "init.safetensors"}"', "train.steps=8",
                      "discriminator.start=4", "data.valid_files=0"])
    run = loop.train(r, tmp_path / "run", device="cpu")
    rows = read_log(tmp_path / "run")
    assert len(rows) == 8 and all(np.isfinite(float(row["loss_g"])) for row in rows)
    assert rows[3]["loss_d"] == "" and rows[4]["loss_d"] != ""  # discriminator from step 5
    assert float(rows[-1]["adversarial"]) != 0

    gen = run.state.generator
    hr = torch.from_numpy(synth.music_like(0.32, 48000, channels=2, seed=9).astype(np.float32))
    before, after = _objective(init, stage, hr), _objective(gen, stage, hr)
    assert after < 0.9 * before, (before, after)  # measured: vae −17 %, vocoder −64 %
    ref, now = init.state_dict(), gen.state_dict()
    for name, v in now.items():
        if name.startswith(PARTS[stage]):
            continue
        assert torch.equal(v, ref[name]), name  # frozen parts are the init's, exactly
    changed = [k for k, v in now.items()
               if k.startswith(PARTS[stage]) and not torch.equal(v, ref[k])]
    assert changed

    ckpt = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    enhances_at_48k(run_cli, ckpt, tmp_path)

    # the diffusion stage starts from it: the whole model, the fine-tuned part included
    diff = AudioSR(AudioSRConfig(**R.load(RECIPES / "tiny" / "audiosr.toml").model.config))
    loop._init_weights(diff, str(ckpt))
    trained = gen.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in diff.state_dict().items())


def test_stage_recipes_reject_foreign_losses_and_discriminators(tmp_path):
    base = RECIPES / "tiny" / "audiosr_vae.toml"
    with pytest.raises(UsageError, match="losses.mel_log: not a loss of AudioSR's vae"):
        R.load(base, ["losses.mel_log=1.0"])
    with pytest.raises(UsageError, match="discriminator.kind"):
        R.load(base, ['discriminator.kind="hifigan"'])
    with pytest.raises(UsageError, match="stages"):
        R.load(RECIPES / "tiny" / "wave_u_mamba.toml", ["losses.kl=1.0"])
    with pytest.raises(UsageError, match="stage"):
        R.load(base, ['model.config.stage="decoder"'])


def test_published_numbers_in_the_stage_recipes():
    vae = R.load(RECIPES / "audiosr_vae.toml")
    assert vae.model.config["stage"] == "vae" and vae.model.init
    assert vae.optim.generator.lr == 8e-6  # reference §3.2
    assert vae.losses == {"reconstruction": 1.0, "kl": 1e-6, "adversarial": 0.5}
    assert (vae.discriminator.kind, vae.discriminator.adversarial,
            vae.discriminator.start) == ("patch", "hinge", 50001)
    assert vae.discriminator.options == {"in_channels": 1, "ndf": 64, "n_layers": 3}
    voc = R.load(RECIPES / "audiosr_vocoder.toml")
    assert voc.model.config["stage"] == "vocoder" and voc.model.init
    assert voc.losses == {"mel_log": 45.0, "feature_matching": 2.0, "adversarial": 1.0}
    for opt in (voc.optim.generator, voc.optim.discriminator):
        assert (opt.name, opt.lr, opt.betas) == ("adamw", 2e-4, (0.8, 0.99))
    assert (voc.schedule.kind, voc.schedule.unit, voc.schedule.gamma) == \
        ("exponential", "epoch", 0.999)
    assert (voc.discriminator.kind, voc.discriminator.adversarial) == ("hifigan", "lsgan")
    assert voc.data.batch_size == 16 and round(voc.data.segment_s * 48000) == 32 * 480


def test_patch_discriminator_size_and_shapes():
    from upsr.nn.discriminators import PatchDiscriminator

    d = PatchDiscriminator()  # LDM's NLayerDiscriminator(input_nc=1, ndf=64, n_layers=3)
    widths = [1, 64, 128, 256, 512]
    convs = sum(a * b * 16 for a, b in zip(widths[:-1], widths[1:])) + 64  # 4×4; bias 1st
    expected = convs + 2 * (128 + 256 + 512) + 512 * 16 + 1  # BatchNorm affine; logit conv
    assert sum(p.numel() for p in d.parameters()) == expected == 2_763_585
    logits, feats = d(torch.zeros(2, 1, 64, 256))
    # stride 2, 2, 2 (k4 p1: /2), then k4 s1 p1 twice (−1 each)
    assert logits[0].shape == (2, 1, 6, 30) and [f.shape[1] for f in feats[0]] == widths[1:]
    with pytest.raises(ValueError, match="image batch"):
        d(torch.zeros(2, 1, 480))
