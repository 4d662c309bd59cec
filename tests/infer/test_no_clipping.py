"""``upsr enhance`` to PCM/FLAC never clips: the added band is lowered where it would."""

import numpy as np
import soundfile as sf

from upsr.audio import io
from upsr.audio.synth import brickwall
from upsr.infer.batch import BatchOptions, enhance_files, plan_items


def _loud(tmp_path):
    sr = 44100
    t = np.arange(2 * sr) / sr
    saw = 2 * ((110 * t) % 1.0) - 1  # rich harmonics: sbr rebuilds a loud top octave
    x = brickwall(saw[None], sr, 5000)
    x = 0.99 * x / np.abs(x).max()
    io.write(tmp_path / "in.flac", x, sr, subtype="PCM_24")
    return x


def test_flac_output_is_limited_not_clipped(tmp_path, caplog):
    x = _loud(tmp_path)
    items = plan_items([str(tmp_path / "in.flac")], str(tmp_path / "out"), None)
    done = enhance_files(items, "sbr", BatchOptions())
    item = done[0]
    assert item.status == "done", item.error
    assert "clipping" not in caplog.text
    y, sr = sf.read(item.dst, always_2d=True)
    assert np.abs(y).max() < 1.0
    rec = item.record()
    assert rec["limiter_events"] >= 1 and 0 < rec["limited_s"] <= 2.0
    # without the limiter the same restoration passes full scale (float output shows it)
    items = plan_items([str(tmp_path / "in.flac")], str(tmp_path / "free"), "wav")
    free = enhance_files(items, "sbr", BatchOptions(format="wav", bit_depth="32f"))[0]
    z, _ = sf.read(free.dst, always_2d=True)
    assert np.abs(z).max() > 1.0 and free.limiter_events == 0
    # and the known band is the input's in both
    X = np.fft.rfft(x[0] * np.hanning(x.shape[-1]))
    f = np.fft.rfftfreq(x.shape[-1], 1 / sr)
    low = f < 4500
    Y = np.fft.rfft(y[:, 0] * np.hanning(x.shape[-1]))
    assert np.linalg.norm(Y[low] - X[low]) / np.linalg.norm(X[low]) < 1e-3


def test_float_bit_depth_with_flac_is_a_one_line_error(tmp_path):
    import os
    import subprocess
    import sys

    _loud(tmp_path)
    res = subprocess.run([sys.executable, "-m", "upsr", "enhance", str(tmp_path / "in.flac"),
                          "-o", str(tmp_path / "o"), "--format", "flac", "--bit-depth", "32f"],
                         capture_output=True, text=True, env={**os.environ})
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLAC cannot store float" in lines[0], res.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_mid_side_processing_is_limited_in_left_right(tmp_path):
    """With ``--stereo mid-side`` the ceiling applies to the written left/right samples: a
    loud left channel over a silent right one must not clip (its mid and side are half as
    loud, so a check on mid/side alone would let it through)."""
    import dataclasses

    x = _loud(tmp_path)
    stereo = np.stack([x[0], np.zeros_like(x[0])])
    io.write(tmp_path / "st.flac", stereo, 44100, subtype="PCM_24")
    opts = BatchOptions()
    opts = dataclasses.replace(opts, engine=dataclasses.replace(opts.engine, stereo="mid-side"))
    items = plan_items([str(tmp_path / "st.flac")], str(tmp_path / "out"), None)
    item = enhance_files(items, "sbr", opts)[0]
    assert item.status == "done", item.error
    y, _ = sf.read(item.dst, always_2d=True)
    assert np.abs(y).max() < 1.0 and item.limiter_events >= 1
