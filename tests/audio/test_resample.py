"""upsr.audio.resample: exact lengths, sines preserved, streaming == one-shot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upsr.audio.resample import StreamResampler, out_frames, resample
from upsr.audio.synth import brickwall, music_like
from upsr.errors import UsageError

RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), sr_in=st.sampled_from(RATES), sr_out=st.sampled_from(RATES),
       channels=st.integers(1, 3))
def test_exact_output_length(n, sr_in, sr_out, channels):
    x = np.random.default_rng(n).standard_normal((channels, n)).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    expected = int(np.floor(n * sr_out / sr_in + 0.5))  # float formula as a cross-check
    assert out_frames(n, sr_in, sr_out) == expected
    assert y.shape == (channels, expected) and y.dtype == np.float32


def test_leading_dims_and_dtypes():
    x = np.random.default_rng(0).standard_normal((2, 3, 1000))
    y = resample(x, 48000, 16000)
    assert y.shape == (2, 3, 333) and y.dtype == np.float64
    # Each row is resampled independently: equal to resampling that row alone.
    np.testing.assert_allclose(y[1, 2], resample(x[1, 2], 48000, 16000), atol=1e-12)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize("sr_in,sr_out,f0", [(44100, 16000, 1000.0), (16000, 48000, 3000.0),
                                             (48000, 44100, 15000.0)])
def test_sine_amplitude_and_frequency_preserved(sr_in, sr_out, f0):
    t_in = np.arange(sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * f0 * t_in)).astype(np.float32)
    y = resample(x, sr_in, sr_out, quality="VHQ")
    t_out = np.arange(y.shape[-1]) / sr_out
    ref = 0.5 * np.sin(2 * np.pi * f0 * t_out)
    core = slice(sr_out // 10, -sr_out // 10)  # away from the edge transients
    assert np.max(np.abs(y[core] - ref[core])) < 2e-3
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert np.argmax(spec) * sr_out / y.size == pytest.approx(f0, abs=1.5)


def test_round_trip_band_limited_signal():
    x = brickwall(music_like(1.0, 16000, channels=1, seed=1), 16000, 6000.0)
    back = resample(resample(x, 16000, 44100), 44100, 16000)
    assert back.shape == x.shape
    core = slice(800, -800)
    err = np.linalg.norm(back[:, core] - x[:, core]) / np.linalg.norm(x[:, core])
    assert err < 0.01  # soxr's passband covers 6 kHz of 8


@pytest.mark.parametrize("sr_in,sr_out,block", [(44100, 16000, 1000), (16000, 44100, 777),
                                                (48000, 44100, 4096), (22050, 22050, 500)])
def test_stream_equals_one_shot(sr_in, sr_out, block):
    x = music_like(1.3, sr_in, channels=2, seed=2)
    rs = StreamResampler(sr_in, sr_out, channels=2)
    pieces = [rs.process(x[:, i:i + block]) for i in range(0, x.shape[1], block)]
    pieces.append(rs.process(np.zeros((2, 0), np.float32), last=True))
    y = np.concatenate(pieces, axis=1)
    one = resample(x, sr_in, sr_out)
    assert y.shape == one.shape == (2, out_frames(x.shape[1], sr_in, sr_out))
    np.testing.assert_allclose(y, one, atol=1e-5)
    with pytest.raises(UsageError):
        rs.process(x[:, :10])


def test_stream_with_last_flag_on_data_block():
    x = music_like(0.5, 44100, channels=1, seed=4)
    rs = StreamResampler(44100, 48000, 1, quality="MQ")
    y = np.concatenate([rs.process(x[:, :10000]), rs.process(x[:, 10000:], last=True)], axis=1)
    np.testing.assert_allclose(y, resample(x, 44100, 48000, quality="MQ"), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(UsageError, match="quality"):
        resample(np.zeros(10), 8000, 16000, quality="best")
    with pytest.raises(UsageError):
        resample(np.zeros(10), 0, 16000)
    with pytest.raises(UsageError):
        StreamResampler(8000, 16000, 2).process(np.zeros((1, 10)))
