"""DDP with generator parameters that get no gradient (AEROMamba ``official_forward``: its
Mamba blocks are built but never called): found before wrapping, left out of DDP, so steps
2.. do not wait for gradients that never come."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from upsr import models
from upsr.train import loop

from .helpers import RECIPES, write_clips


def test_unused_parameters_are_exactly_the_uncalled_mamba_weights():
    torch.manual_seed(0)
    cfg = dict(channels=4, growth=1, n_fft=128, hop_length=64, d_state=4, dconv_depth=1)
    lr = torch.randn(1, 512) * 0.1
    official = models.build("aeromamba", official_forward=True, **cfg).train()
    before = {k: v.clone() for k, v in official.state_dict().items()}
    unused = loop.unused_parameters(official, lr)
    mamba = [n for n, _ in official.named_parameters() if ".mamba." in n]
    assert mamba and sorted(unused) == sorted(mamba)
    # the probe ran on a copy: weights, buffers (BatchNorm statistics) and grads untouched
    after = official.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in official.parameters())
    paper = models.build("aeromamba", official_forward=False, **cfg).train()
    assert loop.unused_parameters(paper, lr) == []


def test_torchrun_two_ranks_train_official_forward_aeromamba(tmp_path):
    data = write_clips(tmp_path / "data", n=4, sr=44100, channels=1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "upsr", "train", str(RECIPES / "tiny" / "aeromamba.toml"),
           "--set", f"data.train={data}", "--set", "model.config.official_forward=true",
           "--set", "train.steps=3", "--set", "data.batch_size=1", "--set",
           "data.epoch_items=4", "--out", str(out), "--device", "cpu", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["step"] == 3 and replicas["digests"][0] == replicas["digests"][1]
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 4
