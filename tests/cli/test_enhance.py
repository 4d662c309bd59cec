import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from upsr.audio import synth
from upsr.eval.metrics import lsd_lf


def _write(path: Path, x: np.ndarray, sr: int, subtype="PCM_16", **tags):
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", sr, x.shape[0], subtype=subtype) as f:
        for k, v in tags.items():
            setattr(f, k, v)
        f.write(x.T)


def _lr(seconds, sr, channels, cutoff, seed=0):
    return synth.brickwall(synth.music_like(seconds, sr, channels=channels, seed=seed), sr,
                           cutoff)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "in"
    _write(src / "a.wav", _lr(1.0, 44100, 1, 5000), 44100, "PCM_16", title="Song A",
           artist="Band")
    _write(src / "sub" / "b.flac", _lr(1.2, 48000, 2, 8000, 1), 48000, "PCM_24")
    _write(src / "sub" / "deeper" / "c.wav", _lr(0.7, 22050, 2, 4000, 2), 22050, "FLOAT")
    (src / "notes.txt").write_text("not audio, and not named like audio")
    return src


def test_tree_is_mirrored_with_format_depth_channels_and_tags(run_cli, tree, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("enhance", tree, "-o", out, "--report", tmp_path / "r.json")
    assert code == 0, err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a.wav", "sub/b.flac", "sub/deeper/c.wav"]
    a, b, c = (sf.info(str(out / f)) for f in files)
    assert (a.channels, a.subtype, a.samplerate, a.frames) == (1, "PCM_16", 44100, 44100)
    assert (b.channels, b.subtype, b.format, b.samplerate) == (2, "PCM_24", "FLAC", 48000)
    assert (c.channels, c.subtype, c.samplerate) == (2, "FLOAT", 44100)  # sbr lifts to 44.1k
    assert c.frames == round(0.7 * 22050 * 44100 / 22050)
    with sf.SoundFile(str(out / "a.wav")) as f:
        assert f.title == "Song A" and f.artist == "Band"
    rep = json.loads((tmp_path / "r.json").read_text())
    assert {r["status"] for r in rep["files"]} == {"done"}
    assert all(r["cutoff_hz"] for r in rep["files"])
    assert not list(out.rglob(".upsr-tmp-*"))


def test_low_band_is_kept(run_cli, tmp_path):
    x = _lr(2.0, 44100, 1, 6000, 3)
    _write(tmp_path / "x.wav", x, 44100, "FLOAT")
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "o")
    assert code == 0, err
    y, _ = sf.read(str(tmp_path / "o" / "x.wav"), always_2d=True)
    assert lsd_lf(x[0], y[:, 0].astype(np.float32), 44100, 5000) < 0.01

    def hf_over_lf(s):  # energy 6.5-16 kHz over energy 1-6 kHz
        power = np.abs(np.fft.rfft(s)) ** 2
        f = np.fft.rfftfreq(len(s), 1 / 44100)
        return power[(f >= 6500) & (f < 16000)].sum() / power[(f >= 1000) & (f < 6000)].sum()

    assert hf_over_lf(x[0]) < 1e-10  # the input has nothing up there (float rounding only)
    assert hf_over_lf(y[:, 0]) > 1e-4  # the output does: a real band, not rounding (-40 dB)


def test_library_equals_cli(run_cli, tmp_path):
    import upsr

    x = _lr(1.5, 44100, 2, 7000, 4)
    _write(tmp_path / "x.wav", x, 44100, "FLOAT")
    assert run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "o")[0] == 0
    y_cli, _ = sf.read(str(tmp_path / "o" / "x.wav"), always_2d=True, dtype="float32")
    y_lib, sr = upsr.enhance_array(x, 44100, upsr.load_model("sbr"))
    assert sr == 44100
    np.testing.assert_allclose(y_cli.T, y_lib, atol=1e-6)


