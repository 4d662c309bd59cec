"""Shared test helpers: parity fixtures, generated audio, the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path | None:
    """``$UPSR_FIXTURES`` or ``../shared/fixtures`` beside the checkout; None where neither is."""
    env = os.environ.get("UPSR_FIXTURES")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "fixtures"]:
        if cand.is_dir():
            return cand
    return None


def fixture_path(name: str) -> Path:
    """Path of a parity fixture, or skip the test with the reason."""
    d = fixtures_dir()
    if d is None or not (d / name).is_file():
        pytest.skip(f"parity fixture {name} not found (set $UPSR_FIXTURES or put shared/ "
                    f"beside the checkout)")
    return d / name


def rel_l2(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-300))


@pytest.fixture(autouse=True)
def _torch_threads():
    """Tests run with the machine's 2 threads; keep torch from oversubscribing."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def run_cli(capsys):
    """Run ``upsr ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from upsr.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
