"""The ``audiosr`` restorer: registry and parameter counts, sampling maths, determinism,
shared noise across channels, chunked inference through the engine."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from tests.conftest import rel_l2
from upsr import models
from upsr.infer.chunk import ChunkPlan
from upsr.infer.engine import EnhanceOptions, enhance_array, fill_native
from upsr.models.audiosr import pipeline as P
from upsr.models.audiosr import sampling
from upsr.models.audiosr.model import AudioSR, AudioSRConfig

SEG = 0.32  # the smallest segment of the small config: 32 frames = 4 latent frames


@pytest.fixture(autouse=True)
def _one_thread():
    """The small networks run many tiny ops: on the shared, loaded CI cores two threads spend
    more time synchronising than computing (measured 30x slower here), so use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return AudioSR(AudioSRConfig.small(segment_s=SEG)).state_dict()


def _small(**kw) -> AudioSR:
    kw.setdefault("steps", 2)
    model = AudioSR(AudioSRConfig.small(segment_s=SEG, **kw))
    model.load_state_dict(_weights())
    return model.eval()


def _band_limited(n: int, sr: int = 48000, cutoff_hz: float = 4000.0, seed: int = 0,
                  channels: int = 1) -> np.ndarray:
    from upsr.audio.filters import lowpass

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((channels, n)) * 0.1
    return lowpass(x, sr, cutoff_hz, kind="cheby1", order=8).astype(np.float32)


def test_registry_and_published_parameter_counts():
    assert "audiosr" in models.names()
    with torch.device("meta"):
        m = models.build("audiosr")
    count = {name: sum(p.numel() for p in getattr(m, name).parameters())
             for name in ("vae", "vocoder", "unet")}
    assert count == {"vae": 223_535_569, "vocoder": 190_281_889, "unet": 258_195_088}
    assert m.out_rate == 48000 and m.uses_cutoff and m.native_s == pytest.approx(5.12)
    assert set(k.split(".")[0] for k in m.state_dict()) == {"vae", "vocoder", "unet"}


def test_config_validation():
    with pytest.raises(ValueError, match="sampler"):
        AudioSRConfig(sampler="euler")
    with pytest.raises(ValueError, match="segment_s"):
        AudioSRConfig.small(segment_s=0.3)
    from upsr.errors import UsageError
    from upsr.models.base import make_config

    with pytest.raises(UsageError, match="steps"):
        make_config(AudioSRConfig, {"steps": 0}, what="audiosr")


def test_guided_velocity_equals_two_separate_unet_calls():
    m = _small(guidance=3.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4, 32, generator=g)
    cond = torch.randn(2, 16, 4, 32, generator=g)
    t = torch.tensor([981, 21])
    with torch.no_grad():
        v = m.velocity(x, t, cond)
        v_c = m.unet(torch.cat([x, cond], 1), t)
        v_u = m.unet(torch.cat([x, torch.full_like(cond, -11.4981)], 1), t)
    assert rel_l2(v, v_u + 3.5 * (v_c - v_u)) <= 1e-5


def _gaussian_denoiser(ac: torch.Tensor, s2: float):
    """The exact v of data x0 ~ N(0, s2·I): x̂0 = α s2 x / (α² s2 + σ²), v = (α x − x̂0)/σ."""
    def denoise(x, t):
        a2 = ac.double()[t].view(-1, 1)
        a, sig = a2.sqrt(), (1 - a2).sqrt()
        x0 = a * s2 * x / (a2 * s2 + sig ** 2)
        return (a * x - x0) / sig
    return denoise


