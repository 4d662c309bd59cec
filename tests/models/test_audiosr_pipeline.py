"""AudioSR's pure functions against the official ones (fixture README §10,
``audiosr_pipeline_math.safetensors``): features, batch preparation, cut-off rules, the
pre-filter, post-processing, mel replacement, schedule and DDIM."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import fixture_path, rel_l2
from upsr.models.audiosr import pipeline as P

TOL = 1e-5
TOL64 = 1e-9


@functools.lru_cache(maxsize=1)
def _fx():
    path = fixture_path("audiosr_pipeline_math.safetensors")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    return load_file(str(path)), json.loads(meta["run_params"])


def test_filterbank_and_log_mel():
    t, _ = _fx()
    assert rel_l2(P.mel_basis(), t["mel.filterbank"]) <= TOL
    log_mel, mag = P.mel_spectrogram(t["mel.audio"])
    n = t["mel.audio"].shape[-1]
    assert log_mel.shape[-1] == 1 + (n + 1568 - 2048) // 480
    assert rel_l2(mag[0], t["mel.stft_mag"]) <= TOL
    assert rel_l2(log_mel[0], t["mel.log_mel"]) <= TOL


def test_make_batch_matches_official():
    t, rp = _fx()
    rng = np.random.RandomState(rp["batch"]["numpy_seed"])
    b = P.make_batch(t["batch.input"].numpy(), rng=rng)
    assert b.filter_type == rp["batch"]["filter_type_drawn"]
    assert b.cutoff_bin == int(t["batch.cutoff_bin"])
    assert b.cutoff_hz == pytest.approx(rp["batch"]["cutoff_hz"])
    assert b.duration_s == pytest.approx(float(t["batch.duration"]), abs=1e-12)
    for name in ("waveform", "log_mel_spec", "stft", "waveform_lowpass", "lowpass_mel"):
        ref = t[f"batch.{name}"]
        got = getattr(b, name)
        assert got.shape == ref.shape, name
        assert rel_l2(got, ref) <= TOL, name


@pytest.mark.parametrize("n", [72000, 76000, 245760, 245761, 480])
def test_padded_length_is_multiple_of_segment(n):
    samples, frames = P.padded_length(n)
    assert samples % P.SEGMENT_SAMPLES == 0 and samples >= n
    assert frames == samples // P.HOP


def test_cutoff_rules():
    t, rp = _fx()
    sig = t["cutoff.signals"]
    frames = rp["cutoff"]["target_frame"]
    _, stft = P.features(sig, frames)
    bins = [P.cutoff_bin(stft[i]) for i in range(sig.shape[0])]
    assert bins == t["cutoff.bins"].tolist()
    hz = [P.cutoff_hz_from_stft(stft[i]) for i in range(sig.shape[0])]
    assert hz == pytest.approx(rp["cutoff"]["hz_from_bins"])
    hop512 = [P.cutoff_index_hop512(sig[i].numpy()) for i in range(sig.shape[0])]
    assert hop512 == t["cutoff.bins_librosa_hop512"].tolist()
    log_mel, _ = P.features(sig, frames)
    mel_bins = [P.mel_cutoff_bin(log_mel[i]) for i in range(sig.shape[0])]
    assert mel_bins == t["cutoff.melbins"].tolist()


@pytest.mark.parametrize("kind", P.FILTER_TYPES)
def test_lowpass_filters(kind):
    t, rp = _fx()
    y = P.lowpass(t["lowpass.input"].numpy(), rp["lowpass"]["highcut"], kind, order=8)
    assert y.dtype == np.float64
    assert rel_l2(y, t[f"lowpass.{kind}"].numpy()) <= TOL64


def test_postprocessing():
    t, _ = _fx()
    low = t["post.lowpass"].numpy()
    assert P.cutoff_index_hop512(low[0, 0]) == int(t["post.cutoff_bin"][0])
    out = P.postprocess(t["post.generated"].numpy(), low)
    assert out.dtype == np.float32 and out.shape == t["post.output"].shape
    assert rel_l2(out, t["post.output"]) <= TOL


def test_postprocessing_keeps_the_input_below_cutoff():
    """Closed-form check: an output equal to the input comes back unchanged (ratio 1)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 20480)).astype(np.float32)
    out = P.postprocess(x.copy(), x)
    assert rel_l2(out, x) < 1e-6


def test_mel_replacement():
    t, _ = _fx()
    low = t["melrep.lowpass_mel"]
    assert [P.mel_cutoff_bin(low[i]) for i in range(low.shape[0])] == \
        t["melrep.cutoff_melbin"].tolist()
    samples = t["melrep.samples"].clone()
    out = P.mel_replace(samples, low)
    assert torch.equal(samples, t["melrep.samples"])  # not in place
    assert rel_l2(out, t["melrep.output"]) <= TOL


