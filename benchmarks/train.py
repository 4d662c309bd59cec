"""Training throughput on this CPU: steps/s, seconds of audio per second and peak memory for
every recipe (full recipes at batch 1, tiny recipes as shipped).

    python benchmarks/train.py [--steps 3] [--only tiny|full]

Each configuration runs in its own process (peak RSS is per process) on generated music;
the first step (allocation, numba compilation) is excluded; the median of the rest is shown.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SYSTEMS = ("aeromamba", "apollo", "wave_u_mamba")


def child(recipe: str, data: str, steps: int, full: bool) -> None:
    import torch

    from upsr.train import loop
    from upsr.train import recipe as R

    torch.set_num_threads(2)
    sets = [f"data.train={data}", f"train.steps={steps}", "data.valid=\"\"",
            "data.valid_files=0", "data.num_workers=0"]
    if full:
        sets += ["data.batch_size=1", "data.epoch_items=64"]
    r = R.load(recipe, sets)
    with tempfile.TemporaryDirectory() as out:
        run = loop.prepare(r, Path(out) / "run", device="cpu")
        times = []
        for hr, lr in loop._loader(run, 0, 0):
            t = time.perf_counter()
            loop.train_step(run, hr, lr)
            times.append(time.perf_counter() - t)
            if len(times) >= steps:
                break
    step_s = statistics.median(times[1:] or times)
    audio = r.data.batch_size * (1 if not full else 1) * run.dataset.frames / r.data.sample_rate
    print(json.dumps({"steps_per_s": 1 / step_s, "audio_s_per_s": audio / step_s,
                      "batch": r.data.batch_size, "segment_s": run.dataset.frames
                      / r.data.sample_rate,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", choices=("tiny", "full"))
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]), a.child[3] == "full")
        return
    import soundfile as sf

    from upsr.audio import synth

    with tempfile.TemporaryDirectory() as tmp:
        for sr in (44100, 48000):
            d = Path(tmp) / str(sr)
            d.mkdir()
            for i in range(2):
                sf.write(d / f"m{i}.wav", synth.music_like(6.0, sr, channels=2, seed=i).T, sr,
                         subtype="FLOAT")
        print(f"{'recipe':<22} {'batch':>5} {'seg s':>6} {'steps/s':>9} {'audio s/s':>10} "
              f"{'peak MB':>8}")
        for kind in ("tiny", "full"):
            if a.only and a.only != kind:
                continue
            for name in SYSTEMS:
                recipe = RECIPES / ("tiny" if kind == "tiny" else "") / f"{name}.toml"
                data = Path(tmp) / ("48000" if name == "wave_u_mamba" else "44100")
                proc = subprocess.run([sys.executable, __file__, "--child", str(recipe),
                                       str(data), str(a.steps), kind],
                                      capture_output=True, text=True)
                label = f"{kind}/{name}"
                if proc.returncode:
                    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"{label:<22} failed: {last[:90]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{label:<22} {r['batch']:>5} {r['segment_s']:>6.3f} "
                      f"{r['steps_per_s']:>9.3f} {r['audio_s_per_s']:>10.4f} "
                      f"{r['peak_mb']:>8.0f}")


if __name__ == "__main__":
    main()
