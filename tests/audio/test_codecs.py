"""upsr.audio.codecs: exact MP3 bitrates, decodes aligned to the input (residual lag 0, same
length), LAME's band edges, VBR, the resampling path, and the delays we compensate."""

from __future__ import annotations

import io as _io

import mutagen.mp3
import numpy as np
import pytest
from scipy import signal

from upsr.audio import codecs
from upsr.audio.filters import brickwall
from upsr.audio.synth import music_like
from upsr.errors import AudioError, UsageError

SR = 44100


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """1.5 s stereo: notes plus white noise, so the spectrum is broadband (clean band edges
    and a unique cross-correlation peak); not the probe codec_delay calibrates with."""
    rng = np.random.default_rng(7)
    sig = 0.5 * music_like(1.5, SR, channels=2, seed=5) + 0.15 * rng.standard_normal((2, 66150))
    return sig.astype(np.float32)


def xcorr_lag(y: np.ndarray, ref: np.ndarray, max_lag: int = 3000) -> int:
    """How many samples ``y`` is late against ``ref`` (scipy cross-correlation, channel 0)."""
    c = signal.correlate(y[0].astype(np.float64), ref[0].astype(np.float64), method="fft")
    lags = signal.correlation_lags(y.shape[1], ref.shape[1])
    keep = np.abs(lags) <= max_lag
    return int(lags[keep][np.argmax(c[keep])])


def band_edge_hz(y: np.ndarray, ref: np.ndarray, sr: int, floor_db: float = -10.0) -> float:
    """Highest frequency where the output keeps more than ``floor_db`` of the input's power
    (Welch PSD ratio): where the codec's low-pass sits."""
    f, py = signal.welch(y, sr, nperseg=2048, axis=-1)
    _, pr = signal.welch(ref, sr, nperseg=2048, axis=-1)
    ratio_db = 10 * np.log10(py.mean(0) / pr.mean(0))
    return float(f[np.nonzero(ratio_db > floor_db)[0][-1]])


# kbps -> (allowed band edge range in Hz) around LAME's table value (codecs.LAME_LOWPASS_HZ):
# 24 -> 3.9 kHz, 32 -> 5.5, 64 -> 11, 128 -> 17, 320 -> 20.5. Low bitrates also starve the
# top of the band on noise, so their ranges reach lower.
EDGES = {24: (2500, 4500), 32: (3000, 6000), 64: (8500, 12000), 128: (15500, 17500),
         320: (19500, 21000)}


@pytest.mark.parametrize("kbps", [24, 32, 64, 128, 320])
def test_cbr_round_trip_exact_bitrate_aligned_and_band_limited(x, kbps):
    r = codecs.mp3_roundtrip(x, SR, kbps, keep_data=True)
    assert r.samples.shape == x.shape and r.samples.dtype == np.float32
    assert abs(r.kbps - kbps) / kbps < 0.02
    meta = mutagen.mp3.MP3(_io.BytesIO(r.data)).info  # an independent header reader
    assert meta.bitrate == kbps * 1000 and meta.sample_rate == r.encoded_sr
    # 24 kbps is illegal at 44.1 kHz (MPEG-1 starts at 32): the least resampling is 24 kHz.
    assert r.encoded_sr == (24000 if kbps == 24 else SR)
    assert r.lag > 0  # lameenc streams are untagged: the raw decode is late
    assert xcorr_lag(r.samples, x) == 0
    lo, hi = EDGES[kbps]
    assert lo <= band_edge_hz(r.samples, x, SR) <= hi
    # Below 2 kHz the waveform is kept, and best with no shift at all: of the shifts -2..2
    # samples, 0 gives the smallest in-band error.
    ref_lo = brickwall(x, SR, 2000.0)
    errs = [np.linalg.norm(brickwall(np.roll(r.samples, s, axis=1), SR, 2000.0) - ref_lo)
            for s in range(-2, 3)]
    assert int(np.argmin(errs)) == 2
    if kbps >= 64:
        assert errs[2] / np.linalg.norm(ref_lo) < 0.25


def test_measured_delays_match_known_facts():
    """The constants the brief reports, re-measured by cross-correlation on a noise probe."""
    assert codecs.codec_delay("lame", SR, 2, 128, False, False) == (codecs.LAME_DELAY, SR)
    assert codecs.codec_delay("sndfile", SR, 2, 128, False, False) == (0, SR)  # LAME tag trims
    assert codecs.codec_delay("sndfile", SR, 2, 32, False, False) == (1105, SR)  # no tag <64k
    probe = (0.3 * np.random.default_rng(0).standard_normal((2, SR))).astype(np.float32)
    assert not codecs.mp3_info(codecs.encode_mp3(probe, SR, 56, backend="sndfile"))["tagged"]
    assert codecs.mp3_info(codecs.encode_mp3(probe, SR, 64, backend="sndfile"))["tagged"]
    assert not codecs.mp3_info(codecs.encode_mp3(probe, SR, 128, backend="lame"))["tagged"]


