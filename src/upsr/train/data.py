"""Training pairs: random segments of clean audio degraded on the fly, or of a ``upsr degrade``
folder, deterministic given (seed, epoch, item).

Two sources (:func:`open_source`):

- a folder of clean audio: every item reads a random crop of a random file, redraws silent
  crops (``Σx²/sr < silence_power``, AEROMamba's ``power_threshold``), optionally mixes stems
  (Apollo: with probability ``stems_prob`` a sum of 1..``stems_max`` stems of random tracks,
  each with an integer gain in ±``stems_gain_db`` dB; a *track* is a folder holding a
  ``mixture.*`` file, its other audio files are its stems), then degrades it with
  :func:`upsr.data.degrade.degrade_array` — the code behind ``upsr degrade`` — drawing every
  degradation parameter per item (Apollo's official code drew its bitrate once per worker);
- a ``upsr degrade`` output folder (``manifest.jsonl``): a random aligned crop of a random pair;
- ``builtin:music`` (the tiny recipes' default, so they run in a fresh clone): ``BUILTIN_CLIPS``
  generated music-like clips (:func:`upsr.audio.synth.music_like`, seeds 0..n-1) held in memory,
  degraded like a folder of clean audio.

Every random choice of item ``i`` in epoch ``e`` comes from ``numpy.random.default_rng([seed,
e, i])``, so an item is the same whatever the worker, the rank or a resume.
:class:`EpochSampler` hands each rank its share of an epoch's items (``rank, rank + world,
…``) from any starting batch (resume).
"""

from __future__ import annotations

import json
import math
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from upsr.errors import UsageError

#: Tries to find a crop above the silence threshold before taking the last one anyway.
SILENCE_TRIES = 10
#: ``data.train = "builtin:music"``: this many generated clips of ``BUILTIN_SECONDS`` each.
BUILTIN = "builtin:music"
BUILTIN_CLIPS, BUILTIN_SECONDS = 6, 1.0


@dataclass(frozen=True)
class Clip:
    """One clean file (``path``) or one degraded pair (``lr`` set, from a manifest)."""

    path: Path
    frames: int
    sr: int
    channels: int
    lr: Path | None = None
    lr_frames: int = 0
    lr_sr: int = 0
    params: tp.Mapping[str, tp.Any] | None = None
    samples: np.ndarray | None = None  # ``[channels, frames]`` of a generated clip


@dataclass(frozen=True)
class Source:
    """The clips of a data folder: ``clips`` (mixtures or plain files) and ``stems``."""

    root: Path
    clips: tuple[Clip, ...]
    stems: tuple[Clip, ...] = ()
    paired: bool = False


def _clip(path: Path) -> Clip:
    from upsr.audio.io import info

    i = info(path)
    return Clip(path, i.frames, i.sr, i.channels)


def builtin_source(sr: int, channels: int) -> Source:
    """``builtin:music``: generated music-like clips at ``sr`` with ``channels``."""
    from upsr.audio import synth

    root = Path("builtin")
    clips = []
    for i in range(BUILTIN_CLIPS):
        x = synth.music_like(BUILTIN_SECONDS, sr, channels=channels, seed=i)
        clips.append(Clip(root / f"music{i}", x.shape[1], sr, channels, samples=x))
    return Source(root, tuple(clips))


def open_source(folder: str | Path, what: str, sr: int = 48000, channels: int = 1) -> Source:
    """Index a data folder (``what`` names the recipe key in errors); ``builtin:music`` is
    generated at ``sr`` with ``channels``."""
    if str(folder) == BUILTIN:
        return builtin_source(sr, channels)
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"recipe {what}: {root} is not a folder of audio (give one with "
                         f"--set {what}=DIR, or {BUILTIN!r} for generated audio)")
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        clips = []
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rec = json.loads(line)
                clips.append(Clip(root / rec["hr"], int(rec["hr_frames"]), int(rec["hr_rate"]),
                                  int(rec["channels"]), root / rec["lr"],
                                  int(rec["lr_frames"]), int(rec["lr_rate"]),
                                  rec.get("params") or {}))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UsageError(f"{manifest}: line {n} is not a upsr degrade record") from None
        if not clips:
            raise UsageError(f"recipe {what}: {manifest} lists no pairs")
        return Source(root, tuple(sorted(clips, key=lambda c: str(c.path))), paired=True)
    from upsr.data.degrade import find_sources

    paths = find_sources(root)
    if not paths:
        raise UsageError(f"recipe {what}: no audio files under {root}")
    tracks = {p.parent for p in paths if p.stem.lower() == "mixture"}
    mixtures = [_clip(p) for p in paths if p.parent not in tracks or p.stem.lower() == "mixture"]
    stems = [_clip(p) for p in paths if p.parent in tracks and p.stem.lower() != "mixture"]
    return Source(root, tuple(mixtures), tuple(stems))


