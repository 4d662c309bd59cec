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


def random_state(shapes, seed: int = 0) -> dict:
    """Re-drawn weights for the keys and shapes of ``shapes`` (a state dict, meta tensors are
    fine), scaled like a trained network: matrices/kernels N(0, 1/fan_in), 1-D ``weight`` (norm
    gains) U(0.5, 1.5), other 1-D tensors N(0, 0.1²), ``running_var`` U(0.5, 1.5), integer
    counters 1000. Importer tests build official-format checkpoints from it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in shapes.items():
        shape = tuple(v.shape)
        if not v.dtype.is_floating_point:
            out[k] = torch.full(shape, 1000, dtype=v.dtype)
        elif len(shape) >= 2:
            fan_in = max(int(np.prod(shape[1:])), 1)
            out[k] = torch.randn(shape, generator=gen) / fan_in ** 0.5
        elif k.endswith(("weight", "running_var")):
            out[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[k] = 0.1 * torch.randn(shape, generator=gen)
    return out


def randomise_batchnorms(model, seed: int = 3) -> None:
    """Trained-like BatchNorm statistics and affine parameters (fresh ones are the identity,
    which would hide a wrong fold)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.3, 3.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
