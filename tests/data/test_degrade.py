"""degrade_array and friends: draws applied as asked, pure and reproducible; tree planning."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from upsr.audio.resample import out_frames
from upsr.data.degrade import (
    MANIFEST,
    TreeOptions,
    apply_params,
    degrade_array,
    measure_lag,
    pair_lag,
    pair_seed,
    plan_sources,
    read_manifest,
)
from upsr.data.spec import parse_spec
from upsr.errors import UsageError

SR = 44100


def white(seconds: float, channels: int = 1, seed: int = 0, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((channels, int(seconds * sr)))
            ).astype(np.float32)


def band_energy(y: np.ndarray, sr: int, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(np.asarray(y, dtype=np.float64), axis=-1)) ** 2
    f = np.fft.rfftfreq(y.shape[-1], 1.0 / sr)
    return float(spec[..., (f >= lo_hz) & (f < hi_hz)].sum())


def test_pair_seed_is_blake2b_of_seed_path_index():
    expect = int.from_bytes(hashlib.blake2b(b"7\x00a/b.wav\x003", digest_size=8).digest(),
                            "big") >> 1
    assert pair_seed(7, "a/b.wav", 3) == expect
    assert pair_seed(7, "a/b.wav", None) != pair_seed(7, "a/b.wav", 0)
    assert len({pair_seed(s, k, i) for s in (0, 1) for k in ("a", "b") for i in (0, 1)}) == 8
    assert 0 <= pair_seed(2**40, "x" * 500, 10**6) < 2**63


def test_measure_lag_matches_naive_loop():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(400)
    for shift in (-17, -1, 0, 5, 30):
        est = np.roll(ref, shift) + 0.1 * rng.standard_normal(400)
        got = measure_lag(ref, est, max_lag=40)
        naive = max(range(-40, 41), key=lambda L: sum(
            est[n] * ref[n - L] for n in range(400) if 0 <= n - L < 400))
        assert got == naive == shift
    assert measure_lag(np.zeros((2, 100)), np.zeros((2, 100)), 10) == 0  # silence
    assert measure_lag(ref, ref, 0) == 0


@pytest.mark.parametrize("seed", range(10))
def test_lowpass_removes_energy_above_the_drawn_cutoff(seed):
    x = white(0.5, channels=2, seed=seed)
    y, sr, params = degrade_array(x, SR, "lowpass=butter,cheby1,ellip,bessel,boxcar:8:2k-16k",
                                  seed)
    assert sr == SR and y.shape == x.shape and y.dtype == np.float32
    fc = params["lowpass_cutoff_hz"]
    assert 2000 <= fc <= 16000
    total = band_energy(x, SR, 0, SR)
    above = band_energy(y, SR, 1.25 * fc, SR)
    # Bessel's (phase-normalised) magnitude starts falling well below its cutoff
    top = (0.25 if params["lowpass_type"] == "bessel" else 0.5) * fc
    kept = band_energy(y, SR, 0, top) / band_energy(x, SR, 0, top)
    if params["lowpass_type"] == "boxcar":
        assert params["lowpass_order"] is None
        assert band_energy(y, SR, fc + 1, SR) < 1e-12 * total
    else:
        assert params["lowpass_order"] == 8
        assert above < 1e-3 * total
    assert kept > 0.8  # the pass band survives: the filter sits at the drawn cutoff


def test_fixed_lowpass_equals_the_filter_applied_directly():
    from upsr.audio.filters import lowpass

    x = white(0.3)
    y, _, params = degrade_array(x, SR, "lowpass=cheby1:8:4k", seed=3)
    assert params == {"lowpass_type": "cheby1", "lowpass_order": 8, "lowpass_cutoff_hz": 4000}
    np.testing.assert_array_equal(y, lowpass(x, SR, 4000, kind="cheby1", order=8))


@pytest.mark.parametrize(("sr_in", "sr_out", "frames"), [(44100, 11025, 44100),
                                                        (48000, 24000, 12345),
                                                        (44100, 16000, 10001)])
def test_resample_gives_the_asked_rate_and_length(sr_in, sr_out, frames):
    t = np.arange(frames) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    y, sr, params = degrade_array(x, sr_in, f"resample={sr_out}", seed=0)
    assert sr == sr_out == params["resample_hz"]
    # round(T * sr_out / sr_in) with halves rounding up (upsr.audio.resample's rule)
    assert y.shape == (1, out_frames(frames, sr_in, sr_out))
    assert y.shape[1] == int(np.floor(frames * sr_out / sr_in + 0.5))
    # a 440 Hz tone stays a 440 Hz tone at the new rate (away from the edges)
    tt = np.arange(y.shape[1]) / sr_out
    ref = 0.5 * np.sin(2 * np.pi * 440 * tt)
    mid = slice(y.shape[1] // 10, -y.shape[1] // 10)
    assert np.max(np.abs(y[0, mid] - ref[mid])) < 1e-3
    assert pair_lag(x, sr_in, y, sr_out) == 0


def test_resample_set_draws_every_rate():
    x = white(0.05)
    rates = {degrade_array(x, SR, "resample=8k,16k,22050", seed=s)[1] for s in range(40)}
    assert rates == {8000, 16000, 22050}


def test_same_seed_same_result_and_input_untouched():
    x = white(0.4, channels=2, seed=4)
    x0 = x.copy()
    spec = "lowpass=cheby1,ellip,butter,boxcar:2-10:2k-16k resample=22050"
    a = degrade_array(x, SR, spec, seed=11)
    b = degrade_array(x, SR, parse_spec(spec), seed=np.random.default_rng(11))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    np.testing.assert_array_equal(x, x0)
    draws = {json.dumps(degrade_array(x, SR, spec, seed=s)[2], sort_keys=True)
             for s in range(8)}
    assert len(draws) == 8


def test_identity_spec_and_drawn_params_replay():
    x = white(0.2)
    y, sr, params = degrade_array(x, SR, "", seed=0)
    assert params == {} and sr == SR
    np.testing.assert_array_equal(y, x)
    y1, _, p1 = degrade_array(x, SR, "lowpass=ellip:2-10:3k-9k", seed=5)
    y2, _, extra = apply_params(x, SR, p1)  # the training code may draw once, apply later
    np.testing.assert_array_equal(y1, y2)
    assert extra == {}


def test_cutoff_above_nyquist_is_a_usage_error_before_any_draw():
    with pytest.raises(UsageError, match="Nyquist"):
        degrade_array(white(0.1, sr=16000), 16000, "lowpass=cheby1:8:2k-16k", seed=0)


def test_mp3_step_at_drawn_bitrates():
    import upsr.audio.codecs  # noqa: F401  (a hard dependency: fail, never skip)
    from upsr.audio.synth import music_like

    x = music_like(0.5, SR, 2, seed=3)
    outs = {}
    for kbps in (32, 64, 128):
        y, sr, params = degrade_array(x, SR, f"mp3={kbps}", seed=0)
        assert params["mp3_kbps"] == kbps and sr == SR and y.shape == x.shape
        # the encoded size says the file really was made at the asked bitrate
        assert abs(params["mp3_kbps_measured"] - kbps) < 0.2 * kbps
        assert pair_lag(x, SR, y, SR) == 0  # the codec delay is compensated
        outs[kbps] = y
    # lower bitrates lose more: the error to the clean signal grows as the bitrate falls
    err = {k: float(np.linalg.norm(y - x)) for k, y in outs.items()}
    assert err[32] > err[64] > err[128] > 0
    # a set: the drawn bitrate is the one the encoder used
    y, _, params = degrade_array(x, SR, "mp3=24,32,48,64,96,128", seed=11)
    assert params["mp3_kbps"] in (24, 32, 48, 64, 96, 128)
    assert abs(params["mp3_kbps_measured"] - params["mp3_kbps"]) < 0.2 * params["mp3_kbps"]


# ----------------------------------------------------------------------------- tree pieces


def test_plan_reports_name_clashes_short_files_and_bad_headers(tmp_path):
    import soundfile as sf

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    sf.write(src / "d" / "a.flac", np.zeros((4410, 1)) + 0.1, SR)
    sf.write(src / "d" / "a.wav", np.zeros((4410, 1)) + 0.1, SR)
    sf.write(src / "short.wav", np.zeros((100, 1)) + 0.1, SR)
    (src / "text.wav").write_text("not audio")
    paths = sorted(src.rglob("*.*"))
    opts = TreeOptions(spec=parse_spec("segment=0.05"), format="flac")
    plans = {s.rel: s for s in plan_sources(src, paths, opts)}
    assert [p.hr for p in plans["d/a.flac"].pairs] == ["hr/d/a_0000.flac", "hr/d/a_0001.flac"]
    assert "already made from d/a.flac" in plans["d/a.wav"].error
    assert plans["short.wav"].pairs == [] and "shorter than" in plans["short.wav"].note
    assert "text.wav" in plans["text.wav"].error and "\n" not in plans["text.wav"].error


def test_read_manifest_drops_half_written_lines(tmp_path):
    good = {"hr": "hr/a.wav", "lr": "lr/a.wav", "source": "a.wav"}
    (tmp_path / MANIFEST).write_text(json.dumps(good) + "\n" + '{"hr": "hr/b.wa')
    assert read_manifest(tmp_path) == {"hr/a.wav": good}


def test_float_wav_peak_timestamp_is_zeroed(tmp_path):
    """libsndfile stamps the wall-clock time into float WAVs; pairs must not carry it."""
    import soundfile as sf

    from upsr.data.degrade import _write_audio

    x = np.stack([np.linspace(-0.5, 0.5, 1000), np.linspace(0.9, -0.9, 1000)]).astype(np.float32)
    _write_audio(tmp_path / "a.wav", x, SR, "WAV", "FLOAT")
    data = (tmp_path / "a.wav").read_bytes()
    i = data.index(b"PEAK")
    assert int.from_bytes(data[i + 8:i + 12], "little") == 1  # chunk version
    assert data[i + 12:i + 16] == b"\0\0\0\0"  # timestamp
    y, sr = sf.read(tmp_path / "a.wav", always_2d=True, dtype="float32")
    assert sr == SR
    np.testing.assert_array_equal(y.T, x)
    _write_audio(tmp_path / "b.flac", x, SR, "FLAC", "PCM_24")  # no PEAK chunk: untouched
    assert sf.info(tmp_path / "b.flac").format == "FLAC"