def split(source: Source, held_out: int) -> tuple[Source, Source]:
    """(train, valid): the last ``held_out`` clips (sorted by path) are held out; stems of
    held-out tracks leave the training pool too."""
    if held_out >= len(source.clips):
        raise UsageError(f"recipe data.valid_files: {held_out} would leave no training files "
                         f"({len(source.clips)} under {source.root}); give data.valid")
    cut = len(source.clips) - held_out
    valid = source.clips[cut:]
    held_dirs = {c.path.parent for c in valid if c.path.stem.lower() == "mixture"}
    stems = tuple(s for s in source.stems if s.path.parent not in held_dirs)
    return (Source(source.root, source.clips[:cut], stems, source.paired),
            Source(source.root, valid, (), source.paired))


# ----------------------------------------------------------------------------------- items


def _fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """``x: [C, T]`` → ``[channels, T]``: mean down to mono, repeat mono up, else the first."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if x.shape[0] < channels:
        raise UsageError(f"a {x.shape[0]}-channel file cannot feed {channels}-channel training")
    return x[:channels]


def read_crop(clip: Clip, start_s: float, frames: int, sr: int, channels: int) -> np.ndarray:
    """``frames`` samples at ``sr`` from ``start_s`` seconds into ``clip``, ``[channels,
    frames]`` float32, resampled when the file has another rate; zero-padded past its end."""
    from upsr.audio.io import read

    start = int(round(start_s * clip.sr))
    need = frames if clip.sr == sr else int(math.ceil(frames * clip.sr / sr)) + 1
    n = max(0, min(need, clip.frames - start))
    if clip.samples is not None:
        x = clip.samples[:, start:start + n]
    elif n:
        x = read(clip.path, start=start, frames=n).samples
    else:
        x = np.zeros((clip.channels, 0), np.float32)
    if clip.sr != sr and x.shape[1]:
        from upsr.audio.resample import resample

        x = resample(x, clip.sr, sr)
    x = _fit_channels(np.asarray(x, np.float32), channels)
    return _fix_length(x, frames)


def _fix_length(x: np.ndarray, frames: int) -> np.ndarray:
    if x.shape[1] >= frames:
        return np.ascontiguousarray(x[:, :frames])
    return np.pad(x, ((0, 0), (0, frames - x.shape[1])))


class PairDataset(torch.utils.data.Dataset):
    """Training items ``(hr [C, T], lr [C, T_lr])`` float32 tensors, keyed by ``(epoch, i)``.

    ``frames``: the clean segment length (a multiple of ``align``); ``lr_rate``: the rate
    the model consumes (None: the degraded side is resampled back to ``sr``, as Wave-U-Mamba
    expects). ``degrade``: a :class:`~upsr.data.spec.DegradeSpec` (folder sources).
    """

    def __init__(self, source: Source, *, sr: int, channels: int, frames: int, seed: int,
                 degrade: tp.Any, lr_rate: int | None, silence_power: float = 0.0,
                 normalize: str = "none", peak: float = 0.9, stems_prob: float = 0.0,
                 stems_max: int = 8, stems_gain_db: float = 10.0) -> None:
        self.source = source
        self.sr, self.channels, self.frames, self.seed = sr, channels, frames, seed
        self.degrade, self.lr_rate = degrade, lr_rate
        self.silence_power, self.normalize, self.peak = silence_power, normalize, peak
        self.stems_prob = stems_prob if source.stems else 0.0
        self.stems_max, self.stems_gain_db = stems_max, stems_gain_db

    def __len__(self) -> int:  # the number of distinct clips; epochs draw from them
        return len(self.source.clips)

    def _crop(self, rng: np.random.Generator, clips: tp.Sequence[Clip]) -> np.ndarray:
        x = np.zeros((self.channels, self.frames), np.float32)
        for _ in range(SILENCE_TRIES):
            clip = clips[int(rng.integers(len(clips)))]
            span = max(clip.frames / clip.sr - self.frames / self.sr, 0.0)
            x = read_crop(clip, float(rng.uniform(0, span)), self.frames, self.sr,
                          self.channels)
            if float(np.sum(x.astype(np.float64) ** 2)) / self.sr >= self.silence_power:
                break
        return x

    def clean(self, rng: np.random.Generator) -> np.ndarray:
        """A clean crop: a clip, or with ``stems_prob`` a gain-weighted sum of stems."""
        if self.stems_prob and rng.uniform() < self.stems_prob:
            n = int(rng.integers(1, self.stems_max + 1))
            mix = np.zeros((self.channels, self.frames), np.float64)
            for _ in range(n):
                gain_db = int(rng.integers(-int(self.stems_gain_db),
                                           int(self.stems_gain_db) + 1))
                mix += 10 ** (gain_db / 20) * self._crop(rng, self.source.stems)
            return mix.astype(np.float32)
        return self._crop(rng, self.source.clips)

    def _paired(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        clip = self.source.clips[int(rng.integers(len(self.source.clips)))]
        ratio = math.gcd(clip.sr, clip.lr_sr)
        step = clip.sr // ratio  # hr frames per aligned position
        positions = max((clip.frames - self.frames) // step, 0)
        start = int(rng.integers(positions + 1)) * step
        hr = read_crop(clip, start / clip.sr, self.frames, self.sr, self.channels)
        lr_clip = Clip(tp.cast(Path, clip.lr), clip.lr_frames, clip.lr_sr, clip.channels)
        lr_frames = int(round(self.frames * clip.lr_sr / clip.sr))
        lr = read_crop(lr_clip, start / clip.sr, lr_frames, clip.lr_sr, self.channels)
        return hr, self._to_model_rate(lr, clip.lr_sr)

    def _to_model_rate(self, lr: np.ndarray, lr_sr: int, frames: int | None = None
                       ) -> np.ndarray:
        """The degraded side at the model's input rate, ``round(frames · rate / sr)`` long
        (``frames``: clean frames, default the segment)."""
        target = self.sr if self.lr_rate is None else self.lr_rate
        if lr_sr != target:
            from upsr.audio.resample import resample

            lr = resample(lr, lr_sr, target)
        n = self.frames if frames is None else frames
        return _fix_length(lr, int(round(n * target / self.sr)))

    def make(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, tp.Any]]:
        """One pair from ``rng``: ``(hr, lr, drawn degradation parameters)``."""
        if self.source.paired:
            hr, lr = self._paired(rng)
            params: dict[str, tp.Any] = {}
        else:
            from upsr.data.degrade import degrade_array

            hr = self.clean(rng)
            if self.normalize == "peak":
                hr = hr * (self.peak / max(float(np.max(np.abs(hr))), 1e-8))
            lr, lr_sr, params = degrade_array(hr, self.sr, self.degrade,
                                              int(rng.integers(2 ** 63 - 1)))
            lr = self._to_model_rate(lr, lr_sr)
        if self.normalize == "joint_peak":
            scale = max(float(np.max(np.abs(hr))), float(np.max(np.abs(lr))), 1e-8)
            hr, lr = hr / scale, lr / scale
        return hr.astype(np.float32), lr.astype(np.float32), params

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        hr, lr, _ = self.make(np.random.default_rng([self.seed, epoch, index]))
        return torch.from_numpy(hr), torch.from_numpy(lr)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, i)`` keys: this rank's items ``rank, rank + world, …`` of the epoch's
    ``items`` (whole batches only, the same count on every rank), from batch ``start_batch``."""

    def __init__(self, items: int, batch_size: int, epoch: int, rank: int = 0,
                 world: int = 1, start_batch: int = 0) -> None:
        self.epoch, self.rank, self.world = epoch, rank, world
        self.batches = items // (batch_size * world)
        self.batch_size, self.start_batch = batch_size, start_batch

    def __iter__(self) -> tp.Iterator[tuple[int, int]]:
        first = self.start_batch * self.batch_size
        for k in range(first, self.batches * self.batch_size):
            yield self.epoch, k * self.world + self.rank

    def __len__(self) -> int:
        return max(self.batches - self.start_batch, 0) * self.batch_size


