"""The known band on real audio: sbr's fill level fitted, and restoration checked.

Real recordings that ship inside Debian packages (install them first). Lossless references
(their high band is known): ``hydrogen-drumkits`` (/usr/share/hydrogen/data/drumkits: acoustic
and electronic drum kits, hand claps; FLAC 44.1/48 kHz; 4 files of each kit spread over its
sorted names) and
``alsa-utils`` (/usr/share/sounds/alsa: spoken channel names, PCM 48 kHz), each at least
0.7 s long with a -70 dB band edge at or above 17.5 kHz. Near-full-band lossy inputs for
``eval``: the Vorbis files of ``lmms-common`` (/usr/share/lmms/samples) and
``sound-theme-freedesktop`` whose edge is at or above 19 kHz (Vorbis zeroes most bins above
~16 kHz frame by frame, so these are inputs, never references for the fit).

``fit``: degrade every reference (FFT brick wall at 8, 11 and 16 kHz; LAME CBR 64 and
128 kbps with the ``lame`` command), restore with ``sbr`` at ``level_db = 0`` and
``decay_db_per_octave = 0`` given the known band (:func:`upsr.audio.analysis.known_band_hz`
of the degraded file), and regress the fill's log-power error against the reference
(``10 log10`` of the LSD's floored STFT power, n_fft 2048, every frame and bin from the cutoff
up to the reference's own band edge) on octaves above the cutoff:
``err = level + slope * octaves``. Each file counts once (its mean error per 1/6 octave
band), so long files do not dominate. The fitted ``level_db`` and ``decay_db_per_octave``
are what :class:`upsr.models.sbr.SbrConfig` uses.

``eval``: the default model (``sbr`` with its defaults, cutoff from the known band as
``upsr enhance`` picks it, container included) on (a) near-full-band input: LAME 128 kbps
MP3s of the lossless references, and the Vorbis files themselves (their original is the
file: restoring must not change it); (b) band-limited input: LAME 64 kbps MP3s and an 8 kHz
brick wall of the lossless references. Prints LSD against the original before/after
restoring and the LSD between input and output below the known band edge, then a summary.

Usage: ``python benchmarks/known_band.py fit|eval [--max-files N]``.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import soundfile as sf

from upsr.audio import analysis, io
from upsr.audio.synth import brickwall
from upsr.eval.metrics import lsd, lsd_lf
from upsr.infer.engine import EnhanceOptions, enhance_array
from upsr.models.sbr import Sbr, SbrConfig

LOSSLESS = (("drums", "/usr/share/hydrogen/data/drumkits/*/*.flac"),
            ("speech", "/usr/share/sounds/alsa/*.wav"))
VORBIS = ("/usr/share/lmms/samples/*/*.ogg", "/usr/share/sounds/freedesktop/stereo/*.oga")
MIN_EDGE_HZ = 17500.0
PER_FOLDER = 4  # drum files per kit (evenly spread over its sorted names: kick to cymbal)
N_FFT, HOP = 2048, 512


@dataclass
class Ref:
    path: str
    x: np.ndarray  # [C, T] float32
    sr: int
    kind: str      # "drums" | "speech" | "vorbis"


def _load(pattern: str, kind: str, min_s: float) -> list[Ref]:
    out = []
    for f in sorted(glob.glob(pattern)):
        try:
            a = io.read(f)
        except Exception:
            continue
        if a.duration_s < min_s or a.sr < 44100:
            continue
        if analysis.band_edge_hz(a.samples, a.sr) < MIN_EDGE_HZ:
            continue
        out.append(Ref(f, a.samples.astype(np.float32), a.sr, kind))
    return out


def references(max_files: int | None, vorbis: bool = False) -> list[Ref]:
    """Lossless references (drum kits: ``PER_FOLDER`` files of each kit; all speech),
    plus, with ``vorbis``, the near-full-band Vorbis files."""
    out: list[Ref] = []
    for kind, pattern in LOSSLESS:
        refs = _load(pattern, kind, 0.7)
        by_folder: dict[str, list[Ref]] = {}
        for r in refs:
            by_folder.setdefault(os.path.dirname(r.path), []).append(r)
        for group in by_folder.values():
            if kind != "drums" or len(group) <= PER_FOLDER:
                out += group
                continue
            picks = np.linspace(0, len(group) - 1, PER_FOLDER).round().astype(int)
            out += [group[int(k)] for k in picks]
    if vorbis:
        for pattern in VORBIS:
            out += [r for r in _load(pattern, "vorbis", 1.0)
                    if analysis.band_edge_hz(r.x, r.sr) >= 19000.0]
    return out[:max_files] if max_files else out


def lame_round_trip(x: np.ndarray, sr: int, kbps: int, tmp: str) -> tuple[np.ndarray, str]:
    """``x`` through ``lame -b kbps`` (CBR), decoded with libsndfile, aligned to ``x`` by
    cross-correlation and cut to its length; also returns the MP3's path."""
    wav, mp3 = os.path.join(tmp, "in.wav"), os.path.join(tmp, f"x{kbps}.mp3")
    sf.write(wav, x.T, sr, subtype="PCM_16")
    subprocess.run(["lame", "--quiet", "-b", str(kbps), "--cbr", wav, mp3], check=True)
    y0, ysr = sf.read(mp3, dtype="float32", always_2d=True)
    y = y0.T
    if ysr != sr:  # LAME picks a lower rate at low bitrates: back to the reference's
        from upsr.audio.resample import resample

        y = resample(y, ysr, sr)
    a, b = x.mean(0), y.mean(0)
    n = min(a.size, b.size)
    corr = np.fft.irfft(np.fft.rfft(b[:n], 2 * n) * np.conj(np.fft.rfft(a[:n], 2 * n)))
    lag = int(np.argmax(np.abs(corr[:4096])))
    y = y[:, lag:lag + x.shape[-1]]
    if y.shape[-1] < x.shape[-1]:
        y = np.pad(y, ((0, 0), (0, x.shape[-1] - y.shape[-1])))
    return y, mp3


