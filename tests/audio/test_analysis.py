import functools
import io

import numpy as np
import pytest
import soundfile as sf

from upsr.audio import analysis
from upsr.audio.analysis import (
    band_edge_hz,
    effective_cutoff_hz,
    estimate_bitrate,
    excerpt_starts,
    is_band_limited,
    match_lame_bitrate,
    rolloff_bin,
    rolloff_hz,
)
from upsr.audio.synth import brickwall, music_like, tilted_noise


@functools.cache
def _music(sr, seconds=2.0, seed=3):
    """music_like is slow to synthesise (a Python loop over harmonics): make each once."""
    return music_like(seconds, sr, 2, seed=seed)


CASES = [(16000, 2000), (16000, 6000), (22050, 4000), (44100, 4000), (44100, 11025),
         (44100, 16000), (48000, 6000), (48000, 12000)]


def _audiosr_scan(mag_sum, fraction):
    """AudioSR's loop, literally: scan from the top for the first cumsum below the threshold."""
    cum = np.cumsum(mag_sum)
    threshold = cum[-1] * fraction
    for i in range(1, cum.shape[0]):
        if cum[-i] < threshold:
            return cum.shape[0] - i
    return 0


def test_rolloff_bin_is_audiosr_scan():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = rng.random(rng.integers(2, 60)) ** rng.uniform(1, 8)
        frac = rng.uniform(0.5, 1.0)
        assert rolloff_bin(spec, frac) == _audiosr_scan(spec, frac)
    assert rolloff_bin(np.zeros(10)) == 0


def _expected_rolloff(gain, freqs, fraction):
    """Truth from the designed magnitude response: where its cumulative sum crosses."""
    cum = np.cumsum(gain)
    return freqs[np.searchsorted(cum, fraction * cum[-1])]


@pytest.mark.parametrize("sr,cutoff", CASES)
def test_rolloff_of_band_limited_noise_within_2_percent(sr, cutoff):
    seconds = 2.0
    white = brickwall(np.random.default_rng(cutoff).standard_normal((1, int(seconds * sr))),
                      sr, cutoff)
    pink = brickwall(tilted_noise(seconds, sr, 2, -3.0, seed=cutoff), sr, cutoff)
    freqs = np.linspace(0, sr / 2, 20001)
    flat = (freqs <= cutoff).astype(float)
    # tilted_noise's gain: (max(f, 20 Hz) / 1 kHz) ** (slope / 6.02 dB), nothing at DC
    tilt = np.where(freqs > 0, (np.maximum(freqs, 20.0) / 1000.0) ** (-3.0 / (20 * np.log10(2))),
                    0.0) * flat
    for x, gain in ((white, flat), (pink, tilt)):
        truth = _expected_rolloff(gain, freqs, 0.985)
        got = rolloff_hz(x, sr)
        print(f"roll-off sr {sr} cutoff {cutoff}: truth {truth:.0f} got {got:.0f} "
              f"err {100 * (got / truth - 1):+.2f} %")
        assert abs(got / truth - 1) < 0.02


@pytest.mark.parametrize("sr,cutoff", CASES)
def test_band_edge_of_band_limited_noise_and_music_within_2_percent(sr, cutoff):
    signals = {
        "white": np.random.default_rng(1).standard_normal((1, 2 * sr)) * 0.3,
        "pink": tilted_noise(2.0, sr, 2, -3.0, seed=2),
        "music": _music(sr),
    }
    for name, x in signals.items():
        got = band_edge_hz(brickwall(x, sr, cutoff), sr)
        print(f"band edge {name} sr {sr} cutoff {cutoff}: got {got:.0f} "
              f"err {100 * (got / cutoff - 1):+.2f} %")
        assert abs(got / cutoff - 1) < 0.02
        limited, edge = is_band_limited(brickwall(x, sr, cutoff), sr)
        assert limited and edge == got


def test_full_band_and_silence():
    sr = 44100
    x = _music(sr)
    assert band_edge_hz(x, sr) > 0.98 * sr / 2
    assert is_band_limited(x, sr)[0] is False
    silence = np.zeros((2, sr), dtype=np.float32)
    assert band_edge_hz(silence, sr) == sr / 2
    assert is_band_limited(silence, sr) == (False, sr / 2)
    assert effective_cutoff_hz(silence, sr) == sr / 2  # AudioSR: < 1 kHz means "none found"
    cut = brickwall(x, sr, 8000)
    assert abs(effective_cutoff_hz(cut, sr, "band_edge") / 8000 - 1) < 0.02
    assert effective_cutoff_hz(cut, sr, "rolloff") < 8000  # conservative on music


