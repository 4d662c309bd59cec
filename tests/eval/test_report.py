import csv
import io
import json
import logging

import numpy as np
import pytest

from upsr.errors import AudioError, UsageError
from upsr.eval import report


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_pairing_ignores_suffix_and_reports_leftovers(tmp_path):
    ref, est = tmp_path / "ref", tmp_path / "est"
    for p in ("a/b.flac", "a/c.wav", "d.wav", "x/only_ref.wav", "dup.wav", "dup.flac",
              ".hidden.wav", "notes.txt"):
        _touch(ref / p)
    for p in ("a/b.wav", "a/c.flac", "d.wav", "only_est.ogg", "dup.wav"):
        _touch(est / p)
    pairing = report.pair_files(ref, est)
    assert [(k, r.name, e.name) for k, r, e in pairing.pairs] == [
        ("a/b", "b.flac", "b.wav"), ("a/c", "c.wav", "c.flac"), ("d", "d.wav", "d.wav")]
    assert pairing.ref_only == ["x/only_ref"]
    assert pairing.est_only == ["only_est"]
    assert pairing.ambiguous == ["dup"]
    with pytest.raises(UsageError):
        report.pair_files(ref, tmp_path / "missing")


def test_align_resamples_crops_and_warns(caplog):
    ref = np.zeros((2, 16000), dtype=np.float32)
    est = np.zeros((2, 8010), dtype=np.float32)  # 8 kHz, 1.25 ms longer: silent crop
    with caplog.at_level(logging.WARNING, logger="upsr"):
        r, e = report.align(ref, 16000, est, 8000, "f")
    assert r.shape == e.shape == (2, 16000) and not caplog.records
    with caplog.at_level(logging.WARNING, logger="upsr"):
        r, e = report.align(ref, 16000, est[:, :7000], 8000, "f")
    assert r.shape == (2, 14000) and "lengths differ by 125.0 ms" in caplog.text
    with pytest.raises(AudioError, match="channel count"):
        report.align(ref, 16000, est[:1], 8000, "f")


def test_summary_csv_and_json():
    rows = [{"file": f"f{i}", "ref": "r", "est": "e", "sr": 16000, "channels": 1,
             "seconds": 1.0, "cutoff_hz": None, "lsd": v, "si_snr": 2 * v}
            for i, v in enumerate([1.0, 2.0, 4.0])]
    rows[0]["lsd_hf"] = 3.0
    summary = report.summarize(rows)
    assert summary["lsd"]["mean"] == pytest.approx(7 / 3)
    assert summary["lsd"]["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert summary["lsd_hf"] == {"mean": 3.0, "std": 0.0, "n": 1}
    parsed = list(csv.DictReader(io.StringIO(report.csv_text(rows))))
    assert [float(r["lsd"]) for r in parsed] == [1.0, 2.0, 4.0]
    assert parsed[1]["lsd_hf"] == ""
    text = report.json_text({"x": float("inf"), "y": np.float32(1.5), "rows": rows})
    assert json.loads(text)["x"] is None and json.loads(text)["y"] == 1.5
    table = report.summary_table(summary).splitlines()
    assert table[0].split() == ["metric", "mean", "std", "n"]
    assert table[1].split() == ["lsd", "2.333", "1.528", "3"]


def test_score_arrays_columns():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 8000))
    est = ref + 0.1 * rng.standard_normal((1, 8000))
    cols = report.score_arrays(ref, est, 16000)
    assert set(cols) == {"lsd", "si_snr", "snr", "sdr"}
    cols = report.score_arrays(ref, est, 16000, cutoff_hz=4000.0, lsd_variant="nuwave")
    assert set(cols) == {"lsd", "lsd_hf", "lsd_lf", "si_snr", "snr", "sdr"}
    with pytest.raises(UsageError):
        report.score_arrays(ref, est, 16000, lsd_variant="ssr")
