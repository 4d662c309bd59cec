import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal.windows import blackmanharris

from upsr.audio.spectral import hann, istft, lf_replace, splice_fir, stft
from upsr.errors import UsageError


def test_stft_matches_torch_stft_float64():
    import torch
    x = np.random.default_rng(0).standard_normal((2, 5003))
    for n_fft, hop in ((2048, 512), (1024, 256), (512, 160)):
        ours = stft(x, n_fft, hop)
        ref = torch.stft(torch.from_numpy(x), n_fft, hop,
                         window=torch.hann_window(n_fft, dtype=torch.float64),
                         center=True, return_complex=True).numpy()
        assert ours.shape == ref.shape
        assert np.max(np.abs(ours - ref)) < 1e-10


@pytest.mark.parametrize("length", [1, 7, 511, 2048, 10001])
def test_istft_inverts_stft_exactly(length):
    x = np.random.default_rng(length).standard_normal((2, length))
    y = istft(stft(x, 1024, 256), length, 1024, 256)
    assert y.shape == x.shape
    assert np.max(np.abs(y - x)) < 1e-12


def test_hann_is_periodic():
    w = hann(8)
    assert w[0] == 0.0 and w[4] == pytest.approx(1.0)
    assert np.allclose(w[1:], w[1:][::-1])  # symmetric about n/2: the periodic form


def _band_energy(x, sr, lo, hi):
    """Energy in [lo, hi) Hz of a Blackman-Harris-tapered whole-signal FFT (-92 dB sidelobes,
    so leakage from the other band does not mask a -100 dB residual)."""
    x = np.atleast_2d(x)
    w = blackmanharris(x.shape[-1])
    spec = np.abs(np.fft.rfft(x * w, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sr)
    return spec[:, (freqs >= lo) & (freqs < hi)].sum()


def _reference_splice(out, ref, sr, cutoff, transition):
    """Independent float64 splice: direct (np.convolve) zero-phase filtering with the FIR."""
    h = splice_fir(sr, cutoff, transition)
    d = (h.size - 1) // 2
    diff = np.atleast_2d(ref - out)
    low = np.stack([np.convolve(c, h)[d:d + diff.shape[-1]] for c in diff])
    return out + low.reshape(out.shape)


@pytest.mark.parametrize("sr,cutoff", [(44100, 4000.0), (44100, 11025.0), (48000, 16000.0),
                                       (16000, 3000.0), (22050, 8000.0)])
def test_lf_replace_keeps_reference_below_and_output_above(sr, cutoff):
    rng = np.random.default_rng(int(cutoff))
    t = sr + 1237  # odd length, not a multiple of the hop
    ref = rng.standard_normal((2, t))
    out = rng.standard_normal((2, t))
    y = lf_replace(out, ref, sr, cutoff, transition_hz=500.0)
    assert y.shape == out.shape and y.dtype == out.dtype
    below = _band_energy(y - ref, sr, 0, cutoff - 250) / _band_energy(ref, sr, 0, cutoff - 250)
    above = (_band_energy(y - out, sr, cutoff + 250, sr / 2)
             / _band_energy(out, sr, cutoff + 250, sr / 2))
    below_db, above_db = 10 * np.log10(below), 10 * np.log10(above)
    print(f"sr {sr} cutoff {cutoff}: below {below_db:.1f} dB, above {above_db:.1f} dB")
    assert below_db < -60.0
    assert above_db < -60.0
    assert np.max(np.abs(y - _reference_splice(out, ref, sr, cutoff, 500.0))) < 1e-10


def test_lf_replace_float32_mono_and_edge_cases():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(4001).astype(np.float32)
    out = rng.standard_normal(4001).astype(np.float32)
    y = lf_replace(out, ref, 16000, 4000.0)
    assert y.shape == (4001,) and y.dtype == np.float32
    assert np.max(np.abs(y - _reference_splice(out.astype(np.float64), ref.astype(np.float64),
                                               16000, 4000.0, 500.0))) < 1e-5
    assert np.array_equal(lf_replace(out, ref, 16000, 0.0), out)
    assert np.array_equal(lf_replace(out, ref, 16000, 8000.0), ref)
    with pytest.raises(UsageError):
        lf_replace(out, ref[:-1], 16000, 4000.0)


def test_lf_replace_narrow_transition_grows_the_fft():
    # 100 Hz at 48 kHz needs a ~3900-tap filter: more than n_fft - hop + 1, so n_fft grows.
    rng = np.random.default_rng(5)
    ref, out = rng.standard_normal((2, 30001))
    y = lf_replace(out, ref, 48000, 12000.0, transition_hz=100.0)
    assert np.max(np.abs(y - _reference_splice(out, ref, 48000, 12000.0, 100.0))) < 1e-10


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 3000), hop=st.sampled_from([64, 256, 512]),
       seed=st.integers(0, 2**16))
def test_lf_replace_any_length_equals_direct_convolution(length, hop, seed):
    rng = np.random.default_rng(seed)
    ref, out = rng.standard_normal((2, 1, length))
    y = lf_replace(out, ref, 22050, 5000.0, n_fft=2048, hop=hop)
    assert y.shape == (1, length)
    assert np.max(np.abs(y - _reference_splice(out, ref, 22050, 5000.0, 500.0))) < 1e-10
