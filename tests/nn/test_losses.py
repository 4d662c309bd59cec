"""Losses against float64 numpy computations and closed forms; gradients reach the generator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from upsr.nn.discriminators import MelGANMultiScaleDiscriminator
from upsr.nn.losses import (
    MelL1Loss,
    MultiResolutionSTFTLoss,
    STFTLoss,
    a_weighting_fir,
    aeromamba_stft_loss,
    feature_matching_l1,
    feature_matching_relative,
    freq_mae,
    hinge_d_loss,
    hinge_g_loss,
    lsgan_d_loss,
    lsgan_g_loss,
    wave_u_mamba_mel_loss,
    wave_u_mamba_stft_loss,
)
from upsr.nn.mel import mel_filterbank

# --------------------------------------------------------------------------------------------
# numpy float64 references


def _np_stft_mag(x, n_fft, hop, win, center=True):
    """|STFT| of each row of x [N, T]: reflect padding, periodic Hann zero-padded to n_fft."""
    if center:
        x = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = hann
    starts = range(0, x.shape[1] - n_fft + 1, hop)
    frames = np.stack([x[:, s:s + n_fft] * window for s in starts], axis=-1)  # [N, n_fft, F]
    return np.abs(np.fft.rfft(frames, axis=1))


def _np_stft_terms(est, ref, n_fft, hop, win, floor, fb=None, fir=None):
    est, ref = est.reshape(-1, est.shape[-1]), ref.reshape(-1, ref.shape[-1])
    if fir is not None:  # 'same'-length FIR filtering with zeros outside the signal
        est = np.stack([np.convolve(row, fir, mode="same") for row in est])
        ref = np.stack([np.convolve(row, fir, mode="same") for row in ref])
    s_e = np.sqrt(np.maximum(_np_stft_mag(est, n_fft, hop, win) ** 2, floor))
    s_r = np.sqrt(np.maximum(_np_stft_mag(ref, n_fft, hop, win) ** 2, floor))
    if fb is not None:
        s_e, s_r = fb @ s_e, fb @ s_r
    sc = np.sqrt(((s_r - s_e) ** 2).sum()) / np.sqrt((s_r**2).sum())
    mag = np.abs(np.log(s_r) - np.log(s_e)).mean()
    return sc, mag


def _signals(shape, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape)
    est = ref + 0.3 * rng.standard_normal(shape)
    return est, ref


# --------------------------------------------------------------------------------------------
# STFT losses


def test_aeromamba_mrstft_matches_numpy():
    est, ref = _signals((2, 1, 3000))
    loss = aeromamba_stft_loss()
    got = float(loss(torch.from_numpy(est), torch.from_numpy(ref)))
    terms = [_np_stft_terms(est, ref, n, h, w, 1e-7)
             for n, h, w in [(1024, 120, 600), (2048, 240, 1200), (512, 50, 240)]]
    expected = np.mean([0.5 * sc + 0.5 * mag for sc, mag in terms])
    assert got == pytest.approx(expected, rel=1e-10)
    sc, mag = loss.terms(torch.from_numpy(est), torch.from_numpy(ref))
    assert float(sc) == pytest.approx(np.mean([t[0] for t in terms]), rel=1e-10)
    assert float(mag) == pytest.approx(np.mean([t[1] for t in terms]), rel=1e-10)


def test_mel_perceptual_stft_matches_numpy():
    # Wave-U-Mamba's variant at one small resolution: A-weighting, 32 Slaney mel bins.
    est, ref = _signals((2, 1, 4000), seed=1)
    loss = STFTLoss(512, 128, 512, power_floor=1e-8, scale="mel", n_mels=32,
                    sample_rate=48000, perceptual_weighting=True)
    got = float(loss(torch.from_numpy(est), torch.from_numpy(ref)))
    fb = mel_filterbank(48000, 512, 32, dtype=np.float64)
    sc, mag = _np_stft_terms(est, ref, 512, 128, 512, 1e-8, fb=fb, fir=a_weighting_fir(48000))
    assert got == pytest.approx(sc + mag, rel=1e-10)


def test_sc_denominator_estimate():
    est, ref = _signals((1, 2000), seed=2)
    e, r = torch.from_numpy(est), torch.from_numpy(ref)
    plain = STFTLoss(256, 64, 256, mag_weight=0.0)
    swapped = STFTLoss(256, 64, 256, mag_weight=0.0, sc_denominator="estimate")
    s_e, s_r = plain.magnitude(e), plain.magnitude(r)
    ratio = float(torch.linalg.vector_norm(s_r) / torch.linalg.vector_norm(s_e))
    assert float(swapped(e, r)) == pytest.approx(float(plain(e, r)) * ratio, rel=1e-12)


def test_wave_u_mamba_preset_is_zero_on_identity_and_has_generator_gradients():
    torch.manual_seed(0)
    ref = torch.randn(1, 1, 9000)
    loss = wave_u_mamba_stft_loss()
    assert float(loss(ref, ref)) == 0.0
    est = (ref + 0.1 * torch.randn_like(ref)).requires_grad_(True)
    loss(est, ref).backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


def test_a_weighting_fir_follows_iec_curve():
    taps = a_weighting_fir(48000)
    assert taps.shape == (101,)
    np.testing.assert_allclose(taps, taps[::-1])  # linear phase
    freqs = np.array([100.0, 1000.0, 2000.0, 4000.0])
    _, h = scipy.signal.freqz(taps, worN=freqs, fs=48000)
    db = 20 * np.log10(np.abs(h))
    # IEC 61672 A-weighting: 0 dB at 1 kHz, +1.2 dB at 2 kHz, +1.0 dB at 4 kHz, -19 dB at
    # 100 Hz (a 101-tap FIR at 48 kHz cannot resolve that notch fully).
    assert db[1] == pytest.approx(0.0, abs=0.2)
    assert db[2] == pytest.approx(1.2, abs=0.5)
    assert db[3] == pytest.approx(1.0, abs=0.5)
    assert db[0] < -12.0


def test_stft_loss_rejects_bad_configuration_and_shapes():
    with pytest.raises(ValueError):
        STFTLoss(512, 128, 512, scale="bark", sample_rate=16000)
    with pytest.raises(ValueError):
        STFTLoss(512, 128, 512, scale="mel")  # no sample rate
    with pytest.raises(ValueError):
        MultiResolutionSTFTLoss([512], [128, 64], [512])
    with pytest.raises(ValueError):
        STFTLoss(256, 64, 256)(torch.zeros(1, 1000), torch.zeros(1, 999))


# --------------------------------------------------------------------------------------------
# mel L1 and Apollo's frequency MAE


def test_mel_l1_matches_numpy_and_has_gradients():
    est, ref = _signals((2, 4096), seed=3)
    loss = MelL1Loss(16000, 512, 128, n_mels=40, center=False, power=2.0)
    fb = mel_filterbank(16000, 512, 40, dtype=np.float64)
    m_e = fb @ (_np_stft_mag(est, 512, 128, 512, center=False) ** 2)
    m_r = fb @ (_np_stft_mag(ref, 512, 128, 512, center=False) ** 2)
    e = torch.from_numpy(est).requires_grad_(True)
    value = loss(e, torch.from_numpy(ref))
    assert float(value.detach()) == pytest.approx(np.abs(m_r - m_e).mean(), rel=1e-10)
    value.backward()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_log_mel_l1_and_wave_u_mamba_preset():
    est, ref = _signals((1, 4096), seed=4)
    loss = MelL1Loss(16000, 512, 128, n_mels=40, center=True, power=1.0, log_floor=1e-5)
    fb = mel_filterbank(16000, 512, 40, dtype=np.float64)
    m_e = np.log(np.maximum(fb @ _np_stft_mag(est, 512, 128, 512), 1e-5))
    m_r = np.log(np.maximum(fb @ _np_stft_mag(ref, 512, 128, 512), 1e-5))
    got = float(loss(torch.from_numpy(est), torch.from_numpy(ref)))
    assert got == pytest.approx(np.abs(m_r - m_e).mean(), rel=1e-10)
    wum = wave_u_mamba_mel_loss()
    assert tuple(wum.mel.fb.shape) == (80, 1025)
    assert wum.mel(torch.zeros(1, 25600)).shape == (1, 80, 1 + (25600 - 2048) // 512)


def test_freq_mae_matches_numpy():
    est, ref = _signals((1, 2, 3000), seed=5)
    got = float(freq_mae(torch.from_numpy(est), torch.from_numpy(ref)))
    eps = float(np.finfo(np.float32).eps)
    vals = []
    for w in (32, 64, 128, 256, 512, 1024, 2048):
        s_e = _np_stft_mag(est.reshape(2, -1), w, w // 2, w)
        s_r = _np_stft_mag(ref.reshape(2, -1), w, w // 2, w)
        vals.append(np.abs(s_e - s_r).mean() / (s_r.mean() + eps))
    assert got == pytest.approx(np.mean(vals), rel=1e-10)


# --------------------------------------------------------------------------------------------
# feature matching and adversarial losses


def _feats(values):
    return [[torch.tensor(v, dtype=torch.float64) for v in disc] for disc in values]


def test_feature_matching_closed_forms():
    fake = _feats([[[1.0, 2.0], [0.0]], [[3.0, 3.0, 3.0]]])
    real = _feats([[[1.5, 1.0], [2.0]], [[1.0, 1.0, 1.0]]])
    # per layer: mean|f-r| = 0.75, 2.0, 2.0; mean|r| = 1.25, 2.0, 1.0
    assert float(feature_matching_l1(fake, real)) == pytest.approx(0.75 + 2.0 + 2.0)
    rel = (0.75 / 1.25 + 2.0 / 2.0 + 2.0 / 1.0) / 3
    assert float(feature_matching_relative(fake, real, eps=0.0)) == pytest.approx(rel)


def test_feature_matching_detaches_real_features():
    fake = [[torch.ones(3, requires_grad=True)]]
    real = [[torch.zeros(3, requires_grad=True)]]
    (feature_matching_l1(fake, real) + feature_matching_relative(fake, real)).backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None


def test_adversarial_losses_closed_forms():
    real = [torch.tensor([0.3, 1.5]), torch.tensor([2.0])]
    fake = [torch.tensor([-0.5, -2.0]), torch.tensor([0.5])]
    # hinge D: mean relu(1-r) + mean relu(1+f)
    d0 = (0.7 + 0.0) / 2 + (0.5 + 0.0) / 2
    d1 = 0.0 + 1.5
    assert float(hinge_d_loss(real, fake)) == pytest.approx(d0 + d1)
    assert float(hinge_d_loss(real, fake, reduction="mean")) == pytest.approx((d0 + d1) / 2)
    assert float(hinge_g_loss(fake)) == pytest.approx((1.5 + 3.0) / 2 + 0.5)
    # LSGAN D: mean (1-r)^2 + mean f^2
    l0 = (0.49 + 0.25) / 2 + (0.25 + 4.0) / 2
    l1 = 1.0 + 0.25
    assert float(lsgan_d_loss(real, fake)) == pytest.approx(l0 + l1)
    assert float(lsgan_d_loss(real, fake, reduction="mean")) == pytest.approx((l0 + l1) / 2)
    assert float(lsgan_g_loss(fake)) == pytest.approx((2.25 + 9.0) / 2 + 0.25)
    with pytest.raises(ValueError):
        lsgan_g_loss(fake, reduction="max")


def test_gan_losses_give_generator_gradients_through_a_discriminator():
    torch.manual_seed(1)
    disc = MelGANMultiScaleDiscriminator(ndf=4, n_layers=2)
    real = torch.randn(2, 1, 1024)
    generated = (0.5 * torch.randn(2, 1, 1024)).requires_grad_(True)
    fake_logits, fake_feats = disc(generated)
    _, real_feats = disc(real)
    g_loss = hinge_g_loss(fake_logits) + lsgan_g_loss(fake_logits) + feature_matching_l1(
        fake_feats, real_feats) + feature_matching_relative(fake_feats, real_feats)
    g_loss.backward()
    assert torch.isfinite(generated.grad).all() and generated.grad.abs().sum() > 0


def test_half_precision_inputs_are_computed_in_float32():
    # A bf16-autocast generator hands bf16 audio to the losses; the STFT needs float32.
    torch.manual_seed(2)
    ref = torch.randn(1, 4096)
    est = ref + 0.2 * torch.randn(1, 4096)
    e16, r16 = est.bfloat16(), ref.bfloat16()
    stft = STFTLoss(512, 128, 512)
    mel = MelL1Loss(16000, 512, 128, n_mels=20)
    for fn in (stft, mel, freq_mae):
        got = fn(e16, r16)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(float(fn(e16.float(), r16.float())), rel=1e-6)
