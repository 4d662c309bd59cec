"""``upsr enhance``: the plan is the truth (dry run = run, names kept apart, per-file times,
progress in seconds of audio) and decoder chatter stays off stderr without -v."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from upsr.audio import synth

SR = 44100
WORDS = {"restore": "done", "exists, skip": "exists", "full band, copy": "copied",
         "full band, skip": "skipped-full-band"}


def _write(path: Path, x: np.ndarray, sr: int = SR, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.T, sr, **kw)


def _limited(seconds: float, cutoff: float, seed: int = 0, channels: int = 2) -> np.ndarray:
    return synth.brickwall(synth.music_like(seconds, SR, channels=channels, seed=seed), SR,
                           cutoff)


def _mp3_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x.T, sr, format="MP3")  # libsndfile's LAME: writes the Xing/Info frame
    return buf.getvalue()


def _plan(out: str) -> dict[str, tuple[str, str]]:
    """dry-run lines 'SRC -> DST (STATE[, cut-off ...])' -> {src name: (dst name, status)}."""
    plan = {}
    for line in out.splitlines():
        src, rest = line.split(" -> ")
        dst, state = rest.split(" (", 1)
        word = state.rstrip(")").split(", cut-off")[0]
        plan[Path(src).name] = (Path(dst).name, WORDS.get(word, word))
    return plan


@pytest.fixture
def mixed(tmp_path):
    """Full-band and band-limited files, a real MP3, and x.flac / x.mp3 / x.wav sharing a stem."""
    src = tmp_path / "in"
    _write(src / "full.wav", 0.3 * synth.tilted_noise(0.5, SR, channels=2, seed=1),
           subtype="PCM_16")
    _write(src / "full.flac", 0.3 * synth.tilted_noise(0.5, SR, channels=1, seed=7),
           subtype="PCM_16")
    _write(src / "lim.wav", _limited(0.5, 6000, 2), subtype="PCM_16")
    _write(src / "x.flac", _limited(0.5, 7000, 3), subtype="PCM_24")
    (src / "x.mp3").write_bytes(_mp3_bytes(_limited(0.5, 16000, 4)))
    _write(src / "x.wav", _limited(0.3, 5000, 5), subtype="PCM_16")
    return src


def test_dry_run_makes_the_runs_decisions(run_cli, mixed, tmp_path):
    out = tmp_path / "out"
    args = ("enhance", mixed, "-o", out, "--bitrate-auto", "--format", "wav")
    code, plan_text, err = run_cli(*args, "--dry-run")
    assert code == 0, err
    assert not out.exists()
    plan = _plan(plan_text)
    assert plan["full.wav"] == ("full.wav", "copied")  # not "restore": the run copies it
    assert plan["full.flac"] == ("full.flac", "copied")  # a copy keeps its own name
    code, _, err = run_cli(*args, "--report", tmp_path / "r.json")
    assert code == 0, err
    done = {Path(r["src"]).name: (Path(r["dst"]).name, r["status"])
            for r in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert done == plan
    # and the rerun's plan is what the rerun does: everything exists
    code, plan_text, _ = run_cli(*args, "--dry-run")
    assert {s for _, s in _plan(plan_text).values()} == {"exists"}
    code, _, err = run_cli(*args)
    assert code == 0 and f"upsr: {len(plan)} exists" in err


def test_inputs_sharing_a_stem_never_collide(run_cli, mixed, tmp_path):
    code, plan_text, err = run_cli("enhance", mixed, "-o", tmp_path / "out", "--dry-run")
    assert code == 0, err
    names = {src: dst for src, (dst, _) in _plan(plan_text).items()}
    # the input whose extension is the output's keeps the plain name; the other keeps its own
    assert names["x.flac"] == "x.flac" and names["x.mp3"] == "x.mp3.flac"
    assert names["x.wav"] == "x.wav"
    assert run_cli("enhance", mixed, "-o", tmp_path / "out", "--dry-run")[1] == plan_text
    code, plan_text, err = run_cli("enhance", mixed, "-o", tmp_path / "w", "--format", "wav",
                                   "--dry-run")
    assert code == 0, err
    names = {src: dst for src, (dst, _) in _plan(plan_text).items()}
    assert (names["x.flac"], names["x.mp3"], names["x.wav"]) == ("x.flac.wav", "x.mp3.wav",
                                                                  "x.wav")
    code, _, err = run_cli("enhance", mixed / "x.flac", mixed / "x.mp3", mixed / "x.wav",
                           "-o", tmp_path / "w", "--format", "wav")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["x.flac.wav", "x.mp3.wav",
                                                                  "x.wav"]
    assert sf.info(str(tmp_path / "w" / "x.wav")).duration == pytest.approx(0.3)


def test_report_times_are_per_file(run_cli, tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        _write(src / f"f{i}.wav", _limited(1.0, 5000, i, channels=1), subtype="FLOAT")
    t0 = time.perf_counter()
    code, _, err = run_cli("enhance", src, "-o", tmp_path / "out", "--chunk-s", "0.4",
                           "--report", tmp_path / "r.json")
    elapsed = time.perf_counter() - t0
    assert code == 0, err
    files = json.loads((tmp_path / "r.json").read_text())["files"]
    assert len(files) == 3 and all(r["wall_s"] > 0 for r in files)
    # each file's own time: disjoint shares of one process's time, so they cannot add up to
    # more than the whole run (times since the batch began add up to about 3x)
    assert sum(r["wall_s"] for r in files) <= elapsed
    for r in files:
        assert r["rtf"] == pytest.approx(r["wall_s"] / r["audio_s"], rel=1e-3, abs=1e-4)


def test_progress_counts_seconds_of_audio(tmp_path):
    from upsr.infer.batch import BatchOptions, enhance_files, plan_items
    from upsr.infer.engine import EnhanceOptions

    src = tmp_path / "in"
    _write(src / "short.wav", _limited(0.5, 5000, 1, channels=1), subtype="FLOAT")
    _write(src / "long.wav", _limited(1.0, 5000, 2, channels=1), 22050, subtype="FLOAT")  # 2 s
    items = plan_items([str(src)], str(tmp_path / "out"), None)
    seen: dict[str, list[float]] = {}
    planned: list[float] = []

    def progress(item, seconds):
        seen.setdefault(Path(item.src).name, []).append(seconds)

    opts = BatchOptions(engine=EnhanceOptions(chunk_s=0.5, overlap_s=0.05))
    enhance_files(items, "sbr", opts, progress=progress,
                  on_planned=lambda its: planned.extend(it.audio_s for it in its))
    assert sorted(planned) == pytest.approx([0.5, 2.0])
    assert sum(seen["short.wav"]) == pytest.approx(0.5, abs=1e-6)
    assert sum(seen["long.wav"]) == pytest.approx(2.0, abs=1e-6)
    assert len(seen["long.wav"]) > 1  # reported as it is written, not once at the end


def _main(*args) -> int:
    from upsr.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_decoder_chatter_only_with_verbose(tmp_path, capfd):
    data = _mp3_bytes(_limited(0.5, 16000, 6))
    junk = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    mp3 = tmp_path / "junk-tail.mp3"
    mp3.write_bytes(data + junk)  # the Xing frame's size no longer matches: mpg123 complains
    capfd.readouterr()
    sf.info(str(mp3))
    assert "Xing" in capfd.readouterr().err  # the decoder really prints this on fd 2
    for args in (["probe", mp3], ["enhance", mp3, "-o", tmp_path / "o"]):
        assert _main(*args) == 0
        err = capfd.readouterr().err
        assert "Xing" not in err and "mpg123" not in err
    assert _main("probe", "-v", mp3) == 0
    assert f"upsr: {mp3}: decoder: Warning: Xing" in capfd.readouterr().err