def log_power(x: np.ndarray) -> np.ndarray:
    """10 log10 of the LSD's floored STFT power, ``[C, F, frames]``."""
    from upsr.audio.spectral import stft

    p = np.abs(stft(x.astype(np.float64), N_FFT, HOP)) ** 2
    return 10.0 * np.log10(np.maximum(p, 1e-8))


def degradations(ref: Ref, tmp: str) -> list[tuple[str, np.ndarray, float]]:
    """(name, degraded [C, T], known band edge Hz) per degradation of ``ref``."""
    out = []
    for fc in (8000.0, 11000.0, 16000.0):
        out.append((f"brick {fc / 1000:g}k", brickwall(ref.x, ref.sr, fc), fc))
    for kbps in (64, 128):
        y, mp3 = lame_round_trip(ref.x, ref.sr, kbps, tmp)
        edge = analysis.known_band_hz(y, ref.sr, io.info(mp3))
        out.append((f"mp3 {kbps}k", y, edge))
    return out


def fit(refs: list[Ref]) -> None:
    flat = Sbr(replace(SbrConfig(), level_db=0.0, decay_db_per_octave=0.0))
    edges = np.arange(0.0, 1.6, 1 / 6)
    rows: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for ref in refs:
            lp_ref = log_power(ref.x)
            f = np.fft.rfftfreq(N_FFT, 1 / ref.sr)
            top = min(analysis.band_edge_hz(ref.x, ref.sr) - 250, flat.config.max_hz)
            for name, y, edge in degradations(ref, tmp):
                if edge >= ref.sr / 2:
                    continue
                out, _ = enhance_array(y, ref.sr, flat, cutoff_hz=edge)
                err = log_power(out) - lp_ref  # [C, F, frames]
                band = (f >= edge + 250) & (f <= top)  # where the reference has content
                octv = np.log2(f[band] / edge)
                e = err[:, band, :].mean(axis=(0, 2))  # per bin, mean over frames/channels
                idx = np.digitize(octv, edges) - 1
                means = np.array([e[idx == k].mean() if np.any(idx == k) else np.nan
                                  for k in range(edges.size)])
                rows.append((os.path.basename(ref.path), f"{ref.kind} {name}", edges, means))
                print(f"{os.path.basename(ref.path):42s} {name:10s} edge {edge:7.0f} Hz  "
                      f"err {np.nanmean(means):+6.1f} dB", flush=True)
    for label, select in (("all", lambda k: True), ("speech", lambda k: k.startswith("speech")),
                          ("drums", lambda k: k.startswith("drums"))):
        xs, ys = [], []
        for _, kind, oc, means in rows:
            if not select(kind):
                continue
            ok = np.isfinite(means)
            xs.append(oc[ok] + 1 / 12)
            ys.append(means[ok])
        if not xs:
            continue
        X, Y = np.concatenate(xs), np.concatenate(ys)
        slope, level = np.polyfit(X, Y, 1)
        print(f"fit {label:9s} ({len(xs)} file x degradation pairs): err = {level:+.2f} dB "
              f"{slope:+.2f} dB/octave  ->  level_db {level:.1f}, decay_db_per_octave "
              f"{slope:.1f}")