def test_resume_skip_and_overwrite(run_cli, tree, tmp_path):
    out = tmp_path / "out"
    assert run_cli("enhance", tree, "-o", out)[0] == 0
    target = out / "a.wav"
    before = target.stat().st_mtime_ns
    code, _, err = run_cli("enhance", tree, "-o", out)
    assert code == 0 and "3 exists" in err and target.stat().st_mtime_ns == before
    code, _, err = run_cli("enhance", tree, "-o", out, "--overwrite")
    assert code == 0 and "3 done" in err and target.stat().st_mtime_ns != before


def test_interrupt_leaves_no_partial_files_and_rerun_completes(run_cli, tmp_path, monkeypatch):
    from upsr.infer import engine

    src = tmp_path / "in"
    for i, seconds in enumerate([0.3, 1.0, 1.0]):
        _write(src / f"f{i}.wav", _lr(seconds, 44100, 1, 5000, i), 44100)
    real = engine.Runner.__call__
    calls = {"n": 0}

    def flaky(self, rows, cutoffs):
        calls["n"] += 1
        if calls["n"] == 5:  # round 1: one chunk of each file (f0 done); round 2: f1, f2
            raise KeyboardInterrupt
        return real(self, rows, cutoffs)

    monkeypatch.setattr(engine.Runner, "__call__", flaky)
    code, _, err = run_cli("enhance", src, "-o", tmp_path / "out", "--batch-size", "1",
                           "--chunk-s", "0.3", "--overlap-s", "0.05")
    assert code == 130
    assert err.splitlines()[-1] == ("upsr: error: interrupted: 1 of 3 file(s) finished and kept; "
                                    "no partial file was left; rerun the same command to do "
                                    "the rest")
    out = tmp_path / "out"
    assert not list(out.rglob(".upsr-tmp-*"))
    finished = sorted(p.name for p in out.glob("*.wav"))
    assert finished == ["f0.wav"]
    assert sf.info(str(out / "f0.wav")).frames == round(0.3 * 44100)
    monkeypatch.setattr(engine.Runner, "__call__", real)
    code, _, err = run_cli("enhance", src, "-o", out)
    assert code == 0 and "1 exists" in err and "2 done" in err
    assert sorted(p.name for p in out.glob("*.wav")) == ["f0.wav", "f1.wav", "f2.wav"]


def test_bad_inputs_fail_one_line_each_others_done(run_cli, tmp_path):
    src = tmp_path / "in"
    _write(src / "good.wav", _lr(0.5, 44100, 1, 5000), 44100)
    (src / "empty.wav").write_bytes(b"")
    (src / "text.wav").write_text("hello, I am not a WAV file\n" * 20)
    _write(src / "trunc.flac", _lr(2.0, 44100, 1, 5000), 44100)
    data = (src / "trunc.flac").read_bytes()
    (src / "trunc.flac").write_bytes(data[: len(data) // 2])
    nan = _lr(0.5, 44100, 1, 5000)
    nan[0, 1000] = np.nan
    _write(src / "nan.wav", nan, 44100, "FLOAT")
    inf = _lr(0.5, 44100, 1, 5000)
    inf[0, 10] = np.inf
    _write(src / "inf.wav", inf, 44100, "FLOAT")
    code, _, err = run_cli("enhance", src, "-o", tmp_path / "out")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("upsr: error:")]
    assert len(lines) == 5
    for name in ("empty.wav", "text.wav", "trunc.flac", "nan.wav", "inf.wav"):
        assert sum(name in ln for ln in lines) == 1
    assert "Traceback" not in err
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["good.wav"]


def test_unwritable_output_is_a_setup_error(run_cli, tmp_path):
    _write(tmp_path / "x.wav", _lr(0.3, 44100, 1, 5000), 44100)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", blocker / "out")
    assert code == 1
    assert err == f"upsr: error: -o {blocker / 'out'}: {blocker} is a file, not a folder\n"
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", blocker)
    assert code == 1
    assert err == f"upsr: error: -o {blocker} is a file, not a folder\n"


@pytest.mark.parametrize("sr,channels", [(8000, 1), (192000, 2), (44100, 6)])
def test_rates_and_channel_counts(run_cli, tmp_path, sr, channels):
    x = 0.5 * _lr(0.4, sr, channels, min(3000, sr / 2 * 0.7))
    _write(tmp_path / "x.wav", x, sr, "PCM_24")
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "o")
    assert code == 0, err
    info = sf.info(str(tmp_path / "o" / "x.wav"))
    out_sr = max(sr, 44100)
    assert (info.channels, info.samplerate, info.subtype) == (channels, out_sr, "PCM_24")
    assert info.frames == round(x.shape[1] * out_sr / sr)


