import csv
import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from upsr.audio.synth import brickwall, tilted_noise
from upsr.eval.metrics import lsd


@pytest.fixture
def trees(tmp_path):
    """ref/ (clean), est/ (restored, other suffixes, one at another rate), lr/ (8 kHz cut)."""
    sr = 16000
    ref, est, lr = tmp_path / "ref", tmp_path / "est", tmp_path / "lr"
    for d in (ref / "a", est / "a", lr / "a", lr):
        d.mkdir(parents=True, exist_ok=True)
    x = tilted_noise(1.0, sr, 2, -3.0, seed=0)
    y = tilted_noise(1.0, sr, 1, -3.0, seed=1)
    sf.write(ref / "a" / "x.flac", x.T, sr, subtype="PCM_24")
    same = sf.read(ref / "a" / "x.flac", dtype="float32")[0]  # 24-bit values, exact in float
    sf.write(est / "a" / "x.wav", same, sr, subtype="FLOAT")  # identical: LSD 0
    sf.write(lr / "a" / "x.wav", brickwall(x, sr, 4000).T, sr, subtype="FLOAT")
    sf.write(ref / "y.wav", y.T, sr, subtype="FLOAT")
    half = brickwall(y, sr, 4000)[:, ::2]  # "restored" at 8 kHz: resampled back by eval
    sf.write(est / "y.flac", half.T, sr // 2, subtype="PCM_24")
    sf.write(lr / "y.wav", half.T, sr // 2, subtype="FLOAT")
    sf.write(ref / "z_only_ref.wav", y.T, sr)
    sf.write(est / "w_only_est.wav", y.T, sr)
    return ref, est, lr


def test_eval_pairs_scores_and_writes_csv_json(run_cli, trees, tmp_path):
    ref, est, _ = trees
    code, out, err = run_cli("eval", ref, est, "--cutoff", "4000", "--csv", tmp_path / "s.csv",
                             "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "unpaired reference: z_only_ref" in err and "unpaired estimate: w_only_est" in err
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "s.csv"))}
    assert set(rows) == {"a/x", "y"}
    assert float(rows["a/x"]["lsd"]) == 0.0 and float(rows["a/x"]["si_snr"]) >= 150.0
    assert float(rows["y"]["lsd_hf"]) > 1.0 > float(rows["y"]["lsd_lf"])
    assert rows["y"]["sr"] == "16000" and rows["a/x"]["channels"] == "2"
    report = json.load(open(tmp_path / "s.json"))
    assert report["summary"]["lsd"]["n"] == 2
    assert report["settings"]["n_fft"] == 2048 and report["settings"]["cutoff_hz"] == 4000.0
    assert report["unpaired"] == {"ref_only": ["z_only_ref"], "est_only": ["w_only_est"],
                                  "ambiguous": []}
    mean = np.mean([float(rows[k]["lsd"]) for k in rows])
    assert report["summary"]["lsd"]["mean"] == pytest.approx(mean)
    lines = out.splitlines()
    assert lines[1].split() == ["metric", "mean", "std", "n"]
    assert any(line.split()[0] == "lsd_hf" for line in lines[2:])


def test_eval_lr_dir_sets_cutoff_and_nuwave_variant(run_cli, trees, tmp_path):
    ref, est, lr = trees
    code, out, err = run_cli("eval", ref, est, "--lr-dir", lr, "--lsd", "nuwave",
                             "--json", tmp_path / "s.json", "--per-file")
    assert code == 0, err
    report = json.load(open(tmp_path / "s.json"))
    files = {r["file"]: r for r in report["files"]}
    assert abs(files["a/x"]["cutoff_hz"] / 4000 - 1) < 0.02  # band edge of the degraded input
    assert abs(files["y"]["cutoff_hz"] / 4000 - 1) < 0.02
    assert report["settings"]["n_fft"] == 1024 and report["settings"]["hop"] == 256
    y_ref = sf.read(ref / "y.wav", always_2d=True)[0].T
    from upsr.audio.resample import resample
    y_est = resample(sf.read(est / "y.flac", always_2d=True, dtype="float32")[0].T, 8000, 16000)
    assert files["y"]["lsd"] == pytest.approx(lsd(y_ref, y_est, 1024, 256), rel=1e-6)
    assert out.splitlines()[0].split()[:2] == ["file", "lsd"]


def test_eval_bad_files_and_length_warning(run_cli, trees):
    ref, est, _ = trees
    (est / "z_only_ref.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    x = sf.read(ref / "a" / "x.flac")[0]
    sf.write(est / "a" / "x.wav", x[:-800], 16000)  # 50 ms short
    code, out, err = run_cli("eval", ref, est)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("upsr: error:")]
    assert len(errors) == 1 and "z_only_ref.wav" in errors[0]
    assert "lengths differ by 50.0 ms" in err
    assert "2 file(s) scored, 1 failed" in out


def test_eval_usage_errors(run_cli, trees, tmp_path):
    ref, _, _ = trees
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "other" / "nothing_matches.wav", np.zeros(100), 16000)
    code, _, err = run_cli("eval", ref, tmp_path / "other")
    assert code == 1 and "no files pair up" in err
    code, _, err = run_cli("eval", ref, tmp_path / "missing")
    assert code == 1 and err.count("\n") == 1
    code, _, err = run_cli("eval", ref, ref, "--lsd", "ssr")
    assert code == 1 and "unknown --lsd" in err


def test_eval_optional_metric_without_package_is_one_line(run_cli, trees, monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # import pesq -> ImportError
    ref, est, _ = trees
    code, out, err = run_cli("eval", ref, est, "--pesq")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "pip install 'upsr[metrics]'" in err


def test_eval_optional_metric_plumbing(run_cli, trees, tmp_path, monkeypatch):
    """A stand-in pystoi module: scores reach the CSV, one value per channel is averaged,
    and a failure inside the package fails that file only (exit 2, one line)."""
    calls = []

    def fake_stoi(ref, est, fs, extended=False):
        calls.append((ref.shape, fs, extended))
        if fs != 16000:
            raise ValueError("boom\nsecond line")
        return 0.5 + 0.1 * len(calls)

    monkeypatch.setitem(sys.modules, "pystoi", types.SimpleNamespace(stoi=fake_stoi))
    ref, est, _ = trees
    code, _, err = run_cli("eval", ref, est, "--stoi", "--csv", tmp_path / "s.csv")
    assert code == 0, err
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "s.csv"))}
    assert float(rows["a/x"]["stoi"]) == pytest.approx((0.6 + 0.7) / 2)  # 2 channels
    assert float(rows["y"]["stoi"]) == pytest.approx(0.8)
    assert [c[1:] for c in calls] == [(16000, False)] * 3
    sf.write(ref / "w_only_est.wav", np.zeros((8000, 1)), 8000)
    code, _, err = run_cli("eval", ref, est, "--estoi")
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line] == [
        "upsr: error: w_only_est: estoi failed: ValueError: boom"]


def test_eval_two_files(run_cli, trees):
    ref, est, _ = trees
    code, out, err = run_cli("eval", ref / "a" / "x.flac", est / "a" / "x.wav")
    assert code == 0, err
    assert "1 file(s) scored" in out