def evaluate(refs: list[Ref]) -> None:
    opts = EnhanceOptions(batch_size=1)
    print(f"{'file':42s} {'input':12s} {'edge Hz':>8s} {'LSD in':>7s} {'LSD out':>7s} "
          f"{'LSD<edge':>8s}")
    worse = 0
    summary: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ref in refs:
            cases: list[tuple[str, np.ndarray, float]] = []
            if ref.kind == "vorbis":  # lossy itself: an input, never a reference
                cases.append(("vorbis file", ref.x,
                              analysis.known_band_hz(ref.x, ref.sr, io.info(ref.path))))
            for kbps in (128, 64) if ref.kind != "vorbis" else ():
                y, mp3 = lame_round_trip(ref.x, ref.sr, kbps, tmp)
                cases.append((f"mp3 {kbps}k", y, analysis.known_band_hz(y, ref.sr,
                                                                          io.info(mp3))))
            if ref.kind != "vorbis":
                cases.append(("brick 8k", brickwall(ref.x, ref.sr, 8000.0), 8000.0))
            for name, y, edge in cases:
                out, _ = enhance_array(y, ref.sr, "sbr", cutoff_hz=edge, options=opts)
                before, after = lsd(ref.x, y), lsd(ref.x, out)
                below = lsd_lf(y, out, ref.sr, edge) if edge < ref.sr / 2 else lsd(y, out)
                worse += after > before + 1e-4
                summary.setdefault(name, []).append((before, after, below))
                print(f"{os.path.basename(ref.path):42s} {name:12s} {edge:8.0f} {before:7.3f} "
                      f"{after:7.3f} {below:8.4f}", flush=True)
    print(f"cases where restoring raised the LSD: {worse}")
    for name in sorted(summary):
        v = np.array(summary[name])
        print(f"{name:12s} {len(v):3d} cases: mean LSD {v[:, 0].mean():.3f} -> "
              f"{v[:, 1].mean():.3f}, raised in {int((v[:, 1] > v[:, 0] + 1e-4).sum())}, "
              f"max LSD below the edge {v[:, 2].max():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["fit", "eval"])
    ap.add_argument("--max-files", type=int, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    refs = references(args.max_files, vorbis=args.what == "eval")
    print(f"{len(refs)} references: " + ", ".join(os.path.basename(r.path) for r in refs))
    fit(refs) if args.what == "fit" else evaluate(refs)


if __name__ == "__main__":
    main()