def test_bitrate_auto_full_band_copy_and_skip(run_cli, tmp_path):
    full = synth.tilted_noise(1.0, 44100, channels=2, seed=9)
    _write(tmp_path / "in" / "full.wav", full, 44100)
    _write(tmp_path / "in" / "lim.wav", _lr(1.0, 44100, 2, 6000), 44100)
    code, _, err = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o", "--bitrate-auto",
                           "--report", tmp_path / "r.json")
    assert code == 0, err
    assert (tmp_path / "o" / "full.wav").read_bytes() == (tmp_path / "in" / "full.wav"
                                                           ).read_bytes()
    rep = {Path(r["src"]).name: r for r in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert rep["full.wav"]["status"] == "copied" and rep["lim.wav"]["status"] == "done"
    assert rep["lim.wav"]["bitrate_source"] in ("cutoff", "none")
    code, _, _ = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o2", "--bitrate-auto",
                         "--full-band", "skip")
    assert code == 0 and not (tmp_path / "o2" / "full.wav").exists()


def test_dry_run_writes_nothing(run_cli, tree, tmp_path):
    code, out, _ = run_cli("enhance", tree, "-o", tmp_path / "out", "--dry-run")
    assert code == 0 and out.count("->") == 3 and not (tmp_path / "out").exists()


def test_usage_errors(run_cli, tmp_path):
    assert run_cli("enhance", tmp_path / "missing.wav")[0] == 1
    code, _, err = run_cli("enhance", tmp_path, "--model", "nosuch")
    assert code == 1 and "unknown model" in err
    _write(tmp_path / "x.wav", _lr(0.3, 44100, 1, 5000), 44100)
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", "-")
    assert code == 1 and "--format" in err