def test_dpmpp_2m_solves_the_probability_flow_ode_to_second_order():
    """For Gaussian data the ODE maps x_T (pure noise) to sqrt(α0² s² + σ0²)·x_T exactly."""
    ac = P.schedule_buffers(P.cosine_betas())["alphas_cumprod"]
    s2 = 0.25
    x_T = torch.randn(4, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = float(torch.sqrt(ac.double()[0] * s2 + (1 - ac.double()[0]))) * x_T
    err = {}
    for steps in (5, 10, 20):
        x = sampling.dpmpp_2m_sample(_gaussian_denoiser(ac, s2), x_T, ac, steps)
        err[steps] = rel_l2(x, exact)
    assert err[20] < 2e-3
    assert err[10] / err[20] > 3.0 and err[5] / err[10] > 3.0  # ~4x per halving: order 2


def test_deterministic_whatever_the_batch_and_shared_across_channels():
    m = _small()
    x = torch.from_numpy(_band_limited(int(0.3 * 48000), channels=2))
    x[1] = 0.5 * x[0]  # a panned copy: same shape, half the level
    with torch.inference_mode():
        both = m.restore(x, cutoff_hz=torch.tensor([4000.0, 4000.0]))
        alone = m.restore(x[:1], cutoff_hz=torch.tensor([4000.0]))
    assert both.shape == x.shape and torch.isfinite(both).all()
    assert rel_l2(both[:1], alone) <= 1e-5
    # the same noise for both channels: the panned channel's added band is the same, halved
    assert rel_l2(both[1], 0.5 * both[0]) <= 1e-5
    with torch.inference_mode():
        other = _small(seed=7).restore(x[:1], cutoff_hz=torch.tensor([4000.0]))
    assert rel_l2(other, alone) > 1e-3


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_restore_lengths_levels_and_official_postprocessing(sampler):
    m = _small(sampler=sampler, postprocess="official")
    x = torch.from_numpy(_band_limited(5000)) * 3.0 + 0.01  # any level, a DC offset
    with torch.inference_mode():
        y = m.restore(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    silent = torch.zeros(1, 4000)
    with torch.inference_mode():
        assert torch.equal(m.restore(silent), silent)


def test_fill_native_sizes_chunks_to_whole_segments():
    for chunk_s, ctx in ((10.0, 0.314), (3.0, 0.064), (0.5, 0.0)):
        hop = fill_native(chunk_s, 0.25, ctx, 48000, 5.12)
        plan = ChunkPlan.for_rate(48000 * 60, 48000, hop, 0.25, ctx)
        longest = max(c.hi - c.lo for c in plan)
        assert longest <= round(max(1, round(chunk_s / 5.12)) * 5.12 * 48000)
        assert longest > 0.8 * 5.12 * 48000
    assert fill_native(10.0, 0.25, 0.1, 48000, None) == 10.0


def test_chunked_engine_run_is_seed_deterministic():
    m = _small(context_s=0.05)
    x = _band_limited(int(0.75 * 48000), cutoff_hz=5000.0)
    opts = EnhanceOptions(chunk_s=0.3, overlap_s=0.05, batch_size=2)
    y1, sr = enhance_array(x, 48000, m, options=opts)
    y2, _ = enhance_array(x, 48000, m, options=EnhanceOptions(chunk_s=0.3, overlap_s=0.05,
                                                               batch_size=1))
    assert sr == 48000 and y1.shape == x.shape and np.all(np.isfinite(y1))
    assert rel_l2(y1, y2) <= 1e-5


def test_cli_enhance_with_a_checkpoint_keeps_the_low_band(run_cli, tmp_path):
    """A saved small AudioSR restores a 16-kHz stereo file to 48 kHz through ``upsr enhance``;
    the engine's low-band splice keeps the input band."""
    import soundfile as sf

    from upsr import checkpoint
    from upsr.audio import synth
    from upsr.eval.metrics import lsd_lf

    ckpt = checkpoint.save(tmp_path / "tiny_audiosr.safetensors", _small(steps=2))
    x = synth.brickwall(synth.music_like(0.5, 16000, channels=2, seed=0), 16000, 6000)
    sf.write(str(tmp_path / "x.wav"), x.T, 16000, subtype="FLOAT")
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "o", "--model", ckpt,
                           "--sampler", "dpmpp-2m", "--steps", "3", "--seed", "1",
                           "--guidance", "2.0")
    assert code == 0, err
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "bad", "--model",
                           ckpt, "--sampler", "euler")
    assert code != 0 and "sampler" in err and "Traceback" not in err
    y, sr = sf.read(str(tmp_path / "o" / "x.wav"), always_2d=True, dtype="float32")
    assert sr == 48000 and y.shape == (24000, 2) and np.all(np.isfinite(y))
    from upsr.audio.resample import resample

    ref = resample(x.astype(np.float32), 16000, 48000)
    assert lsd_lf(ref[0], y[:, 0], 48000, 5000) < 0.05


def test_training_loss_falls_on_the_unet_only():
    """A few Adam steps on the latent-diffusion loss of one fixed batch make it fall; the VAE
    and vocoder stay frozen (no gradient)."""
    m = _small()
    m.train()
    for p in list(m.vae.parameters()) + list(m.vocoder.parameters()):
        p.requires_grad_(False)
    hr = torch.from_numpy(_band_limited(int(0.32 * 48000), cutoff_hz=20000.0, channels=2))
    lr = torch.from_numpy(_band_limited(int(0.32 * 48000), cutoff_hz=4000.0, channels=2))
    opt = torch.optim.Adam(m.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = m.training_loss(hr, lr, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in m.vae.parameters())


def test_positional_noise_is_keyed_by_absolute_latent_frame():
    m = _small()
    assert m.align == 3840
    draw = m.noise_source(2, (16, 4, 32), [0, 2 * 3840])
    for d in (0, 1, 5):
        z = draw(d)
        assert z.shape == (2, 16, 4, 32)
        assert torch.equal(z[1, :, :2], z[0, :, 2:])  # the same absolute frames
    assert not torch.equal(draw(1), draw(2))
    official = _small(noise="official").noise_source(1, (16, 4, 32), None)
    g = torch.Generator().manual_seed(42)
    torch.randn((16, 4, 32), generator=g)  # the target posterior's draw (shape only)
    assert torch.equal(official(0)[0], torch.randn((16, 4, 32), generator=g))


def test_upsr_models_import_gives_the_restorer_with_the_fixture_networks(run_cli, tmp_path):
    """``upsr models import audiosr`` on an official-format container (the fixtures' random
    small networks) gives an ``audiosr`` checkpoint whose networks reproduce the fixtures."""
    from safetensors.torch import load_file

    from tests.conftest import fixture_path
    from tests.models.test_audiosr_nets import _official_sd

    src = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": _official_sd()}, src)
    code, _, err = run_cli("models", "import", "audiosr", src, tmp_path / "a.safetensors")
    assert code == 0, err
    m = models.load_model(str(tmp_path / "a.safetensors"))
    assert isinstance(m, AudioSR)
    ut = load_file(str(fixture_path("audiosr_unet.safetensors")))
    assert m.config.scale_factor == pytest.approx(float(ut["wrapper.scale_factor"]))
    with torch.no_grad():
        assert rel_l2(m.unet(ut["input"], ut["timesteps"]), ut["output"]) <= 1e-5
