import numpy as np
import pytest
import torch

from upsr.audio import synth
from upsr.eval.metrics import lsd_hf, lsd_lf
from upsr.infer.engine import EnhanceOptions, enhance_array
from upsr.models import build, load_model

SR = 44100


def _signals():
    noise = synth.tilted_noise(4.0, SR, channels=1, slope_db_per_octave=-4.0, seed=3)[0]
    tone = synth.harmonic_tone(4.0, SR, f0_hz=233.0, rolloff_db_per_harmonic=0.15)
    return {"tilted-noise": noise, "harmonic": tone}


@pytest.mark.parametrize("cutoff", [6000.0, 11000.0])
@pytest.mark.parametrize("name", ["tilted-noise", "harmonic"])
def test_sbr_lowers_lsd_hf_by_40_percent(name, cutoff):
    ref = _signals()[name]
    lr = synth.brickwall(ref, SR, cutoff)
    y, sr = enhance_array(lr, SR, load_model("sbr"), cutoff_hz=cutoff)
    assert sr == SR and y.shape == ref.shape
    before = lsd_hf(ref, lr, SR, cutoff)
    after = lsd_hf(ref, y, SR, cutoff)
    assert after <= 0.6 * before, (before, after)
    # the known band is untouched
    assert lsd_lf(ref, y, SR, cutoff - 300) < 0.05


def test_sbr_keeps_low_band_and_full_band_input_exactly():
    m = build("sbr")
    x = torch.from_numpy(synth.tilted_noise(1.0, SR, seed=1))
    full = m.restore(x, cutoff_hz=torch.tensor([SR / 2]), sample_rate=SR)
    assert torch.equal(full, x)  # nothing to rebuild: the input itself
    lr = torch.from_numpy(synth.brickwall(x.numpy(), SR, 5000))
    y = m.restore(lr, cutoff_hz=torch.tensor([5000.0]), sample_rate=SR)
    Y, L = np.fft.rfft(y[0].double().numpy()), np.fft.rfft(lr[0].double().numpy())
    f = np.fft.rfftfreq(lr.shape[-1], 1 / SR)
    band = f < 4500
    err = np.linalg.norm(Y[band] - L[band]) / np.linalg.norm(L[band])
    assert err < 2e-3  # only window-edge effects of the new band leak below (-54 dB; the
    # engine's splice then restores the input there exactly)
    assert np.sum(np.abs(Y[f > 6000]) ** 2) > 1e-3 * np.sum(np.abs(L) ** 2)


def test_sbr_is_chunk_invariant():
    x = synth.brickwall(synth.music_like(3.0, SR, channels=2, seed=5), SR, 7000)
    m = load_model("sbr")
    whole, _ = enhance_array(x, SR, m, cutoff_hz=7000.0, options=EnhanceOptions(chunk_s=100))
    chunked, _ = enhance_array(x, SR, m, cutoff_hz=7000.0,
                               options=EnhanceOptions(chunk_s=0.7, overlap_s=0.1))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_sbr_detects_the_band_edge_itself():
    """Without a cutoff, sbr finds the band edge (-70 dB) of each item: the result equals the
    one with that edge given, the band below it is the input's, and the band above is
    filled."""
    from upsr.models.sbr import band_edge_bin

    x = synth.brickwall(synth.music_like(3.0, SR, channels=1, seed=5), SR, 7000)[0]
    m = load_model("sbr")
    xt = torch.from_numpy(x)[None].double()
    X = torch.stft(xt, 2048, 512, window=torch.hann_window(2048, dtype=torch.float64),
                   return_complex=True)[..., 2:-2]  # frames clear of the reflect padding
    k = int(band_edge_bin(X.abs().square(), -70.0)[0])
    assert abs(k * SR / 2048 - 7000) < 60  # the brick wall, to a bin
    auto = m.restore(xt, sample_rate=SR)
    given = m.restore(xt, cutoff_hz=torch.tensor([k * SR / 2048]), sample_rate=SR)
    torch.testing.assert_close(auto, given, rtol=0, atol=0)
    Y, L = np.fft.rfft(auto[0].numpy()), np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(x.size, 1 / SR)
    below = (f > 100) & (f < 6800)
    assert np.linalg.norm(Y[below] - L[below]) / np.linalg.norm(L[below]) < 1e-3
    assert np.sum(np.abs(Y[f > 7500]) ** 2) > 1e-4 * np.sum(np.abs(L) ** 2)


def test_default_keeps_everything_below_the_band_edge():
    """``enhance_array`` defaults to the known band: content between the 0.985 roll-off and
    the edge comes out as it went in (LSD there ~0), not replaced by copies."""
    from upsr.audio import analysis

    x = synth.brickwall(synth.tilted_noise(3.0, SR, channels=1, slope_db_per_octave=-6.0,
                                           seed=7), SR, 11000)
    roll = analysis.rolloff_hz(x, SR)
    assert roll < 10000  # AudioSR's rule would keep only this much
    y, _ = enhance_array(x, SR, load_model("sbr"))
    assert lsd_lf(x, y, SR, 10900) < 0.01
    assert lsd_hf(x, y, SR, roll) < lsd_hf(x, y, SR, 10900)  # and only above is new


def test_near_full_band_input_is_left_alone():
    """An edge within 1 kHz of Nyquist (or above 19 kHz) is full band: nothing is added."""
    x = synth.brickwall(synth.tilted_noise(2.0, SR, channels=1, seed=2), SR, 21500)
    y, sr = enhance_array(x, SR, load_model("sbr"))
    assert sr == SR
    assert np.array_equal(y, x)  # bit for bit: no STFT round trip either


def test_sbr_config_validation():
    from upsr.errors import UsageError

    with pytest.raises(UsageError, match="n_fft"):
        build("sbr", n_fft=30)
    with pytest.raises(UsageError, match="unknown config key 'nfft'"):
        build("sbr", nfft=1024)