def test_schedule_buffers():
    t, rp = _fx()
    s = rp["schedule"]
    betas = P.cosine_betas(s["timesteps"], s["cosine_s"])
    assert rel_l2(betas, t["schedule.betas_float64"].numpy()) <= TOL64
    assert betas[-1] == 1.0
    buf = P.schedule_buffers(betas, s["v_posterior"])
    for name, value in buf.items():
        ref = t[f"schedule.{name}"]
        assert value.dtype == torch.float32
        assert rel_l2(value, ref) <= TOL, name
    assert float(buf["alphas_cumprod"][-1]) == 0.0


def test_shared_diffusion_schedule_agrees():
    """The project's shared diffusion module gives the same cosine ᾱ as the official buffers."""
    from upsr.nn import diffusion

    t, _ = _fx()
    sched = diffusion.Schedule.cosine(1000, s=0.008)
    ac = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)
    assert rel_l2(ac, t["schedule.alphas_cumprod"]) <= TOL
    assert rel_l2(torch.as_tensor(sched.betas, dtype=torch.float64),
                  t["schedule.betas_float64"]) <= TOL


def test_ddim_tables():
    t, rp = _fx()
    for steps in rp["ddim"]["schedules"]:
        ts = P.ddim_timesteps(steps)
        assert ts.tolist() == t[f"ddim.timesteps_{steps}"].tolist()
    assert len(P.ddim_timesteps(12)) == 13 and P.ddim_timesteps(12)[-1] == 997
    ac = P.schedule_buffers(P.cosine_betas())["alphas_cumprod"]
    tab = P.ddim_tables(ac, 50, 1.0)
    assert rel_l2(tab.alphas, t["ddim.alphas_50"]) <= TOL
    assert rel_l2(tab.alphas_prev, t["ddim.alphas_prev_50"].numpy()) <= TOL64
    assert rel_l2(tab.sigmas, t["ddim.sigmas_50_eta1"].numpy()) <= TOL64


@pytest.mark.parametrize("j", [0, 1])
def test_ddim_single_step(j):
    t, rp = _fx()
    step = rp["ddim"]["steps"][j]
    sched = P.schedule_buffers(P.cosine_betas())
    tab = P.ddim_tables(sched["alphas_cumprod"], step["S"], step["eta"])
    t_ = int(tab.timesteps[step["index"]])
    assert t_ == int(t[f"ddim.step{j}.t"][0])
    v = P.guided(t[f"ddim.step{j}.v_cond"], t[f"ddim.step{j}.v_uncond"],
                 step["guidance_scale"])
    x_prev, pred_x0, e_t = P.ddim_step(t[f"ddim.step{j}.x"], v, t_, step["index"], tab, sched,
                                       t[f"ddim.step{j}.noise"])
    assert rel_l2(e_t, t[f"ddim.step{j}.e_t"]) <= TOL
    assert rel_l2(pred_x0, t[f"ddim.step{j}.pred_x0"]) <= TOL
    assert rel_l2(x_prev, t[f"ddim.step{j}.x_prev"]) <= TOL


def test_ddim_loop_with_stand_in_denoiser():
    t, rp = _fx()
    loop = rp["ddim"]["loop"]
    a, b = loop["fake_model"]["a"], loop["fake_model"]["b"]
    cond, uncond = t["ddim_loop.cond"], t["ddim_loop.uncond"]
    assert torch.all(uncond == P.UNCOND_VALUE)
    sched = P.schedule_buffers(P.cosine_betas())

    def denoise(x, tt):
        tf = tt.to(x.dtype).view(-1, 1, 1, 1) / 1000
        return P.guided(a * x + b * tf * cond, a * x + b * tf * uncond, loop["guidance_scale"])

    noise = t["ddim_loop.noise"]
    x0, last = P.ddim_sample(denoise, t["ddim_loop.x_T"], sched, loop["S"], loop["eta"],
                             noise=lambda i: noise[i])
    assert rel_l2(last, t["ddim_loop.pred_x0_last"]) <= TOL
    assert rel_l2(x0, t["ddim_loop.samples"]) <= TOL

    # the draw order of the official sampler: x_T first, then one randn per step
    g = torch.manual_seed(loop["seed"])
    assert torch.equal(torch.randn(t["ddim_loop.x_T"].shape, generator=g), t["ddim_loop.x_T"])
    assert torch.equal(torch.randn(noise[0].shape, generator=g), noise[0])


def test_timestep_embedding():
    from upsr.models.audiosr.unet import timestep_embedding

    t, _ = _fx()
    for dim in (32, 128):
        assert rel_l2(timestep_embedding(t["temb.t"], dim), t[f"temb.out_{dim}"]) <= TOL


def test_mel_basis_cached_under_inference_mode_still_trains():
    """The cached filterbank is built once; when enhance builds it (inference mode), training
    must still be able to take gradients through the mel front end."""
    from upsr.models.audiosr import pipeline as P

    P._MEL_CACHE.clear()
    with torch.inference_mode():
        P.mel_spectrogram(torch.zeros(1, 4800))
    y = torch.randn(1, 4800, requires_grad=True)
    mel, _ = P.mel_spectrogram(y)
    mel.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