def test_excerpts_add_no_join_artefacts():
    sr = 44100
    x = brickwall(_music(sr), sr, 10000)
    parts = [x[:, s:s + sr // 2] for s in (0, 20_001, 40_003, 66_000)]
    assert abs(band_edge_hz(parts, sr) / 10000 - 1) < 0.02
    joined = np.concatenate(parts, axis=-1)  # the clicks at the joins are broadband
    assert band_edge_hz(joined, sr) > band_edge_hz(parts, sr)


def test_short_signal_is_analysed():
    sr = 16000
    x = brickwall(np.random.default_rng(0).standard_normal(3000), sr, 4000)
    assert abs(band_edge_hz(x, sr) / 4000 - 1) < 0.05  # a 2048-point frame: coarser bins
    assert rolloff_hz(x[:10], sr) >= 0.0


def test_excerpt_rule():
    assert excerpt_starts(44100 * 30, 44100) == [(0, 44100 * 30)]
    spans = excerpt_starts(44100 * 3600, 44100)
    assert len(spans) == 12 and all(n == 5 * 44100 for _, n in spans)
    centres = [(s + n / 2) / (44100 * 3600) for s, n in spans]
    assert np.allclose(centres, (np.arange(12) + 0.5) / 12, atol=1e-6)


def _lame(x, sr, kbps):
    import lameenc
    enc = lameenc.Encoder()
    enc.set_bit_rate(kbps)
    enc.set_in_sample_rate(sr)
    enc.set_channels(x.shape[0])
    enc.set_quality(2)
    pcm = (np.clip(x, -1, 1).T * 32767).astype("<i2").tobytes()
    return enc.encode(pcm) + enc.flush()


def _lame_cli(x, sr, kbps, tmp_path):
    """``x`` through Debian's ``lame`` command (CBR, -q 2): another build than the lameenc
    wheel the table was measured with."""
    import shutil
    import subprocess

    if shutil.which("lame") is None:
        pytest.skip("the lame command is not installed")
    wav, mp3 = tmp_path / "n.wav", tmp_path / "n.mp3"
    sf.write(wav, x.T, sr, subtype="PCM_16")
    subprocess.run(["lame", "--quiet", "--cbr", "-b", str(kbps), "-q", "2", str(wav), str(mp3)],
                   check=True)
    return mp3.read_bytes()


@pytest.mark.parametrize("sr,channels,kbps", [(44100, 2, 128), (44100, 2, 192),
                                              (48000, 2, 96), (44100, 1, 48), (44100, 2, 64)])
def test_lame_table_matches_the_lame_command(sr, channels, kbps, tmp_path):
    """Files encoded by the ``lame`` command (not the encoder the table was measured with)
    decode at the table's rate, their measured edge matches the row, and the bitrate is found
    again from the edge alone."""
    x = 0.25 * np.random.default_rng(kbps).standard_normal((channels, 2 * sr))
    y, out_sr = sf.read(io.BytesIO(_lame_cli(x, sr, kbps, tmp_path)), dtype="float64",
                        always_2d=True)
    row = next(r for r in analysis.LAME_LOWPASS if r[:3] == (sr, channels, kbps))
    assert out_sr == row[3]
    edge = band_edge_hz(y.T, out_sr)
    assert abs(edge / row[4] - 1) < 0.01, (edge, row)
    assert kbps in match_lame_bitrate(edge, out_sr, channels)
    est = estimate_bitrate(None, y.T, out_sr)
    assert est.source == "cutoff" and est.codec is None and kbps in est.candidates


# LAME 3.100's own nominal low-pass per total bitrate (``freq_map`` in ``optimum_bandwidth``,
# libmp3lame/lame.c): an independent reference for the measured table, which was made with
# lameenc and our band-edge rule.
LAME_FREQ_MAP = {8: 2000, 16: 3700, 24: 3900, 32: 5500, 40: 7000, 48: 7500, 56: 10000,
                 64: 11000, 80: 13500, 96: 15100, 112: 15600, 128: 17000, 160: 17500,
                 192: 18600, 224: 19400, 256: 19700, 320: 20500}


def test_lame_table_agrees_with_lames_own_bandwidth_map():
    """Every stereo row of the measured table lies within 3 % of the low-pass LAME's source
    assigns to that bitrate (where that low-pass is below the decoded Nyquist), so the table
    is LAME's behaviour, not an artefact of how it was measured."""
    checked = 0
    for sr, ch, kbps, dec, edge in analysis.LAME_LOWPASS:
        nominal = LAME_FREQ_MAP[kbps]
        if ch != 2 or nominal >= dec / 2 - 150:
            continue
        assert abs(edge / nominal - 1) < 0.03, (sr, ch, kbps, edge, nominal)
        checked += 1
    assert checked >= 30


def test_estimate_bitrate_from_container_and_lossless(tmp_path):
    sr = 44100
    x = _music(sr)
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(_lame(x, sr, 128))
    est = estimate_bitrate(mp3)
    assert (est.source, est.codec, est.kbps) == ("container", "MP3", 128.0)
    assert est.cutoff_hz == 16820.0  # the table's edge when no audio is given
    full = tmp_path / "full.wav"
    sf.write(full, x.T, sr)
    assert estimate_bitrate(full, x, sr).source == "none"
    cut = brickwall(x, sr, 6000)
    est = estimate_bitrate(None, cut, sr)  # no LAME setting cuts at 6 kHz at 44.1 kHz stereo
    assert (est.source, est.codec, est.kbps) == ("cutoff", None, None)
    assert abs(est.cutoff_hz / 6000 - 1) < 0.02


def test_float32_input_is_analysed_in_float64():
    x = np.random.default_rng(7).standard_normal((2, 20000))
    a = analysis.spectrum_sum(x.astype(np.float32), 2048, 512, power=True)
    b = analysis.spectrum_sum(x.astype(np.float32).astype(np.float64), 2048, 512, power=True)
    assert a.dtype == np.float64 and np.allclose(a, b, rtol=1e-12, atol=0)


def test_estimate_bitrate_reuses_a_given_band():
    est = estimate_bitrate(None, None, 44100, band=(True, 16817.0))
    assert (est.source, est.codec, est.kbps, est.candidates) == ("cutoff", None, 128.0, (128,))
    est = estimate_bitrate(None, None, 44100, band=(True, 19565.0))
    assert est.candidates == (224, 256)  # indistinguishable low-passes: both reported
    assert estimate_bitrate(None, None, 44100, band=(False, 22050.0)).source == "none"


def test_known_band_is_the_edge_not_the_rolloff(tmp_path):
    """The default cutoff is the band the file has: the -70 dB edge of a plain file; for an
    MP3 the LAME low-pass of its container bitrate where that lies higher (content stops
    short of it on quiet music); full band above 19 kHz. AudioSR's roll-off lies kHz lower."""
    from upsr.audio import io as uio

    sr = 44100
    x = brickwall(tilted_noise(3.0, sr, channels=2, slope_db_per_octave=-6.0, seed=5), sr,
                  11000)
    assert abs(analysis.effective_cutoff_hz(x, sr) - 11000) < 50
    assert analysis.effective_cutoff_hz(x, sr, method="rolloff") < 10000
    full = brickwall(tilted_noise(3.0, sr, channels=1, seed=5), sr, 19500)
    assert analysis.known_band_hz(full, sr) == sr / 2  # full band: nothing to add
    # a 128 kbps stereo MP3 of quiet-treble music: the measured edge falls short of LAME's
    # 16.8 kHz low-pass; the container says what the codec kept
    quiet = brickwall(tilted_noise(3.0, sr, channels=2, slope_db_per_octave=-9.0, seed=6),
                      sr, 20000)
    mp3 = tmp_path / "q.mp3"
    mp3.write_bytes(_lame(quiet, sr, 128))
    a = uio.read(mp3)
    measured = band_edge_hz(a.samples, sr)
    assert measured < 16000
    assert analysis.known_band_hz(a.samples, sr, uio.info(mp3)) == 16820.0
    assert analysis.known_band_hz(a.samples, sr) == pytest.approx(measured)
