"""Validation curve of a MambaWave training run against the unprocessed input and ``sbr``.

Usage::

    python benchmarks/mambawave_valid_curve.py RUN_DIR --watch 20 --copy-only   # during
    python benchmarks/mambawave_valid_curve.py RUN_DIR [--items 4] [--segment-s 0.25]
        [--steps 4] [--every 1]                                                  # after

The held-out items are built exactly as the trainer's validation builds them (the run's
``recipe.toml``: ``data.valid`` folder, its degradation and normalisation; the first
``segment_s`` of each of the first ``items`` files). Each checkpoint is sampled with
``--steps`` DDIM steps (the model's positional noise, seed 0) and scored with NU-Wave's LSD
(n_fft 1024, hop 256, as the MambaWave paper), AERO's LSD (2048/512) and SNR, plus the
held-out training objective (ε-MSE at steps 50/250/450 with fixed noise). Step 0 is the
run's initial model (rebuilt from the recipe's seed). With ``--watch`` the script polls the
run's ``checkpoints/latest.safetensors`` and snapshots each new one to ``snapshots/`` (and
scores it, unless ``--copy-only``: on a busy CPU, score afterwards), until the file stops
changing for ``--idle`` seconds. Without ``--watch`` it scores every ``--every``-th snapshot
not yet scored (and the last). Rows go to ``RUN_DIR/curve.csv``; the table is printed at the
end.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch


def _items(run_dir: Path, count: int, segment_s: float) -> list[tp.Any]:
    from upsr.train import data as D
    from upsr.train import recipe as R

    rc = R.loads((run_dir / "recipe.toml").read_text())
    sr = rc.data.sample_rate
    frames = int(segment_s * sr) // 2 * 2
    src = D.open_source(rc.data.valid, "data.valid")
    ds = D.PairDataset(src, sr=sr, channels=1, frames=frames, seed=rc.train.seed,
                       degrade=rc.degrade_spec(), lr_rate=24000, normalize=rc.data.normalize,
                       peak=rc.data.peak)
    return D.valid_items(ds, count, frames)


def _scores(items: list[tp.Any], estimates: list[np.ndarray]) -> dict[str, float]:
    from upsr.eval import metrics as M

    rows: dict[str, list[float]] = {"lsd_nuwave": [], "lsd": [], "snr": []}
    for item, est in zip(items, estimates):
        ref = item.hr[:, :est.shape[-1]]
        est = est[:, :ref.shape[-1]]
        rows["lsd_nuwave"].append(M.lsd(ref, est, *M.LSD_VARIANTS["nuwave"]))
        rows["lsd"].append(M.lsd(ref, est))
        rows["snr"].append(M.snr(ref, est))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def baselines(items: list[tp.Any]) -> dict[str, dict[str, float]]:
    """Unprocessed (the 24 kHz input resampled to 48 kHz with soxr) and ``sbr``."""
    from upsr.audio.resample import resample
    from upsr.infer.engine import EnhanceOptions, enhance_array

    unproc = [resample(it.lr, 24000, 48000) for it in items]
    opts = EnhanceOptions(out_sr=48000)
    sbr = [enhance_array(it.lr, 24000, "sbr", options=opts)[0] for it in items]
    return {"unprocessed": _scores(items, unproc), "sbr": _scores(items, sbr)}


EPS_STEPS = (50, 250, 450)


@torch.no_grad()
def eps_mse(model: tp.Any, items: list[tp.Any]) -> float:
    """Held-out training objective: mean ‖ε̂ − ε‖² over the items at steps 50, 250 and 450,
    with fixed noise (cheap: one forward per item and step)."""
    from upsr.nn import diffusion as diff

    vals = []
    for it in items:
        x0 = torch.from_numpy(it.hr)
        for t in EPS_STEPS:
            noise = diff.positional_noise(1, [0], x0.shape[-1], draw=t)
            tt = torch.tensor([t])
            x_t = diff.q_sample(model.schedule, x0, tt, noise)
            vals.append(float(torch.mean((model(x_t, torch.from_numpy(it.lr), tt) - noise) ** 2)))
    return float(np.mean(vals))


@torch.no_grad()
def score_model(model: tp.Any, items: list[tp.Any], steps: int) -> dict[str, float]:
    model.eval()
    est = [model.sample(torch.from_numpy(it.lr), sampler="ddim", steps=steps).numpy()
           for it in items]
    return {**_scores(items, est), "eps_mse": eps_mse(model, items)}


def initial_model(run_dir: Path) -> tp.Any:
    """The run's step-0 model: the trainer seeds everything with train.seed, then builds."""
    from upsr import models
    from upsr.train import loop
    from upsr.train import recipe as R

    rc = R.loads((run_dir / "recipe.toml").read_text())
    loop._seed_all(rc.train.seed)
    return models.build(rc.model.name, **rc.model.config)


def main(argv: list[str] | None = None) -> None:
    from upsr import checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--segment-s", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--watch", type=float, default=0.0, help="poll interval (s); 0: score the "
                    "snapshots already taken and the current latest checkpoint once")
    ap.add_argument("--idle", type=float, default=1800.0)
    ap.add_argument("--copy-only", action="store_true")
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = args.run_dir
    snaps = run / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    latest = run / "checkpoints" / "latest.safetensors"
    if args.watch:
        last_change, copied = time.time(), -1
        while time.time() - last_change <= args.idle:
            if latest.is_file():
                step = int(checkpoint.read_metadata(latest).get("step") or 0)
                if step != copied:
                    shutil.copyfile(latest, snaps / f"step_{step:07d}.safetensors")
                    copied, last_change = step, time.time()
                    print(f"snapshot step {step}", flush=True)
            time.sleep(args.watch)
        if args.copy_only:
            return
    items = _items(run, args.items, args.segment_s)
    base = baselines(items)
    out = run / "curve.csv"
    done: dict[int, dict[str, float]] = {}
    if out.is_file():
        with open(out, newline="") as fh:
            for r in csv.DictReader(fh):
                done[int(r["step"])] = {k: float(v) for k, v in r.items() if k != "step"}

    def record(step: int, scores: dict[str, float]) -> None:
        done[step] = scores
        with open(out, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["step", "lsd_nuwave", "lsd", "snr", "eps_mse"])
            w.writeheader()
            for s in sorted(done):
                w.writerow({"step": s, **{k: f"{v:.6g}" for k, v in done[s].items()}})
        print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()),
              flush=True)

    if 0 not in done:
        record(0, score_model(initial_model(run), items, args.steps))
    paths = sorted(snaps.glob("step_*.safetensors"))
    chosen = paths[args.every - 1::args.every] + paths[-1:]
    for snap in sorted(set(chosen)):
        step = int(snap.stem.split("_")[1])
        if step not in done:
            record(step, score_model(checkpoint.load(snap), items, args.steps))
    print(f"\n{len(items)} held-out items x {args.segment_s} s, DDIM {args.steps} steps")
    print(f"{'':>14} {'LSD-NU':>8} {'LSD-AERO':>9} {'SNR dB':>8} {'eps MSE':>8}")
    for name, s in base.items():
        print(f"{name:>14} {s['lsd_nuwave']:8.3f} {s['lsd']:9.3f} {s['snr']:8.2f}")
    for step in sorted(done):
        s = done[step]
        print(f"{'step ' + str(step):>14} {s['lsd_nuwave']:8.3f} {s['lsd']:9.3f} "
              f"{s['snr']:8.2f} {s['eps_mse']:8.4f}")


if __name__ == "__main__":
    sys.exit(main())