@dataclass
class ValidItem:
    """A held-out pair: ``hr [C, T]`` at ``sr``, ``lr`` at the model's rate, ``cutoff_hz`` of
    the degraded side (where LSD-HF starts), ``name``."""

    name: str
    hr: np.ndarray
    lr: np.ndarray
    cutoff_hz: float


def cutoff_of(params: tp.Mapping[str, tp.Any], lr: np.ndarray, lr_sr: int, sr: int) -> float:
    """Where the degraded side's band ends (LSD-HF starts): the drawn low-pass cut-off or the
    low rate's Nyquist frequency when known, else the -70 dB band edge that ``upsr eval``
    uses for degraded files (MP3 only)."""
    known = [float(params["lowpass_cutoff_hz"])] if "lowpass_cutoff_hz" in params else []
    if lr_sr != sr:
        known.append(lr_sr / 2)
    if not known:
        from upsr.audio.analysis import band_edge_hz

        known.append(band_edge_hz(lr, lr_sr))
    return float(min(min(known), sr / 2 - 1.0))


def valid_items(ds: PairDataset, count: int, frames: int) -> list[ValidItem]:
    """Up to ``count`` fixed pairs: the first ``frames`` of each held-out clip (a manifest
    pair's own degradation, or a draw seeded by the clip's name)."""
    from upsr.data.degrade import pair_seed

    out = []
    for clip in ds.source.clips[:count]:
        n = min(frames, clip.frames * ds.sr // clip.sr)
        name = clip.path.relative_to(ds.source.root).with_suffix("").as_posix()
        hr = read_crop(clip, 0.0, n, ds.sr, ds.channels)
        if ds.source.paired:
            lr_clip = Clip(tp.cast(Path, clip.lr), clip.lr_frames, clip.lr_sr, clip.channels)
            lr = read_crop(lr_clip, 0.0, int(round(n * clip.lr_sr / ds.sr)), clip.lr_sr,
                           ds.channels)
            lr_sr, params = clip.lr_sr, dict(clip.params or {})
        else:
            from upsr.data.degrade import degrade_array

            if ds.normalize == "peak":
                hr = hr * (ds.peak / max(float(np.max(np.abs(hr))), 1e-8))
            lr, lr_sr, params = degrade_array(hr, ds.sr, ds.degrade, pair_seed(ds.seed, name))
        cutoff = cutoff_of(params, lr, lr_sr, ds.sr)
        lr = ds._to_model_rate(lr, lr_sr, n)
        if ds.normalize == "joint_peak":
            scale = max(float(np.max(np.abs(hr))), float(np.max(np.abs(lr))), 1e-8)
            hr, lr = hr / scale, lr / scale
        out.append(ValidItem(name, hr.astype(np.float32), lr.astype(np.float32), cutoff))
    return out


def _gmean(values: tp.Iterable[float]) -> float:
    v = [float(x) for x in values]
    return float(np.exp(np.mean(np.log(v))))


def variant_of(spec: tp.Any, source: Source) -> dict[str, float]:
    """What degradation a run trains for, as checkpoints record it (``variant`` metadata,
    read by ``upsr enhance --bitrate-auto``): ``bitrate_kbps`` when MP3 is part of it and
    ``cutoff_hz`` when a low-pass or a lower rate bounds the band. A set or range of values
    gives their geometric mean (the choice is by log distance); a ``upsr degrade`` folder
    gives the mean over its manifest's pairs. Empty when nothing bounds the band."""
    out: dict[str, float] = {}
    if source.paired:
        params = [c.params or {} for c in source.clips]
        kbps = [float(p["mp3_kbps"]) for p in params if "mp3_kbps" in p]
        cuts = []
        for c, p in zip(source.clips, params, strict=True):
            known = [float(p["lowpass_cutoff_hz"])] if "lowpass_cutoff_hz" in p else []
            if c.lr_sr and c.lr_sr != c.sr:
                known.append(c.lr_sr / 2)
            if known:
                cuts.append(min(known))
        if kbps:
            out["bitrate_kbps"] = round(_gmean(kbps), 1)
        if cuts:
            out["cutoff_hz"] = round(_gmean(cuts), 1)
        return out
    if spec.mp3 is not None:
        out["bitrate_kbps"] = round(_gmean(spec.mp3.kbps.values), 1)
    cuts = []
    if spec.lowpass is not None:
        c = spec.lowpass.cutoff_hz
        cuts.append(_gmean([c.low, c.high]) if not hasattr(c, "values") else _gmean(c.values))
    if spec.resample is not None:
        cuts.append(_gmean([v / 2 for v in spec.resample.sr.values]))
    if cuts:
        out["cutoff_hz"] = round(min(cuts), 1)
    return out