def test_raw_decode_is_late_and_long_and_sndfile_aligned(x):
    data = codecs.encode_mp3(x, SR, 128, backend="lame")
    y, sr = codecs.decode_mp3(data)
    assert sr == SR and y.shape[1] > x.shape[1] + codecs.LAME_DELAY
    assert xcorr_lag(y, x) == codecs.LAME_DELAY
    r = codecs.mp3_roundtrip(x, SR, 128, backend="sndfile")
    assert r.backend == "sndfile" and r.lag == 0 and r.samples.shape == x.shape
    assert abs(r.kbps - 128) / 128 < 0.02 and xcorr_lag(r.samples, x) == 0
    # Both backends code the low band about equally well once aligned.
    lame = codecs.mp3_roundtrip(x, SR, 128, backend="lame").samples
    ref_lo = brickwall(x, SR, 2000.0)
    for out in (lame, r.samples):
        assert np.linalg.norm(brickwall(out, SR, 2000.0) - ref_lo) < 0.15 * np.linalg.norm(ref_lo)


@pytest.mark.parametrize("backend", ["lame", "sndfile"])
def test_vbr_round_trip(x, backend):
    r = codecs.mp3_roundtrip(x, SR, 128, vbr=True, backend=backend, keep_data=True)
    info = codecs.mp3_info(r.data)
    assert info["kbps_min"] < info["kbps_max"]  # frame bitrates really vary
    assert abs(r.kbps - 128) / 128 < 0.15       # the mean targets the requested rate
    assert r.samples.shape == x.shape and xcorr_lag(r.samples, x) == 0


def test_allow_resample_lets_lame_lower_the_rate(x):
    kept = codecs.mp3_roundtrip(x, SR, 24)
    real = codecs.mp3_roundtrip(x, SR, 24, allow_resample=True)
    assert real.encoded_sr < kept.encoded_sr < SR  # LAME picks 8 kHz for 24 kbps stereo
    assert real.encoded_sr == 8000
    assert real.samples.shape == x.shape and xcorr_lag(real.samples, x) == 0
    assert abs(real.kbps - 24) / 24 < 0.02
    assert band_edge_hz(real.samples, x, SR) < real.encoded_sr / 2
    # At 64 kbps LAME resamples to 24 kHz and low-passes near its 11 kHz table value.
    r64 = codecs.mp3_roundtrip(x, SR, 64, allow_resample=True)
    assert r64.encoded_sr == 24000 and xcorr_lag(r64.samples, x) == 0
    assert 10000 <= band_edge_hz(r64.samples, x, SR) <= 12000


def test_mono_and_other_rates():
    mono = music_like(1.0, 48000, channels=1, seed=2)
    r = codecs.mp3_roundtrip(mono, 48000, 96)
    assert r.samples.shape == mono.shape and r.encoded_sr == 48000
    assert xcorr_lag(r.samples, mono) == 0
    assert codecs.mp3_roundtrip(mono[0], 48000, 96).samples.shape == mono.shape


def test_frame_parser_agrees_with_mutagen(x):
    data = codecs.encode_mp3(x, SR, 64, backend="sndfile")
    frames = codecs.mp3_frames(data)
    meta = mutagen.mp3.MP3(_io.BytesIO(data)).info
    assert frames[0].info  # libsndfile writes the LAME/Info tag frame first
    audio = [f for f in frames if not f.info]
    assert {f.kbps for f in audio} == {64} and {f.sr for f in audio} == {SR}
    assert sum(f.size for f in frames) == len(data) - (data.startswith(b"ID3") and
                                                       frames[0].offset)
    assert meta.length == pytest.approx(len(audio) * 1152 / SR, abs=0.1)


def test_bad_inputs(x):
    with pytest.raises(UsageError, match="1 or 2 channels"):
        codecs.mp3_roundtrip(np.zeros((3, 1000), np.float32), SR, 128)
    with pytest.raises(UsageError, match="bitrate"):
        codecs.encode_mp3(x, SR, 100)
    with pytest.raises(UsageError, match="sndfile"):
        codecs.encode_mp3(x, SR, 24, backend="sndfile")
    with pytest.raises(UsageError, match="backend"):
        codecs.encode_mp3(x, SR, 128, backend="ffmpeg")
    bad = x.copy()
    bad[0, 3] = np.inf
    with pytest.raises(AudioError, match="non-finite"):
        codecs.mp3_roundtrip(bad, SR, 128)
    with pytest.raises(AudioError):
        codecs.decode_mp3(b"definitely not an mp3 stream" * 10)
    with pytest.raises(AudioError):
        codecs.decode_mp3(b"")
    before = x.copy()
    codecs.mp3_roundtrip(x, SR, 32)
    np.testing.assert_array_equal(x, before)  # input untouched


@pytest.mark.parametrize("n", [1, 300])
def test_inputs_shorter_than_the_codec_delay_keep_their_length(n):
    x = (0.3 * np.random.default_rng(n).standard_normal((2, n))).astype(np.float32)
    for kbps, allow in ((128, False), (24, True)):
        r = codecs.mp3_roundtrip(x, SR, kbps, allow_resample=allow)
        assert r.samples.shape == (2, n) and np.isfinite(r.samples).all()