def test_stdin_to_stdout(tmp_path):
    x = _lr(0.5, 44100, 2, 6000)
    _write(tmp_path / "x.flac", x, 44100, "PCM_24")
    res = subprocess.run([sys.executable, "-m", "upsr", "enhance", "-", "-o", "-", "--format",
                          "wav", "-q"], stdin=open(tmp_path / "x.flac", "rb"),
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode()
    (tmp_path / "y.wav").write_bytes(res.stdout)
    info = sf.info(str(tmp_path / "y.wav"))
    assert (info.channels, info.samplerate, info.frames) == (2, 44100, x.shape[1])


def test_kill_9_leftovers_are_cleaned_and_rerun_completes(tmp_path):
    import os
    import signal
    import time

    src = tmp_path / "in"
    for i in range(2):
        _write(src / f"f{i}.wav", _lr(3.0, 44100, 2, 5000, i), 44100)
    out = tmp_path / "out"
    out.mkdir()
    # a temporary file of a process that no longer exists (as kill -9 leaves behind)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".upsr-tmp-{dead.pid}-abcd.wav"
    stale.write_bytes(b"partial")
    proc = subprocess.Popen([sys.executable, "-m", "upsr", "enhance", str(src), "-o", str(out),
                             "-q", "--chunk-s", "0.5"], stderr=subprocess.PIPE)
    time.sleep(0.5)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob(f".upsr-tmp-{proc.pid}@*")):
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p for p in out.glob("*.wav") if not p.name.startswith(".")]
    for p in finished:  # whatever was renamed into place is complete
        assert sf.info(str(p)).frames == 3 * 44100
    res = subprocess.run([sys.executable, "-m", "upsr", "enhance", str(src), "-o", str(out), "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["f0.wav", "f1.wav"]
    for p in out.iterdir():
        assert sf.info(str(p)).frames == 3 * 44100


def test_bitrate_auto_picks_the_nearest_variant(run_cli, tmp_path, monkeypatch):
    from upsr import checkpoint, models

    mdir = tmp_path / "models"
    for cutoff in (4000, 11000):
        m = models.build("sbr", level_db=float(cutoff) / 1000)
        checkpoint.save(mdir / f"sbr-{cutoff // 1000}k.safetensors", m,
                        variant={"cutoff_hz": cutoff})
    monkeypatch.setenv("UPSR_MODEL_DIR", str(mdir))
    _write(tmp_path / "in" / "x.wav", synth.brickwall(
        synth.tilted_noise(1.0, 44100, channels=1, seed=2), 44100, 4200), 44100)
    code, _, err = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o", "--bitrate-auto",
                           "--report", tmp_path / "r.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())["files"][0]
    assert Path(rec["model"]).name == "sbr-4k.safetensors"
    code, out, _ = run_cli("models", "list", "--json")
    names = {r["name"] for r in json.loads(out)}
    assert {"sbr-4k", "sbr-11k", "apollo", "sbr"} <= names


def test_bitrate_auto_with_only_variants_installed_needs_no_plain_checkpoint(
        run_cli, tmp_path, monkeypatch):
    """`--model apollo --bitrate-auto` with only apollo-4k/apollo-11k installed (no plain
    apollo.safetensors) restores offline with the nearest variant instead of asking for a pull."""
    from upsr import checkpoint, models

    mdir = tmp_path / "models"
    for cutoff in (4000, 11000):
        m = models.build("apollo", feature_dim=16, layer=1)
        checkpoint.save(mdir / f"apollo-{cutoff // 1000}k.safetensors", m,
                        variant={"cutoff_hz": cutoff})
    monkeypatch.setenv("UPSR_MODEL_DIR", str(mdir))
    _write(tmp_path / "in" / "x.wav", synth.brickwall(
        synth.tilted_noise(1.0, 44100, channels=1, seed=2), 44100, 4200), 44100)
    code, _, err = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o", "--bitrate-auto",
                           "--model", "apollo", "--offline", "--report", tmp_path / "r.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())["files"][0]
    assert rec["status"] == "done" and Path(rec["model"]).name == "apollo-4k.safetensors"
    # without --bitrate-auto the plain checkpoint is still required (offline: an error)
    code, _, err = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o2", "--model",
                           "apollo", "--offline")
    assert code == 1 and "apollo" in err


def test_bitrate_auto_sees_the_band_limit_of_long_files(run_cli, tmp_path, monkeypatch):
    from upsr.infer import batch

    monkeypatch.setattr(batch, "EXCERPTS", 4)
    monkeypatch.setattr(batch, "EXCERPT_S", 0.25)  # 2 s file > 4 x 0.25 s: excerpts are used
    x = synth.brickwall(synth.music_like(2.0, 44100, channels=2, seed=6), 44100, 16000)
    _write(tmp_path / "in" / "x.wav", x, 44100)
    code, _, err = run_cli("enhance", tmp_path / "in", "-o", tmp_path / "o", "--bitrate-auto",
                           "--report", tmp_path / "r.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())["files"][0]
    assert rec["status"] == "done"  # not mistaken for full band
    assert 15000 < rec["cutoff_hz"] <= 16100


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_model_is_loaded_once_per_process(run_cli, tree, tmp_path, monkeypatch, jobs):
    """The CLI loads the model to check --model before any work; its own worker reuses that
    load instead of reading the weights a second time (with --jobs the workers are other
    processes, so this one loads it only for the check)."""
    from upsr import models

    calls: list[str] = []
    real = models.load_model

    def counting(ref, *args, **kwargs):
        calls.append(ref)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    code, _, err = run_cli("enhance", tree, "-o", tmp_path / "out", "--jobs", str(jobs))
    assert code == 0, err
    assert calls == ["sbr"]
    assert len(list((tmp_path / "out").rglob("*.*"))) == 3
