"""upsr.audio.io: round trips per format/subtype, tags, the clip->float rule, blocks, pipes,
and one-line AudioErrors for every kind of bad input."""

from __future__ import annotations

import io as _io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from upsr.audio import io
from upsr.audio.synth import music_like
from upsr.errors import AudioError, UsageError

SR = 44100


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return music_like(1.0, SR, channels=2, seed=3)  # float32 [2, 44100], peak 0.6


# A PCM round trip is exact to 1.5 steps of its depth: half a step of rounding plus up to one
# step because libsndfile scales by 2**(b-1)-1 on write and by 2**(b-1) on read.
@pytest.mark.parametrize("suffix,subtype,tol", [
    (".wav", "PCM_16", 1.5 / 2**15),
    (".wav", "PCM_24", 1.5 / 2**23),
    (".wav", "FLOAT", 0.0),
    (".flac", "PCM_16", 1.5 / 2**15),
    (".flac", "PCM_24", 1.5 / 2**23),
    (".aiff", "PCM_16", 1.5 / 2**15),
])
def test_round_trip_per_format_and_subtype(tmp_path, x, suffix, subtype, tol):
    path = tmp_path / f"a{suffix}"
    written = io.write(path, x, SR, subtype=subtype)
    assert written == subtype
    a = io.read(path)
    assert a.samples.dtype == np.float32 and a.samples.shape == x.shape
    assert a.sr == SR and a.subtype == subtype
    assert np.max(np.abs(a.samples - x)) <= tol
    inf = io.info(path)
    assert (inf.frames, inf.channels, inf.sr, inf.subtype) == (x.shape[1], 2, SR, subtype)
    assert inf.duration_s == pytest.approx(1.0)


def test_ogg_vorbis_read(tmp_path, x):
    path = tmp_path / "a.ogg"
    sf.write(path, x.T, SR)  # written by soundfile directly: io.read must decode foreign files
    a = io.read(path)
    assert a.format == "OGG" and a.subtype == "VORBIS" and a.samples.shape == x.shape
    # Lossy, but the waveform is close (Vorbis at its default quality).
    err = np.linalg.norm(a.samples - x) / np.linalg.norm(x)
    assert err < 0.2


def test_mp3_and_opus_read(tmp_path, x):
    mp3 = tmp_path / "a.mp3"
    sf.write(mp3, x.T, SR, format="MP3")
    a = io.read(mp3)
    assert (a.format, a.subtype, a.samples.shape) == ("MP3", "MPEG_LAYER_III", x.shape)
    opus = tmp_path / "a.opus"
    sf.write(opus, x.T, 48000, format="OGG", subtype="OPUS")
    b = io.read(opus)
    assert (b.format, b.subtype, b.sr, b.samples.shape) == ("OGG", "OPUS", 48000, x.shape)
    assert io.info(opus).format == "OGG"


def test_streamed_wav_with_placeholder_size_is_read(tmp_path, x):
    """Pipes write WAVs whose data size is 0xFFFFFFFF: that is not truncation."""
    path = tmp_path / "streamed.wav"
    io.write(path, x, SR)
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert io.read(path).samples.shape == x.shape


def test_mono_1d_is_written_as_one_channel(tmp_path, x):
    path = tmp_path / "m.wav"
    io.write(path, x[0], SR)
    assert io.read(path).samples.shape == (1, x.shape[1])


def test_tags_preserved(tmp_path, x):
    tags = {"title": "Tape 3", "artist": "Someone", "album": "Archive", "date": "1979"}
    for suffix in (".wav", ".flac"):
        path = tmp_path / f"t{suffix}"
        io.write(path, x, SR, tags=tags)
        got = io.read(path).tags
        assert {k: got[k] for k in tags} == tags


def test_clipping_switches_wav_to_float_and_flac_clips(tmp_path, x):
    loud = x * 3.0  # peak 1.8: PCM would clip
    assert io.choose_subtype(loud, "WAV", "PCM_16") == "FLOAT"
    assert io.choose_subtype(x, "WAV", "PCM_24") == "PCM_24"       # no clipping: depth kept
    assert io.choose_subtype(x, "WAV", "MPEG_LAYER_III") == "PCM_16"  # not storable: default
    assert io.choose_subtype(loud, "FLAC", "PCM_24") == "PCM_24"   # FLAC has no float
    wav = tmp_path / "loud.wav"
    assert io.write(wav, loud, SR, subtype="PCM_16") == "FLOAT"
    np.testing.assert_array_equal(io.read(wav).samples, loud)  # nothing lost
    flac = tmp_path / "loud.flac"
    assert io.write(flac, loud, SR, subtype="PCM_16") == "PCM_16"
    got = io.read(flac).samples
    assert np.max(np.abs(got)) <= 1.0
    np.testing.assert_allclose(got, np.clip(loud, -1, 1), atol=1.5 / 2**15)


