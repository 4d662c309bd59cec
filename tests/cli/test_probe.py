import json
import types

import numpy as np
import pytest
import soundfile as sf

from upsr.audio.synth import brickwall, music_like, tilted_noise


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    sr = 44100
    x = tilted_noise(1.0, sr, 2, -3.0, seed=0)
    sf.write(root / "full.wav", x.T, sr, subtype="PCM_16")
    (root / "sub" / "deep").mkdir(parents=True)
    sf.write(root / "sub" / "cut8k.flac", brickwall(x, sr, 8000).T, sr, subtype="PCM_24")
    import lameenc
    enc = lameenc.Encoder()
    enc.set_bit_rate(128)
    enc.set_in_sample_rate(sr)
    enc.set_channels(2)
    enc.set_quality(2)
    (root / "sub" / "deep" / "c.mp3").write_bytes(
        enc.encode((music_like(1.0, sr, 2, seed=1).T * 32767).astype("<i2").tobytes())
        + enc.flush())
    (root / "notes.txt").write_text("not audio, not probed")
    return root


def test_probe_json_walks_folders(run_cli, tree):
    code, out, err = run_cli("probe", "--json", tree)
    assert code == 0, err
    rows = {r["path"].split("/")[-1]: r for r in json.loads(out)}
    assert set(rows) == {"full.wav", "cut8k.flac", "c.mp3"}
    full, cut, mp3 = rows["full.wav"], rows["cut8k.flac"], rows["c.mp3"]
    assert (full["format"], full["subtype"], full["sr"], full["channels"]) == (
        "WAV", "PCM_16", 44100, 2)
    assert full["duration_s"] == pytest.approx(1.0)
    assert full["band_limited"] is False and full["bitrate_source"] == "none"
    assert cut["band_limited"] is True
    assert abs(cut["band_edge_hz"] / 8000 - 1) < 0.02
    assert cut["rolloff_hz"] < cut["band_edge_hz"]
    assert cut["bitrate_source"] == "cutoff" and cut["codec"] is None
    assert (mp3["codec"], mp3["bitrate_kbps"], mp3["bitrate_source"]) == ("MP3", 128.0,
                                                                          "container")
    assert mp3["band_limited"] is True and abs(mp3["band_edge_hz"] / 16820 - 1) < 0.02
    peak = 20 * np.log10(np.max(np.abs(sf.read(tree / "full.wav")[0])))
    assert full["peak_dbfs"] == pytest.approx(peak, abs=1e-6)
    assert -40 < full["loudness_lufs"] < 0


def test_probe_table(run_cli, tree):
    code, out, _ = run_cli("probe", tree / "full.wav", tree / "sub")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["file", "format", "rate", "ch"]
    assert len(lines) == 4
    by_name = {line.split()[0].split("/")[-1]: line for line in lines[1:]}
    assert by_name["cut8k.flac"].rstrip().endswith("yes")
    assert by_name["full.wav"].rstrip().endswith("no")
    assert "MP3 128k" in by_name["c.mp3"]
    code, out, _ = run_cli("probe", "-q", tree)
    assert code == 0 and out == ""


def test_bad_files_one_line_each_exit_2(run_cli, tree, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00junk")
    (tmp_path / "empty.flac").write_bytes(b"")
    code, out, err = run_cli("probe", "--json", tmp_path, tree / "full.wav")
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("upsr: error:") for line in lines)
    assert {n for n in ("bad.wav", "empty.flac") if any(n in x for x in lines)
            } == {"bad.wav", "empty.flac"}
    assert [r["path"].split("/")[-1] for r in json.loads(out)] == ["full.wav"]


def test_a_missing_path_is_a_setup_error_before_any_work(run_cli, tree, tmp_path):
    # the rule of every command (README: 1 = usage or set-up error, found before any work)
    code, out, err = run_cli("probe", "--json", tree / "full.wav", tmp_path / "missing.wav")
    assert code == 1
    assert err == f"upsr: error: {tmp_path / 'missing.wav'}: no such file or folder\n"
    assert out == ""


def test_short_and_long_files(run_cli, tmp_path):
    sr = 8000
    sf.write(tmp_path / "short.wav", np.full(400, 0.1, dtype=np.float32), sr)  # 50 ms
    long = 0.05 * tilted_noise(70.0, sr, 1, 0.0, seed=2)[0]
    spike_at = int(2.0 * sr)  # between the first two excerpts (centres at 2.9 s, 8.75 s)
    long[spike_at] = 0.9
    sf.write(tmp_path / "long.wav", long, sr, subtype="FLOAT")
    code, out, err = run_cli("probe", "--json", tmp_path)
    assert code == 0, err
    rows = {r["path"].split("/")[-1]: r for r in json.loads(out)}
    assert rows["short.wav"]["loudness_lufs"] is None  # shorter than one 400 ms block
    lg = rows["long.wav"]
    assert lg["excerpts"] == 12 and lg["analysed_s"] == pytest.approx(60.0)
    assert lg["peak_dbfs"] == pytest.approx(20 * np.log10(0.9), abs=1e-4)  # exact peak
    code, out, _ = run_cli("probe", tmp_path / "short.wav")
    assert code == 0 and "n/a" in out


def test_probe_stdin(run_cli, tree, monkeypatch):
    import io
    import sys

    data = (tree / "sub" / "cut8k.flac").read_bytes()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    code, out, err = run_cli("probe", "--json", "-")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["path"] == "-" and row["format"] == "FLAC" and row["band_limited"] is True
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"junk")))
    code, out, err = run_cli("probe", "-")
    assert code == 2 and err.startswith("upsr: error: <stdin>: ") and err.count("\n") == 1


def test_a_codec_is_named_only_when_the_container_says_so(run_cli, tmp_path):
    import io

    from upsr.audio.resample import resample

    sr = 44100
    x = music_like(2.0, sr, channels=2, seed=1)
    buf = io.BytesIO()
    sf.write(buf, x.T, sr, format="OGG", subtype="VORBIS", compression_level=0.8)
    (tmp_path / "v.ogg").write_bytes(buf.getvalue())
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32")
    sf.write(tmp_path / "vorbis-decoded.wav", decoded, sr, subtype="FLOAT")
    up = resample(music_like(1.0, 22050, channels=2, seed=2), 22050, sr)  # plain upsampling
    sf.write(tmp_path / "upsampled.wav", up.T, sr, subtype="FLOAT")
    code, out, err = run_cli("probe", "--json", tmp_path)
    assert code == 0, err
    rows = {r["path"].split("/")[-1]: r for r in json.loads(out)}
    assert (rows["v.ogg"]["codec"], rows["v.ogg"]["bitrate_source"]) == ("Vorbis", "container")
    for name in ("vorbis-decoded.wav", "upsampled.wav"):
        r = rows[name]
        assert r["band_limited"] is True, name
        # their edges match LAME rows (16.8 kHz ~ 128k, 10.8 kHz ~ 64k), yet no MP3 was involved
        assert r["bitrate_candidates"], name
        assert (r["codec"], r["bitrate_source"]) == (None, "cutoff"), name
    code, out, _ = run_cli("probe", tmp_path)
    by_name = {line.split()[0].split("/")[-1]: line for line in out.splitlines()[1:]}
    assert "Vorbis" in by_name["v.ogg"]
    for name in ("vorbis-decoded.wav", "upsampled.wav"):
        edge = rows[name]["band_edge_hz"]
        assert f"low-pass at {edge / 1000:.1f} kHz" in by_name[name]
        assert "MP3" not in by_name[name]
