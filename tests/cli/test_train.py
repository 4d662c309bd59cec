"""``upsr train`` from the command line: errors, a short run, and two ranks under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from upsr.audio import synth

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny"


def _clips(root: Path, sr: int = 44100, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(root / f"c{i}.wav", synth.music_like(0.1, sr, channels=1, seed=i).T, sr,
                 subtype="FLOAT")
    return root


def test_bad_recipes_are_one_line_usage_errors(run_cli, tmp_path):
    code, _, err = run_cli("train", tmp_path / "none.toml")
    assert code == 1 and "no such recipe file" in err
    code, _, err = run_cli("train", TINY / "aeromamba.toml", "--set", "train.stepz=1")
    assert code == 1 and err.strip().count("\n") == 0
    assert "recipe train.stepz: unknown key (allowed:" in err
    code, _, err = run_cli("train", TINY / "aeromamba.toml", "--set",
                           f"data.train={tmp_path / 'missing'}", "--out", tmp_path / "r")
    assert code == 1 and "is not a folder" in err
    code, _, err = run_cli("train", TINY / "aeromamba.toml", "--resume", "--set",
                           f"data.train={_clips(tmp_path / 'd')}", "--out", tmp_path / "r")
    assert code == 1 and "nothing to resume" in err


def test_torchrun_two_ranks_on_gloo_hold_identical_weights(tmp_path):
    data = _clips(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "upsr", "train", str(TINY / "aeromamba.toml"),
           "--set", f"data.train={data}", "--set", "train.steps=3", "--set",
           "data.batch_size=1", "--set", "data.epoch_items=4", "--out", str(out),
           "--device", "cpu", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["step"] == 3 and len(replicas["digests"]) == 2
    assert replicas["digests"][0] == replicas["digests"][1]
    assert (out / "checkpoints" / "latest.safetensors").is_file()
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 steps, written by rank 0 only