def test_default_subtype_and_unknown_suffix(tmp_path, x):
    assert io.write(tmp_path / "d.wav", x, SR) == "PCM_16"
    with pytest.raises(UsageError, match="suffix"):
        io.write(tmp_path / "d.xyz", x, SR)


def test_block_reading_equals_whole_read(tmp_path, x):
    path = tmp_path / "b.flac"
    io.write(path, x, SR, subtype="PCM_24")
    whole = io.read(path).samples
    blocks = list(io.iter_blocks(path, 4096))
    assert all(b.shape == (2, 4096) for b in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    part = np.concatenate(list(io.iter_blocks(path, 1000, start=123, frames=5000)), axis=1)
    np.testing.assert_array_equal(part, whole[:, 123:5123])
    np.testing.assert_array_equal(io.read(path, start=123, frames=5000).samples, part)


def test_block_writer_matches_write_and_switches_to_float(tmp_path, x):
    path = tmp_path / "bw.wav"
    with io.BlockWriter(path, SR, 2, subtype="PCM_24", tags={"title": "T"}) as w:
        for i in range(0, x.shape[1], 10000):
            w.write(x[:, i:i + 10000])
    assert w.subtype == "PCM_24" and w.frames == x.shape[1]
    a = io.read(path)
    assert a.subtype == "PCM_24" and a.tags["title"] == "T"
    np.testing.assert_allclose(a.samples, x, atol=1.5 / 2**23)
    loud = tmp_path / "bw_loud.wav"
    with io.BlockWriter(loud, SR, 2, subtype="PCM_16") as w:
        w.write(x)
        w.write(x * 2.5)  # only the second block clips: the whole file becomes float
    assert w.subtype == "FLOAT"
    np.testing.assert_array_equal(io.read(loud).samples, np.concatenate([x, x * 2.5], axis=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bw.wav", "bw_loud.wav"]  # no spool


def test_block_writer_failure_leaves_nothing(tmp_path, x):
    path = tmp_path / "fail.wav"
    with pytest.raises(RuntimeError), io.BlockWriter(path, SR, 2) as w:
        w.write(x)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_keeps_old_file_on_error(tmp_path, x):
    path = tmp_path / "keep.wav"
    io.write(path, x, SR)
    before = path.read_bytes()
    bad = x.copy()
    bad[0, 10] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        io.write(path, bad, SR)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_read_never_modifies_input(tmp_path, x):
    path = tmp_path / "ro.flac"
    io.write(path, x, SR)
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    io.read(path)
    list(io.iter_blocks(path, 999))
    io.info(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_stdin_and_stdout(tmp_path, x):
    src = tmp_path / "in.flac"
    io.write(src, x, SR, subtype="PCM_24")
    code = ("import sys; from upsr.audio import io; a = io.read('-'); "
            "sys.stderr.write(a.format + ' ' + a.subtype); "
            "io.write('-', a.samples * 0.5, a.sr, format='WAV', subtype='FLOAT')")
    proc = subprocess.run([sys.executable, "-c", code], input=src.read_bytes(),
                          capture_output=True, check=True)
    assert proc.stderr.decode() == "FLAC PCM_24"
    y, sr = sf.read(_io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    assert sr == SR
    np.testing.assert_allclose(y.T, io.read(src).samples * 0.5, atol=1e-7)


def test_stdin_monkeypatched_and_stdout_needs_format(monkeypatch, tmp_path, x):
    buf = _io.BytesIO()
    sf.write(buf, x.T, SR, format="WAV", subtype="PCM_16")

    class FakeStdin:
        buffer = _io.BytesIO(buf.getvalue())

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    a = io.read("-")
    np.testing.assert_allclose(a.samples, x, atol=1.5 / 2**15)
    with pytest.raises(UsageError, match="explicit format"):
        io.write("-", x, SR)


def _bad_files(tmp_path, x):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    good = tmp_path / "good.flac"
    io.write(good, x, SR)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.flac"
    trunc.write_bytes(data[: len(data) // 2])
    wav = tmp_path / "good.wav"
    io.write(wav, x, SR)
    twav = tmp_path / "trunc.wav"
    twav.write_bytes(wav.read_bytes()[:-1000])
    tiny = tmp_path / "tiny.flac"
    tiny.write_bytes(data[:100])
    nan = tmp_path / "nan.wav"
    bad = x.copy()
    bad[1, 500] = np.nan
    sf.write(nan, bad.T, SR, subtype="FLOAT")
    return {"missing": (tmp_path / "missing.wav", "not found"),
            "empty": (empty, "empty"), "text": (text, "not a readable audio file"),
            "truncated": (trunc, "truncated"), "tiny": (tiny, "truncated"),
            "truncated_wav": (twav, "truncated .* 1000 more bytes"),
            "nan": (nan, "non-finite sample .* at frame 500")}


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "tiny",
                                  "truncated_wav", "nan"])
def test_bad_inputs_raise_one_line_audio_error(tmp_path, x, kind):
    path, pattern = _bad_files(tmp_path, x)[kind]
    with pytest.raises(AudioError, match=pattern) as err:
        io.read(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    with pytest.raises(AudioError):
        list(io.iter_blocks(path, 4096))
    if kind in ("missing", "empty", "text", "truncated_wav"):
        with pytest.raises(AudioError):
            io.info(path)
        assert not io.is_audio(path)


def test_nan_allowed_when_not_checked(tmp_path, x):
    path, _ = _bad_files(tmp_path, x)["nan"]
    a = io.read(path, check_finite=False)
    assert np.isnan(a.samples[1, 500]) and np.isfinite(a.samples[0]).all()


def test_is_audio_by_content_and_extensions(tmp_path, x):
    disguised = tmp_path / "audio.txt"
    sf.write(disguised, x.T, SR, format="WAV")
    assert io.is_audio(disguised)
    assert not io.is_audio(tmp_path)
    assert {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".opus"} <= io.AUDIO_EXTENSIONS
    assert ".raw" not in io.AUDIO_EXTENSIONS


def test_bad_spans_and_shapes(tmp_path, x):
    path = tmp_path / "s.wav"
    io.write(path, x, SR)
    with pytest.raises(UsageError):
        io.read(path, start=x.shape[1] + 1)
    with pytest.raises(UsageError):
        io.write(tmp_path / "t.wav", np.zeros((2, 3, 4), np.float32), SR)
    with pytest.raises(UsageError, match="transposed"):
        io.write(tmp_path / "t.wav", x.T, SR)


def test_block_writer_to_stdout(capsysbinary, x):
    with io.BlockWriter("-", SR, 2, format="FLAC", subtype="PCM_24") as w:
        w.write(x[:, :20000])
        w.write(x[:, 20000:])
    out = capsysbinary.readouterr().out
    y, sr = sf.read(_io.BytesIO(out), dtype="float32", always_2d=True)
    assert sr == SR and w.subtype == "PCM_24"
    np.testing.assert_allclose(y.T, x, atol=1.5 / 2**23)
    with io.BlockWriter("-", SR, 2, format="WAV", subtype="PCM_16") as w:  # spooled path
        w.write(x * 2)
    y, _ = sf.read(_io.BytesIO(capsysbinary.readouterr().out), dtype="float32")
    assert w.subtype == "FLOAT"
    np.testing.assert_array_equal(y.T, x * 2)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])  # spooled and direct paths
def test_block_writer_closed_early_in_a_generator_leaves_nothing(tmp_path, x, subtype):
    def job():
        with io.BlockWriter(tmp_path / "g.wav", SR, 2, subtype=subtype) as w:
            while True:
                w.write((yield))

    gen = job()
    next(gen)
    gen.send(x)
    gen.close()  # GeneratorExit inside the with block: an abandoned file
    assert list(tmp_path.iterdir()) == []


def test_float_request_in_flac_is_an_error_not_16_bit(tmp_path):
    from upsr.errors import UsageError

    x = np.zeros((1, 100), np.float32)
    with pytest.raises(UsageError, match="FLAC cannot store float"):
        io.write(tmp_path / "a.flac", x, 44100, subtype="FLOAT")
    with pytest.raises(UsageError, match="FLAC cannot store float"):
        io.BlockWriter(tmp_path / "b.flac", 44100, 1, subtype="FLOAT")
    assert not list(tmp_path.iterdir())
