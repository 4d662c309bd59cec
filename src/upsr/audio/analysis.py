"""Bandwidth analysis: spectral roll-off, band edge, effective cutoff, source bitrate/codec.

Pure functions on arrays (``[C, T]`` or ``[T]`` float, or a list of such excerpts of one file,
whose spectra are summed so that joins never add clicks), plus :func:`estimate_bitrate`, which
also reads a compressed file's container header. All spectra are computed in float64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from upsr.audio.spectral import hann
from upsr.errors import UsageError

Signal = np.ndarray | Sequence[np.ndarray]

ROLLOFF_N_FFT = 2048  # AudioSR's cut-off detector (n_fft 2048; hop 480 at 48 kHz ~ 512)
ROLLOFF_HOP = 512
EDGE_N_FFT = 8192  # band edge: finer bins (5.4 Hz at 44.1 kHz) so the edge is not smeared
EDGE_HOP = 2048

# A file is "band-limited" (worth restoring) when nothing above FULL_BAND_HZ survives: CD audio
# reaches 20-22 kHz, LAME stops at 19.6 kHz for 224/256 kbps stereo and at 18.9 kHz for
# 192 kbps. The rule is absolute, not relative to the file's Nyquist: a 16 kHz or 24 kHz file
# lacks the top of the audible band whatever it holds, and is what a restorer is for.
FULL_BAND_HZ = 19000.0

# LAME lowpass per CBR bitrate, measured (not LAME's documented nominal values): 4 s of white
# Gaussian noise (RMS 0.25) as int16 at the input rate, encoded with lameenc (LAME 3.100,
# quality 2, CBR; LAME picks its own output rate at low bitrates), decoded with libsndfile,
# then band_edge_hz (-70 dB, n_fft 8192) of the decoded audio, rounded to 10 Hz.
# Rows: (input rate, channels, kbps, decoded rate, band edge Hz).
LAME_LOWPASS: tuple[tuple[int, int, int, int, int], ...] = (
    (44100, 1, 8, 8000, 3040), (44100, 1, 16, 16000, 5590), (44100, 1, 24, 16000, 5860),
    (44100, 1, 32, 22050, 8410), (44100, 1, 40, 24000, 10640), (44100, 1, 48, 32000, 11210),
    (44100, 1, 56, 32000, 15190), (44100, 1, 64, 44100, 16820), (44100, 1, 80, 44100, 20260),
    (44100, 1, 96, 44100, 20260), (44100, 1, 112, 44100, 20250), (44100, 1, 128, 44100, 20250),
    (44100, 1, 160, 44100, 20240), (44100, 1, 192, 44100, 20240), (44100, 1, 224, 44100, 20240),
    (44100, 1, 256, 44100, 20240), (44100, 1, 320, 44100, 20240),
    (44100, 2, 8, 8000, 2030), (44100, 2, 16, 8000, 3650), (44100, 2, 24, 8000, 3920),
    (44100, 2, 32, 16000, 5590), (44100, 2, 40, 16000, 7080), (44100, 2, 48, 22050, 7710),
    (44100, 2, 56, 24000, 9890), (44100, 2, 64, 24000, 11020), (44100, 2, 80, 32000, 13700),
    (44100, 2, 96, 32000, 15190), (44100, 2, 112, 44100, 15420), (44100, 2, 128, 44100, 16820),
    (44100, 2, 160, 44100, 17510), (44100, 2, 192, 44100, 18880), (44100, 2, 224, 44100, 19570),
    (44100, 2, 256, 44100, 19560), (44100, 2, 320, 44100, 20250),
    (48000, 1, 8, 8000, 3040), (48000, 1, 16, 16000, 5570), (48000, 1, 24, 16000, 5850),
    (48000, 1, 32, 22050, 8410), (48000, 1, 40, 24000, 10650), (48000, 1, 48, 32000, 11210),
    (48000, 1, 56, 32000, 15190), (48000, 1, 64, 48000, 16800), (48000, 1, 80, 48000, 20550),
    (48000, 1, 96, 48000, 20550), (48000, 1, 112, 48000, 20540), (48000, 1, 128, 48000, 20540),
    (48000, 1, 160, 48000, 20530), (48000, 1, 192, 48000, 20530), (48000, 1, 224, 48000, 20530),
    (48000, 1, 256, 48000, 20530), (48000, 1, 320, 48000, 20520),
    (48000, 2, 8, 8000, 2040), (48000, 2, 16, 8000, 3590), (48000, 2, 24, 8000, 3920),
    (48000, 2, 32, 16000, 5590), (48000, 2, 40, 16000, 7090), (48000, 2, 48, 22050, 7710),
    (48000, 2, 56, 24000, 9900), (48000, 2, 64, 24000, 11020), (48000, 2, 80, 32000, 13700),
    (48000, 2, 96, 32000, 15190), (48000, 2, 112, 44100, 15420), (48000, 2, 128, 48000, 16800),
    (48000, 2, 160, 48000, 17570), (48000, 2, 192, 48000, 19060), (48000, 2, 224, 48000, 19800),
    (48000, 2, 256, 48000, 19790), (48000, 2, 320, 48000, 20540),
)
# A measured edge matches a table row within this relative tolerance (or 150 Hz); rows within
# 1 % of the best match are indistinguishable (e.g. stereo 224/256) and all reported.
MATCH_TOLERANCE = 0.03
TIE_TOLERANCE = 0.01

COMPRESSED_SUBTYPES = {"MPEG_LAYER_I": "MP1", "MPEG_LAYER_II": "MP2", "MPEG_LAYER_III": "MP3",
                       "VORBIS": "Vorbis", "OPUS": "Opus"}


def _segments(x: Signal) -> list[np.ndarray]:
    """Excerpts as floating ``[C, T]`` arrays (a single array is one excerpt)."""
    parts = [x] if isinstance(x, np.ndarray) else list(x)
    if not parts:
        raise UsageError("no audio to analyse")
    # float32 stays float32 (no whole-file float64 copy); frames are promoted group by group
    return [np.atleast_2d(p if isinstance(p, np.ndarray) and p.dtype.kind == "f"
                          else np.asarray(p, dtype=np.float64)) for p in parts]


def spectrum_sum(x: Signal, n_fft: int, hop: int, power: bool,
                 center: bool = True) -> np.ndarray:
    """Sum over channels, excerpts and Hann STFT frames of ``|X|`` (``power=False``) or
    ``|X|^2`` (``power=True``). float64 ``[n_fft // 2 + 1]``.

    ``center=True`` reflect-pads the edges (torch/librosa, as AudioSR's detector).
    ``center=False`` uses only whole frames inside each excerpt: the window tapers every frame
    to zero, so an excerpt's abrupt start or end (or a reflection's kink) adds no broadband
    energy; an excerpt shorter than ``n_fft`` is analysed as one frame of the largest power of
    two that fits (at least 64), its spectrum interpolated onto the ``n_fft`` grid.
    Frames are transformed a few hundred at a time, so memory stays bounded for any length.
    """
    acc = np.zeros(n_fft // 2 + 1)
    for seg in _segments(x):
        length = seg.shape[-1]
        if length == 0:
            continue
        if center:
            seg = np.pad(seg, [(0, 0), (n_fft // 2, n_fft // 2)],
                         mode="reflect" if length > 1 else "constant")
            size = n_fft
        else:
            size = n_fft if length >= n_fft else max(64, 1 << (length.bit_length() - 1))
            if length < size:
                seg = np.pad(seg, [(0, 0), (0, size - length)])
        if seg.shape[-1] < size:
            seg = np.pad(seg, [(0, 0), (0, size - seg.shape[-1])])
        win = hann(size)
        step = hop if size == n_fft else size
        frames = np.lib.stride_tricks.sliding_window_view(seg, size, axis=-1)[:, ::step]
        part = np.zeros(size // 2 + 1)
        group = max(1, (1 << 22) // size)  # ~32 MB of complex frames per step
        for ch in range(frames.shape[0]):
            for g in range(0, frames.shape[1], group):
                mag = np.abs(np.fft.rfft(frames[ch, g:g + group] * win, axis=-1))  # float64
                part += (mag * mag if power else mag).sum(axis=0)
        if size != n_fft:  # coarser grid: spread onto the n_fft bins, keeping the total
            grid = np.linspace(0.0, 1.0, n_fft // 2 + 1)
            fine = np.interp(grid, np.linspace(0.0, 1.0, size // 2 + 1), part)
            part = fine * (part.sum() / max(fine.sum(), 1e-300))
        acc += part
    return acc


def rolloff_bin(mag_sum: np.ndarray, fraction: float = 0.985) -> int:
    """AudioSR's rule (Liu et al. 2023, ``_locate_cutoff_freq``): the largest bin whose
    cumulative magnitude is still below ``fraction`` of the total, scanning from the top; 0
    when no bin above DC qualifies (e.g. silence)."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"roll-off fraction must be in (0, 1], got {fraction}")
    cum = np.cumsum(mag_sum)
    below = np.nonzero(cum[1:] < fraction * cum[-1])[0]
    return int(below[-1] + 1) if below.size else 0


def rolloff_hz(x: Signal, sr: int, fraction: float = 0.985, n_fft: int = ROLLOFF_N_FFT,
               hop: int = ROLLOFF_HOP) -> float:
    """Spectral roll-off in Hz: ``bin * sr / n_fft`` for :func:`rolloff_bin` of the STFT
    magnitude summed over frames and channels (x: ``[C, T]``, ``[T]`` or a list of excerpts)."""
    return rolloff_bin(spectrum_sum(x, n_fft, hop, power=False), fraction) * sr / n_fft


def band_edge_bin(pow_sum: np.ndarray, floor_db: float = -70.0) -> int:
    """Lowest bin ``k`` such that the energy in bins ``>= k`` is below ``floor_db`` relative to
    the total; the number of bins (Nyquist + 1) when even the top bin is above the floor."""
    tail = np.cumsum(pow_sum[::-1])[::-1]  # tail[k] = energy at and above bin k
    total = tail[0]
    if total <= 0:
        return pow_sum.size
    quiet = np.nonzero(tail < total * 10.0 ** (floor_db / 10.0))[0]
    return int(quiet[0]) if quiet.size else pow_sum.size


def band_edge_hz(x: Signal, sr: int, floor_db: float = -70.0, n_fft: int = EDGE_N_FFT,
                 hop: int = EDGE_HOP) -> float:
    """Frequency above which less than ``floor_db`` (dB re the total) of the energy remains.

    Power spectrum of an un-centred Hann STFT (see :func:`spectrum_sum`) summed over frames
    and channels; Nyquist for silence or full-band audio. In Hz, at bin resolution ``sr / n_fft``.
    """
    pow_sum = spectrum_sum(x, n_fft, hop, power=True, center=False)
    if pow_sum.sum() <= 0:
        return sr / 2.0
    return min(band_edge_bin(pow_sum, floor_db) * sr / n_fft, sr / 2.0)


#: An edge this close to Nyquist, or at or above :data:`FULL_BAND_HZ`, counts as full band:
#: nothing is missing that a restorer could add without risking harm (what lies above is
#: mostly empty in real recordings too, and inventing it only adds error).
NEAR_NYQUIST_HZ = 1000.0


def lame_edge_hz(kbps: float, sr: int, channels: int) -> float | None:
    """The measured LAME low-pass (:data:`LAME_LOWPASS`) of the CBR bitrate nearest ``kbps``
    for audio decoded at ``sr`` with ``channels``; None when the table has no row for it."""
    ch = 1 if channels == 1 else 2
    rows = [r for r in LAME_LOWPASS if r[1] == ch and sr in (r[0], r[3])]
    if not rows or not kbps or not math.isfinite(kbps):
        return None
    return float(min(rows, key=lambda r: (abs(r[2] - kbps), r[0] != sr))[4])


def container_codec(info: Any) -> str | None:
    """"MP3", "Vorbis", ... when the container/stream header says so (``info``: an AudioInfo or
    anything with ``format`` and ``subtype``); None for PCM and unknown streams."""
    if info is None:
        return None
    subtype = (getattr(info, "subtype", None) or "").upper()
    fmt = (getattr(info, "format", None) or "").upper()
    return COMPRESSED_SUBTYPES.get(subtype) or ("MP3" if fmt == "MP3" else None)


def known_band_hz(x: Signal, sr: int, info: Any = None, floor_db: float = -70.0) -> float:
    """The band the file really has, in Hz: what a restorer must keep and may not touch.

    Rule: the -70 dB band edge (:func:`band_edge_hz`). When the container names a lossy codec
    (MP3, Vorbis; ``info`` an AudioInfo with a readable ``path``) whose bitrate the LAME table
    (:data:`LAME_LOWPASS`) maps to a low-pass above the measured edge, that low-pass is the
    edge: the codec kept everything up to it, so what is missing below it was never there
    (quiet music near the edge, speech with nothing above 17 kHz) and must not be invented.
    (A file transcoded from a narrower source, e.g. a 64 kbps MP3 re-encoded at 320 kbps, is
    then left alone: force ``--cutoff`` for those.)
    An edge within :data:`NEAR_NYQUIST_HZ` of Nyquist or at or above :data:`FULL_BAND_HZ` is
    Nyquist (full band, as :func:`is_band_limited` says: nothing to add).
    Unlike AudioSR's 0.985 roll-off (:func:`rolloff_hz`, several kHz below the edge on music and
    speech), everything below this frequency is real content of the file.
    """
    edge = band_edge_hz(x, sr, floor_db)
    codec = container_codec(info)
    path = getattr(info, "path", None)
    if codec is not None and path is not None and edge < sr / 2.0:
        frames = getattr(info, "frames", 0)
        kbps, _mode = _container_bitrate(os.fspath(path), codec, frames / max(sr, 1))
        channels = int(getattr(info, "channels", 2) or 2)
        table = lame_edge_hz(kbps, sr, channels) if kbps is not None else None
        if table is not None and table > edge:
            edge = table
    if edge >= min(sr / 2.0 - NEAR_NYQUIST_HZ, FULL_BAND_HZ):
        return sr / 2.0
    return edge


def effective_cutoff_hz(x: Signal, sr: int,
                        method: Literal["rolloff", "band_edge"] = "band_edge",
                        fraction: float = 0.985, floor_db: float = -70.0,
                        info: Any = None) -> float:
    """The input's cutoff in Hz: the band kept exactly and the start of what is rebuilt.

    ``band_edge`` (default): :func:`known_band_hz`, the band the file really has (the -70 dB
    edge, refined by the container's codec low-pass when ``info`` names one). ``rolloff``:
    AudioSR's 0.985 roll-off, its rule for *conditioning* its model, where a result below
    1 kHz (silence, or a near-empty file) gives Nyquist, as AudioSR does; it lies several kHz
    below the real edge on music and speech, so real content between the two is replaced:
    an explicit choice only.
    """
    if method == "rolloff":
        hz = rolloff_hz(x, sr, fraction)
        return sr / 2.0 if hz < 1000.0 else hz
    if method == "band_edge":
        return known_band_hz(x, sr, info, floor_db)
    raise UsageError(f"unknown cutoff method {method!r} (use 'rolloff' or 'band_edge')")


def is_band_limited(x: Signal, sr: int, floor_db: float = -70.0,
                    full_band_hz: float = FULL_BAND_HZ) -> tuple[bool, float]:
    """(worth restoring?, band edge in Hz). Limited when the band edge
    (:func:`band_edge_hz`) lies below ``full_band_hz``; digital silence is never limited."""
    pow_sum = spectrum_sum(x, EDGE_N_FFT, EDGE_HOP, power=True, center=False)
    if pow_sum.sum() <= 0:
        return False, sr / 2.0
    edge = min(band_edge_bin(pow_sum, floor_db) * sr / EDGE_N_FFT, sr / 2.0)
    return edge < full_band_hz, edge


@dataclass(frozen=True)
class BitrateEstimate:
    """Where the audio probably came from.

    kbps: the container's (average) bitrate, or the LAME CBR bitrate whose low-pass matches the
    measured edge (the lowest of ``candidates``); None when unknown. codec: "MP3", "Vorbis", ...
    or None. source: "container" (read from the file), "cutoff" (inferred from the spectrum),
    "none" (lossless and full band: nothing to infer). cutoff_hz: the measured band edge (or,
    without audio, the table's edge for the container bitrate; NaN when neither is known).
    """

    kbps: float | None
    codec: str | None
    source: Literal["container", "cutoff", "none"]
    cutoff_hz: float
    candidates: tuple[int, ...] = field(default=())
    mode: str | None = None  # "CBR", "VBR", "ABR" where the container says


def match_lame_bitrate(edge_hz: float, sr: int, channels: int) -> tuple[int, ...]:
    """LAME CBR bitrates (ascending) whose measured low-pass explains ``edge_hz`` for audio at
    ``sr`` with ``channels`` (rows whose input or decoded rate is ``sr``); () when none does."""
    ch = 1 if channels == 1 else 2
    rows = [r for r in LAME_LOWPASS if r[1] == ch and sr in (r[0], r[3])]
    if not rows or not math.isfinite(edge_hz):
        return ()
    best = min(rows, key=lambda r: abs(r[4] - edge_hz))
    if abs(best[4] - edge_hz) > max(MATCH_TOLERANCE * best[4], 150.0):
        return ()
    ties = {r[2] for r in rows if abs(r[4] - best[4]) <= TIE_TOLERANCE * best[4]}
    return tuple(sorted(ties))


def _container_bitrate(path: str, codec: str, duration_s: float) -> tuple[float | None, str | None]:
    """(kbps, mode) from the header: mutagen for MP3/Vorbis, else size / duration."""
    kbps: float | None = None
    mode: str | None = None
    try:
        if codec == "MP3":
            from mutagen.mp3 import MP3, BitrateMode

            info: Any = MP3(path).info
            kbps = info.bitrate / 1000.0 if info.bitrate else None
            mode = {BitrateMode.CBR: "CBR", BitrateMode.VBR: "VBR",
                    BitrateMode.ABR: "ABR"}.get(info.bitrate_mode)
        elif codec == "Vorbis":
            from mutagen.oggvorbis import OggVorbis

            info = OggVorbis(path).info
            kbps = info.bitrate / 1000.0 if info.bitrate else None
    except Exception:  # mutagen cannot parse every stream libsndfile decodes; fall back below
        kbps = None
    if kbps is None and duration_s > 0:
        try:
            kbps = os.path.getsize(path) * 8.0 / duration_s / 1000.0
        except OSError:
            kbps = None
    return kbps, mode


def estimate_bitrate(path_or_info: Any = None, x: Signal | None = None,
                     sr: int | None = None,
                     band: tuple[bool, float] | None = None) -> BitrateEstimate:
    """Estimate the source bitrate/codec of one file.

    path_or_info: a path, an ``upsr.audio.io.AudioInfo`` (anything with ``path``, ``format``,
    ``subtype``, ``sr``, ``channels``, ``frames``) or None. x: the audio (or excerpts) at
    ``sr`` for the spectral estimate; ``band``: :func:`is_band_limited` of that audio when
    already computed, so that it is not analysed twice.
    Rule: a compressed container (MP3, Ogg Vorbis/Opus) gives the codec and its bitrate from
    the header; otherwise, if the band edge is below full band (:func:`is_band_limited`), the
    LAME table gives the bitrate whose low-pass matches the edge (codec None: a low-pass alone
    does not tell which codec, if any, made it; no match: kbps None too); a full-band lossless
    file gives "none".
    """
    info = path_or_info
    if isinstance(path_or_info, (str, os.PathLike)):
        from upsr.audio import io

        info = io.info(os.fspath(path_or_info))
    if sr is None:
        sr = getattr(info, "sr", None)
    if (x is not None or band is not None) and sr is None:
        raise UsageError("estimate_bitrate: sr is required with audio")
    channels = (_segments(x)[0].shape[0] if x is not None else getattr(info, "channels", 2))

    edge = float("nan")
    limited = False
    if band is not None:
        limited, edge = band
    elif x is not None and sr is not None:
        limited, edge = is_band_limited(x, sr)

    codec = container_codec(info)
    if codec is not None and info is not None:
        frames = getattr(info, "frames", 0)
        info_sr = getattr(info, "sr", 0) or 1
        kbps, mode = _container_bitrate(os.fspath(info.path), codec, frames / info_sr)
        if math.isnan(edge) and codec == "MP3" and kbps is not None:
            rows = [r for r in LAME_LOWPASS if r[1] == min(channels, 2) and r[0] == info_sr]
            if rows:
                edge = float(min(rows, key=lambda r: abs(r[2] - kbps))[4])
        return BitrateEstimate(kbps=kbps, codec=codec, source="container", cutoff_hz=edge,
                               mode=mode)
    if (x is None and band is None) or sr is None:
        return BitrateEstimate(kbps=None, codec=None, source="none", cutoff_hz=edge)
    if not limited:
        return BitrateEstimate(kbps=None, codec=None, source="none", cutoff_hz=edge)
    cands = match_lame_bitrate(edge, sr, channels)
    if not cands:
        return BitrateEstimate(kbps=None, codec=None, source="cutoff", cutoff_hz=edge)
    # a LAME-like edge names no codec: Vorbis, AAC, a resampler or a filter leave the same
    # kind of low-pass; the codec is named only when the container says so
    return BitrateEstimate(kbps=float(cands[0]), codec=None, source="cutoff", cutoff_hz=edge,
                           candidates=cands)


# ----------------------------------------------------------------------------- whole files

#: Files up to this long are analysed whole; longer ones through evenly spaced excerpts.
PROBE_WHOLE_S = 60.0
PROBE_EXCERPTS = 12
PROBE_EXCERPT_S = 5.0
PEAK_BLOCK_FRAMES = 1 << 16


def excerpt_starts(frames: int, sr: int, count: int = PROBE_EXCERPTS,
                   excerpt_s: float = PROBE_EXCERPT_S) -> list[tuple[int, int]]:
    """(start, length) in frames of ``count`` excerpts of ``excerpt_s`` seconds whose centres
    sit at ``(i + 1/2) / count`` of the file: an even sample of a long file that skips the
    fade-in and fade-out. The whole file when it is not longer than all excerpts together."""
    length = int(round(excerpt_s * sr))
    if frames <= count * length:
        return [(0, frames)]
    out = []
    for i in range(count):
        centre = (2 * i + 1) * frames // (2 * count)
        start = min(max(centre - length // 2, 0), frames - length)
        out.append((start, length))
    return out


def _loudness_lufs(segments: list[np.ndarray], sr: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4 via pyloudnorm) of the excerpts joined end to end;
    None when shorter than one 400 ms gating block; -inf for digital silence."""
    import pyloudnorm

    x = np.concatenate([np.atleast_2d(s) for s in segments], axis=-1).astype(np.float64)
    if x.shape[-1] < int(0.4 * sr) + 1 or x.shape[0] > 5:
        return None
    try:
        value = pyloudnorm.Meter(sr).integrated_loudness(x.T if x.shape[0] > 1 else x[0])
    except ValueError:  # pyloudnorm refuses inputs shorter than its block
        return None
    return float(value)


def probe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``upsr probe`` reports for one file (reads it; AudioError if unreadable).

    Rule for long files: up to :data:`PROBE_WHOLE_S` seconds the whole file is analysed; a
    longer file is read once block by block for the exact peak, and its spectrum and loudness
    come from :data:`PROBE_EXCERPTS` excerpts of :data:`PROBE_EXCERPT_S` s spread evenly over
    it (:func:`excerpt_starts`; at most 60 s decoded for analysis whatever the length).
    Keys: path, format, subtype, sr, channels, frames, duration_s, peak_dbfs, loudness_lufs,
    rolloff_hz, band_edge_hz, band_limited, codec, bitrate_kbps, bitrate_candidates,
    bitrate_mode, bitrate_source, analysed_s, excerpts.
    """
    from upsr.audio import io

    info = io.info(path)
    if info.frames <= 0:
        from upsr.errors import AudioError

        raise AudioError(f"{info.path}: no audio frames (0 samples)")
    spans = excerpt_starts(info.frames, info.sr) if info.duration_s > PROBE_WHOLE_S \
        else [(0, info.frames)]
    segments = [io.read(path, start=s, frames=n).samples for s, n in spans]
    if len(spans) == 1 and spans[0] == (0, info.frames):
        peak = max(float(np.max(np.abs(s))) for s in segments)
    else:
        peak = 0.0
        for block in io.iter_blocks(path, PEAK_BLOCK_FRAMES):
            peak = max(peak, float(np.max(np.abs(block))))
    sr = info.sr
    limited, edge = is_band_limited(segments, sr)
    estimate = estimate_bitrate(info, segments, sr, band=(limited, edge))
    return {
        "path": str(info.path), "format": info.format, "subtype": info.subtype, "sr": sr,
        "channels": info.channels, "frames": info.frames, "duration_s": info.duration_s,
        "peak_dbfs": 20.0 * math.log10(peak) if peak > 0 else float("-inf"),
        "loudness_lufs": _loudness_lufs(segments, sr),
        "rolloff_hz": rolloff_hz(segments, sr),
        "band_edge_hz": edge,
        "band_limited": limited,
        "codec": estimate.codec,
        "bitrate_kbps": estimate.kbps,
        "bitrate_candidates": list(estimate.candidates),
        "bitrate_mode": estimate.mode,
        "bitrate_source": estimate.source,
        "analysed_s": sum(n for _, n in spans) / sr,
        "excerpts": len(spans),
    }
