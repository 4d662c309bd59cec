"""AudioSR on this CPU: 10 s of audio, the published configuration (random weights: no
published weights are reachable here), fp32 and bf16 autocast, DDIM-50 and DPM-Solver++(2M).

The published networks are heavy (672 M parameters; the 48 kHz HiFi-GAN alone is several
TFLOP per 10 s), so every stage is timed separately and the totals are assembled:
``total = front end + VAE encode + steps × guided U-Net step + VAE decode + vocoder``. The
U-Net step runs on the real 10.24-s latent; the VAE and the vocoder run on 1/``--scale`` of
it (convolutions: cost linear in length) and are multiplied back. A sampler step is one
guided U-Net call (conditional and unconditional halves in one batch of 2) for DDIM and
DPM-Solver++ alike, so the two samplers differ only in their step counts. ``--end-to-end``
instead runs ``restore`` once per sampler with ``--steps`` (DDIM) and half (DPM-Solver++).

Usage: ``python benchmarks/audiosr_cpu.py [--step-runs 2] [--threads N] [--end-to-end]``.
Prints a table of wall and process-CPU seconds (on a shared, loaded machine the CPU time is
what one free core would take); the U-Net step is the median of ``--step-runs`` runs, the
other stages single runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _timing import median_time  # noqa: E402

from upsr.models.audiosr import pipeline as P  # noqa: E402
from upsr.models.audiosr.model import AudioSR, AudioSRConfig  # noqa: E402

AUDIO_S = 10.0
SAMPLERS = {"DDIM-50": 50, "DPM-Solver++(2M)-25": 25}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


CPU: dict[str, float] = {}  # process CPU seconds per stage (the wall clock counts the load)


def once(fn, key: str = "") -> float:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if key:
        CPU[key] = time.process_time() - c0
    return time.perf_counter() - t0


def stages(model: AudioSR, x: torch.Tensor, bf16: bool, step_runs: int,
           scale: int) -> dict[str, float]:
    """Seconds per stage of one 10-s restore. The guided U-Net step runs on the full 10.24-s
    latent; the VAE and the vocoder (convolutional, linear in length) run on 1/``scale`` of
    it and are multiplied by ``scale``."""
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    frames = P.padded_length(x.shape[-1])[1]
    part = frames // scale
    out: dict[str, float] = {}
    tag = "bf16" if bf16 else "fp32"
    with torch.inference_mode(), ctx:
        lat = (16, frames // 8, 32)
        xt = torch.randn(1, *lat)
        cond = torch.randn(1, *lat)
        t = torch.tensor([500])
        c0 = time.process_time()
        out["guided U-Net step"] = median_time(
            lambda: model.velocity(xt, t, cond), step_runs, warmup=False)
        CPU["guided U-Net step"] = (time.process_time() - c0) / step_runs
        print(f"  {tag} guided U-Net step: {out['guided U-Net step']:.1f} s", flush=True)
        if not bf16:
            def front() -> None:
                xs = x.numpy()
                padded = np.zeros((1, frames * P.HOP), np.float32)
                padded[:, :xs.shape[-1]] = P.normalize_wav(xs)
                _, stft = P.features(torch.from_numpy(padded), frames)
                hz = P.cutoff_hz_from_stft(stft[0])
                P.lowpass(padded[0], hz, "butter")

            out["front end + pre-filter"] = once(front, "front end + pre-filter")
        mel = torch.randn(1, part, P.N_MELS)
        eps = torch.randn(1, 16, part // 8, 32)
        out["condition (VAE encode)"] = scale * once(lambda: model.condition(mel, eps),
                                                     "condition (VAE encode)")
        CPU["condition (VAE encode)"] *= scale
        print(f"  {tag} VAE encode: {out['condition (VAE encode)']:.1f} s", flush=True)
        z = torch.randn(1, 16, part // 8, 32)
        out["VAE decode"] = scale * once(lambda: model.vae.decode(z), "VAE decode")
        CPU["VAE decode"] *= scale
        print(f"  {tag} VAE decode: {out['VAE decode']:.1f} s", flush=True)
        out["vocoder"] = scale * once(lambda: model.vocoder(mel.transpose(1, 2)), "vocoder")
        CPU["vocoder"] *= scale
        print(f"  {tag} vocoder: {out['vocoder']:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step-runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--end-to-end", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scale", type=int, default=8,
                    help="run VAE/vocoder on 1/scale of the 10.24 s and multiply")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at start (machine shared)")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AudioSR(AudioSRConfig()).eval()
    n_par = sum(p.numel() for p in model.parameters())
    print(f"# published config, random weights: {n_par:,} parameters, built in "
          f"{time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_gb():.2f} GB")
    rng = np.random.default_rng(0)
    from upsr.audio.filters import lowpass

    x = torch.from_numpy(lowpass(rng.standard_normal((1, int(AUDIO_S * P.SR))) * 0.1, P.SR,
                                 6000.0, kind="cheby1", order=8).astype(np.float32))
    if args.end_to_end:
        for sampler, steps in (("ddim", args.steps), ("dpmpp-2m", max(1, args.steps // 2))):
            m = AudioSR(AudioSRConfig(steps=steps, sampler=sampler)).eval()
            m.load_state_dict(model.state_dict())
            with torch.inference_mode():
                wall = once(lambda m=m: m.restore(x, cutoff_hz=torch.tensor([6000.0])))
            print(f"{sampler}-{steps} fp32 end to end: {wall:.1f} s, RTF {wall / AUDIO_S:.2f}, "
                  f"peak RSS {peak_rss_gb():.2f} GB")
        return
    front = (0.0, 0.0)  # (wall, CPU) of the front end, timed once (it runs in float32)
    for bf16 in (False, True):
        CPU.clear()
        st = stages(model, x, bf16, args.step_runs, args.scale)
        if "front end + pre-filter" in st:
            front = (st["front end + pre-filter"], CPU["front end + pre-filter"])
        st["front end + pre-filter"], CPU["front end + pre-filter"] = front
        name = "bf16 autocast" if bf16 else "fp32"
        print(f"\n## {name} (peak RSS so far {peak_rss_gb():.2f} GB; load average now "
              f"{os.getloadavg()[0]:.1f})")
        print("| stage | wall s | process CPU s |")
        print("| --- | --- | --- |")
        for k, v in st.items():
            print(f"| {k} | {v:.1f} | {CPU[k]:.1f} |")
        for label, steps in SAMPLERS.items():
            wall = sum(v for k, v in st.items() if k != "guided U-Net step") \
                + steps * st["guided U-Net step"]
            cpu = sum(v for k, v in CPU.items() if k != "guided U-Net step") \
                + steps * CPU["guided U-Net step"]
            print(f"| {label} total (assembled) | {wall:.1f} (RTF {wall / AUDIO_S:.1f}) | "
                  f"{cpu:.1f} (RTF {cpu / AUDIO_S:.1f}) |")


if __name__ == "__main__":
    main()
