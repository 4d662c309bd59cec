"""``upsr degrade`` on generated trees: determinism, --jobs, resume, mixed inputs, bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from upsr.audio.resample import out_frames
from upsr.audio.synth import music_like

SPEC = ["--lowpass", "cheby1,ellip,butter,boxcar:2-10:2k-8k", "--mp3", "32,64,128"]


def make_tree(root: Path) -> Path:
    """Mixed formats, rates, channel counts and depths in nested folders."""
    src = root / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    sf.write(src / "a.wav", music_like(0.5, 44100, 2, seed=1).T, 44100, subtype="PCM_16")
    sf.write(src / "sub" / "b.flac", music_like(0.4, 48000, 1, seed=2).T, 48000,
             subtype="PCM_24")
    sf.write(src / "sub" / "deeper" / "c.wav", music_like(0.3, 32000, 2, seed=3).T, 32000,
             subtype="FLOAT")
    sf.write(src / "sub" / "d.aiff", music_like(0.3, 44100, 1, seed=4).T, 44100)
    return src


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("degrade"))


def test_same_seed_same_bytes_whatever_jobs(tree, tmp_path, run_cli):
    before = snapshot(tree)
    src_mtimes = mtimes(tree)
    outs = []
    for name, jobs in (("one", "1"), ("two", "1"), ("par", "2")):
        out = tmp_path / name
        code, _, err = run_cli("degrade", tree, out, *SPEC, "--seed", "7", "--jobs", jobs)
        assert code == 0, err
        outs.append(snapshot(out))
    assert outs[0] == outs[1] == outs[2]
    assert set(outs[0]) == {"degrade.json", "manifest.jsonl"} | {
        f"{side}/{stem}.wav" for side in ("hr", "lr")
        for stem in ("a", "sub/b", "sub/deeper/c", "sub/d")}
    # sources are never modified (bytes and mtimes)
    assert snapshot(tree) == before and mtimes(tree) == src_mtimes
    # another seed draws other parameters
    code, _, _ = run_cli("degrade", tree, tmp_path / "other", *SPEC, "--seed", "8")
    assert code == 0
    assert snapshot(tmp_path / "other")["manifest.jsonl"] != outs[0]["manifest.jsonl"]


def test_manifest_records_every_draw_and_pairs_are_aligned(tree, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("degrade", tree, out, *SPEC, "--seed", "3", "-q")
    assert code == 0 and err == ""
    recs = manifest(out)
    assert [r["hr"] for r in recs] == sorted(r["hr"] for r in recs)  # sorted by path
    assert [r["source"] for r in recs] == ["a.wav", "sub/b.flac", "sub/d.aiff",
                                           "sub/deeper/c.wav"]
    for r in recs:
        p = r["params"]
        assert p["lowpass_type"] in ("cheby1", "ellip", "butter", "boxcar")
        assert 2000 <= p["lowpass_cutoff_hz"] <= 8000
        assert p["lowpass_order"] is None if p["lowpass_type"] == "boxcar" else \
            2 <= p["lowpass_order"] <= 10
        assert p["mp3_kbps"] in (32, 64, 128)
        assert abs(p["mp3_kbps_measured"] - p["mp3_kbps"]) < 0.25 * p["mp3_kbps"]
        assert r["lag"] == 0
        hr, sr_hr = sf.read(out / r["hr"], always_2d=True)
        lr, sr_lr = sf.read(out / r["lr"], always_2d=True)
        src_info = sf.info(tree / r["source"])
        assert sr_hr == sr_lr == r["hr_rate"] == r["lr_rate"] == src_info.samplerate
        assert hr.shape == lr.shape == (src_info.frames, src_info.channels)
        # the hr side is the clean source; the lr side lost what lies above the cut-off
        src, _ = sf.read(tree / r["source"], always_2d=True)
        np.testing.assert_allclose(hr, src, atol=1e-6)
        spec = np.abs(np.fft.rfft(lr, axis=0)) ** 2
        f = np.fft.rfftfreq(lr.shape[0], 1.0 / sr_lr)
        above = spec[f > 1.5 * p["lowpass_cutoff_hz"]].sum() / spec.sum()
        assert above < 2e-3, (r["lr"], p, above)
    # the record is enough to rebuild lr from hr with the library call
    import upsr

    r = recs[0]
    hr, _ = sf.read(out / r["hr"], always_2d=True, dtype="float32")
    lr, _ = sf.read(out / r["lr"], always_2d=True, dtype="float32")
    spec = json.loads((out / "degrade.json").read_text())["spec"]
    again, sr, params = upsr.degrade_array(hr.T, r["hr_rate"], spec, seed=r["seed"])
    assert sr == r["lr_rate"] and params == r["params"]
    np.testing.assert_array_equal(again, lr.T)


def test_resume_redoes_only_missing_pairs(tree, tmp_path, run_cli):
    out = tmp_path / "out"
    args = ("degrade", tree, out, *SPEC, "--segment", "0.1", "--seed", "1")
    assert run_cli(*args)[0] == 0
    first = snapshot(out)
    assert "hr/a_0004.wav" in first and "hr/a_0005.wav" not in first  # 0.5 s -> 5 segments
    t0 = mtimes(out)
    # complete set: nothing rewritten at all
    code, _, err = run_cli(*args)
    assert code == 0 and "0 pair(s) written" in err
    assert mtimes(out) == t0
    # one lr file lost: only that pair is made again, byte-identical
    (out / "lr" / "sub" / "b_0002.wav").unlink()
    code, _, err = run_cli(*args)
    assert code == 0 and "1 pair(s) written" in err
    t1 = mtimes(out)
    changed = {k for k in t0 if t1.get(k) != t0[k]}
    assert changed <= {"lr/sub/b_0002.wav", "hr/sub/b_0002.wav", "manifest.jsonl"}
    assert "lr/sub/b_0002.wav" in changed
    assert snapshot(out) == first
    # a stale manifest line (its files gone) and a half-written one are repaired
    (out / "hr" / "a_0001.wav").unlink()
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"hr": "hr/zz')
    # ... and so are the temporary files of a killed run (pid 99999999 does not exist)
    stale = out / "lr" / "sub" / ".upsr-tmp-99999999-abc.wav"
    stale.write_bytes(b"partial")
    assert run_cli(*args)[0] == 0
    assert snapshot(out) == first and not stale.exists()


def test_segments_hr_rate_mono_flac_and_resample(tree, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("degrade", tree, out, "--lowpass", "cheby1:8:4k",
                           "--resample", "11025", "--segment", "0.15", "--hr-rate", "44100",
                           "--mono", "--format", "flac")
    assert code == 0, err
    recs = manifest(out)
    seg = round(0.15 * 44100)
    for r in recs:
        hr, sr_hr = sf.read(out / r["hr"], always_2d=True)
        lr, sr_lr = sf.read(out / r["lr"], always_2d=True)
        assert r["hr"].endswith(".flac") and sf.info(out / r["hr"]).format == "FLAC"
        assert (sr_hr, sr_lr) == (44100, 11025) == (r["hr_rate"], r["lr_rate"])
        assert hr.shape == (seg, 1) and lr.shape == (out_frames(seg, 44100, 11025), 1)
        assert r["start_frame"] == r["segment"] * seg
        assert r["lag"] == 0
    # 32 kHz c.wav (0.3 s) -> 13230 frames at 44.1 kHz -> 2 segments of 6615
    names = [r["hr"] for r in recs if r["source"] == "sub/deeper/c.wav"]
    assert names == ["hr/sub/deeper/c_0000.flac", "hr/sub/deeper/c_0001.flac"]


def test_bad_inputs_are_reported_and_skipped(tree, tmp_path, run_cli):
    src = tmp_path / "src"
    src.mkdir()
    for p in tree.rglob("*.wav"):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "empty.wav").write_bytes(b"")
    (src / "text.wav").write_text("this is not audio\n")
    sf.write(src / "trunc.flac", music_like(1.0, 44100, 2, seed=9).T, 44100)
    data = (src / "trunc.flac").read_bytes()
    (src / "trunc.flac").write_bytes(data[: len(data) // 2])
    bad = music_like(0.2, 44100, 1, seed=5)
    bad[0, 100] = np.nan
    sf.write(src / "nan.wav", bad.T, 44100, subtype="FLOAT")
    out = tmp_path / "out"
    code, _, err = run_cli("degrade", src, out, *SPEC)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("upsr: error:")]
    assert len(lines) == 4
    for name in ("empty.wav", "text.wav", "trunc.flac", "nan.wav"):
        assert sum(name in ln for ln in lines) == 1, (name, err)
    assert "Traceback" not in err
    made = {p.relative_to(out).as_posix() for p in out.rglob("*.wav")}
    assert made == {"hr/a.wav", "lr/a.wav", "hr/c.wav", "lr/c.wav"}
    assert [r["source"] for r in manifest(out)] == ["a.wav", "c.wav"]


def test_usage_errors_dry_run_and_settings_guard(tree, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("degrade", tree, out, "--lowpass", "cheby1:99:4k")
    assert code == 1 and "--lowpass ORDER" in err and len(err.splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli("degrade", tree, out, "--mp3", "100")
    assert code == 1 and "--mp3 KBPS" in err
    code, _, err = run_cli("degrade", tree, tree, "--mp3", "64")
    assert code == 1 and "source folder" in err
    # a cut-off above a file's Nyquist fails that file only
    code, _, err = run_cli("degrade", tree, tmp_path / "nyq", "--lowpass", "cheby1:8:18k",
                           "--dry-run")
    assert code == 2 and "c.wav" in err and "Nyquist" in err
    code, stdout, _ = run_cli("degrade", tree, out, *SPEC, "--segment", "0.2", "--dry-run")
    assert code == 0 and not out.exists()
    assert "make\ta.wav\thr/a_0000.wav\tlr/a_0000.wav" in stdout.splitlines()
    assert run_cli("degrade", tree, out, "--mp3", "64")[0] == 0
    code, _, err = run_cli("degrade", tree, out, "--mp3", "128")
    assert code == 1 and "other settings" in err


def test_output_inside_source_is_not_walked(tree, tmp_path, run_cli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.wav").write_bytes((tree / "a.wav").read_bytes())
    digest = hashlib.sha256((src / "a.wav").read_bytes()).hexdigest()
    for _ in range(2):  # the second run must not pick up OUT/hr/a.wav as a source
        code, _, err = run_cli("degrade", src, src / "pairs", "--mp3", "64")
        assert code == 0, err
    assert [r["source"] for r in manifest(src / "pairs")] == ["a.wav"]
    assert hashlib.sha256((src / "a.wav").read_bytes()).hexdigest() == digest


def test_steps_compose_in_the_order_given(tmp_path, run_cli):
    from upsr.audio.filters import lowpass
    from upsr.audio.resample import resample

    src = tmp_path / "src"
    src.mkdir()
    x = music_like(0.5, 44100, 1, seed=7)
    sf.write(src / "a.wav", x.T, 44100, subtype="FLOAT")
    lp, rs = ["--lowpass", "butter:4:6000"], ["--resample", "16000"]
    assert run_cli("degrade", src, tmp_path / "rl", *rs, *lp, "--seed", "3")[0] == 0
    assert run_cli("degrade", src, tmp_path / "lr", *lp, *rs, "--seed", "3")[0] == 0
    got_rl, sr_rl = sf.read(tmp_path / "rl" / "lr" / "a.wav", dtype="float32", always_2d=True)
    got_lr, sr_lr = sf.read(tmp_path / "lr" / "lr" / "a.wav", dtype="float32", always_2d=True)
    assert sr_rl == sr_lr == 16000
    # references built from the primitives in each order (the filter runs at the rate it sees)
    want_rl = lowpass(resample(x, 44100, 16000), 16000, 6000.0, kind="butter", order=4,
                      zero_phase=True)
    want_lr = resample(lowpass(x, 44100, 6000.0, kind="butter", order=4, zero_phase=True),
                       44100, 16000)
    np.testing.assert_allclose(got_rl.T, want_rl, atol=1e-6)
    np.testing.assert_allclose(got_lr.T, want_lr, atol=1e-6)
    assert np.max(np.abs(want_rl - want_lr)) > 1e-3  # the two orders really differ here
    rec_rl = json.loads((tmp_path / "rl" / "manifest.jsonl").read_text())
    rec_lr = json.loads((tmp_path / "lr" / "manifest.jsonl").read_text())
    assert rec_rl["params"]["steps"] == ["resample", "lowpass"]
    assert "steps" not in rec_lr["params"]  # the default order: manifests as before
    settings = json.loads((tmp_path / "rl" / "degrade.json").read_text())
    assert settings["spec"]["steps"] == "resample,lowpass"
    # a rerun in the other order into the same folder is refused (other settings)
    code, _, err = run_cli("degrade", src, tmp_path / "rl", *lp, *rs, "--seed", "3")
    assert code == 1 and "other settings" in err


def test_a_lowpass_after_resample_must_fit_the_new_rate(tmp_path, run_cli):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", music_like(0.2, 44100, 1, seed=1).T, 44100)
    code, _, err = run_cli("degrade", src, tmp_path / "o", "--resample", "8000",
                           "--lowpass", "butter:4:5000")
    assert code == 1
    assert err.startswith("upsr: error: --lowpass CUTOFF: 5000 Hz is not below the Nyquist")
    assert not (tmp_path / "o").exists()
