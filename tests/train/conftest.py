"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_clips


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[int, Path]:
    """Clips exactly one tiny segment long (0.1 s), so every epoch sees the same 4 crops:
    at 44.1 kHz for AEROMamba/Apollo and 48 kHz for Wave-U-Mamba (no resampling on load)."""
    base = tmp_path_factory.mktemp("tiny")
    return {sr: write_clips(base / str(sr), sr=sr) for sr in (44100, 48000)}
