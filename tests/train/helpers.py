"""Helpers shared by the training tests: tiny generated audio, recipe paths, log reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from upsr.audio import synth

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = ("aeromamba", "apollo", "wave_u_mamba")


def write_clips(root: Path, n: int = 5, seconds: float = 0.1, sr: int = 48000,
                channels: int = 2) -> Path:
    """``n`` short stereo music-like WAVs (float) under ``root``; the last one is held out
    for validation by the tiny recipes (``valid_files = 1``)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = synth.music_like(seconds, sr, channels=channels, seed=i)
        sf.write(root / f"clip{i}.wav", x.T, sr, subtype="FLOAT")
    return root


def tiny_overrides(name: str, data: dict[int, Path], *extra: str) -> list[str]:
    sr = 48000 if name == "wave_u_mamba" else 44100
    return [f"data.train={str(data[sr])!r}".replace("'", '"'), *extra]


def read_log(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def mean(rows: list[dict[str, str]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows]))


def enhances_at_48k(run_cli, ckpt: Path, tmp_path: Path) -> None:
    """``upsr enhance --model ckpt`` restores 0.25 s of 16 kHz noise into 0.25 s at 48 kHz
    with finite samples (an AudioSR checkpoint a training run wrote)."""
    x = (np.random.default_rng(0).standard_normal((4000, 1)) * 0.05).astype(np.float32)
    sf.write(str(tmp_path / "x.wav"), x, 16000, subtype="FLOAT")
    code, _, err = run_cli("enhance", tmp_path / "x.wav", "-o", tmp_path / "o", "--model", ckpt)
    assert code == 0, err
    y, sr = sf.read(str(tmp_path / "o" / "x.wav"), always_2d=True)
    assert sr == 48000 and y.shape == (12000, 1) and np.isfinite(y).all()
