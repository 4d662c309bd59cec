"""Objective metrics for bandwidth extension on numpy arrays (float64 inside, no torch).

Every function takes ``ref`` and ``est`` of the same shape, ``[T]`` or ``[C, T]`` at one rate,
scores each channel and returns the mean over channels. Values in dB are capped at
:data:`MAX_DB` (a perfect estimate would otherwise be +inf, which tables and JSON cannot hold).
"""

from __future__ import annotations

import math

import numpy as np

from upsr.audio.spectral import stft
from upsr.errors import UsageError

MAX_DB = 200.0
LSD_EPS = 1e-8

# LSD variants in the literature (they differ; always report which one).
# aero: AERO / AEROMamba repos (Mandel et al. 2023), torch.stft n_fft 2048, hop 512, Hann,
#   centred (reflect); Wave-U-Mamba uses the same sizes. nuwave: NU-Wave / NU-Wave 2 /
#   MambaWave, n_fft 1024, hop 256.
LSD_VARIANTS: dict[str, tuple[int, int]] = {"aero": (2048, 512), "nuwave": (1024, 256)}


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    e = np.atleast_2d(np.asarray(est, dtype=np.float64))
    if r.shape != e.shape:
        raise UsageError(f"reference shape {r.shape} != estimate shape {e.shape}")
    if r.ndim != 2 or r.shape[-1] == 0:
        raise UsageError(f"expected [T] or [C, T] audio with T > 0, got shape {r.shape}")
    return r, e


def _db(num: float, den: float) -> float:
    """10 log10(num / den), capped to [-MAX_DB, MAX_DB]; 0/0 counts as perfect."""
    cap = 10.0 ** (MAX_DB / 10.0)
    if den <= num / cap or (num == 0.0 and den == 0.0):
        return MAX_DB
    if num <= den / cap:
        return -MAX_DB
    return 10.0 * math.log10(num / den)


def log_power_spec(x: np.ndarray, n_fft: int = 2048, hop: int = 512,
                   center: bool = True) -> np.ndarray:
    """``log10(max(|STFT(x)|^2, 1e-8))``: x ``[C, T]`` -> float64 ``[C, F, frames]``."""
    spec = stft(x, n_fft, hop, center=center)
    return np.log10(np.maximum(spec.real ** 2 + spec.imag ** 2, LSD_EPS))


def _lsd_bins(ref: np.ndarray, est: np.ndarray, n_fft: int, hop: int, lo: int, hi: int | None,
              center: bool) -> float:
    r, e = _pair(ref, est)
    diff = log_power_spec(e, n_fft, hop, center) - log_power_spec(r, n_fft, hop, center)
    diff = diff[:, lo:hi, :]
    if diff.shape[1] == 0:
        raise UsageError("no frequency bins in the requested LSD band")
    # RMS over frequency, then mean over frames, then over channels.
    return float(np.mean(np.sqrt(np.mean(diff * diff, axis=1)), axis=-1).mean())


def lsd(ref: np.ndarray, est: np.ndarray, n_fft: int = 2048, hop: int = 512,
        center: bool = True) -> float:
    """Log-spectral distance (AERO's definition; Mandel et al. 2023, eq. in sec. 4.2):

        LSD = mean_frames sqrt( mean_bins ( log10 P_est - log10 P_ref )^2 )

    with ``P = max(|STFT|^2, 1e-8)`` of a periodic-Hann, centred (reflect-padded) STFT,
    n_fft 2048, hop 512; then the mean over channels. ``n_fft=1024, hop=256`` is NU-Wave's.
    Unitless (log10 power, i.e. bels); 0 for identical signals.
    """
    return _lsd_bins(ref, est, n_fft, hop, 0, None, center)


def cutoff_bin(sr: int, cutoff_hz: float, n_fft: int) -> int:
    """First STFT bin of the high band: ``round(cutoff_hz * n_fft / sr)``, clamped to the
    spectrum (bins below it are LSD-LF, bins from it up are LSD-HF)."""
    if not 0 < cutoff_hz < sr / 2:
        raise UsageError(f"cutoff {cutoff_hz:g} Hz must lie between 0 and Nyquist ({sr / 2:g})")
    return int(min(max(round(cutoff_hz * n_fft / sr), 1), n_fft // 2))


def lsd_hf(ref: np.ndarray, est: np.ndarray, sr: int, cutoff_hz: float, n_fft: int = 2048,
           hop: int = 512, center: bool = True) -> float:
    """LSD over the bins at and above the cutoff (the band the restorer had to invent)."""
    return _lsd_bins(ref, est, n_fft, hop, cutoff_bin(sr, cutoff_hz, n_fft), None, center)


def lsd_lf(ref: np.ndarray, est: np.ndarray, sr: int, cutoff_hz: float, n_fft: int = 2048,
           hop: int = 512, center: bool = True) -> float:
    """LSD over the bins below the cutoff (the band the restorer was given)."""
    return _lsd_bins(ref, est, n_fft, hop, 0, cutoff_bin(sr, cutoff_hz, n_fft), center)


def si_snr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SNR in dB (Le Roux et al. 2019, "SDR - half-baked or well done?",
    eq. 4), per channel on zero-mean signals: ``s = <est, ref> ref / |ref|^2``,
    ``SI-SNR = 10 log10(|s|^2 / |est - s|^2)``; mean over channels."""
    r, e = _pair(ref, est)
    r = r - r.mean(axis=-1, keepdims=True)
    e = e - e.mean(axis=-1, keepdims=True)
    vals = []
    for rc, ec in zip(r, e):
        rr = float(rc @ rc)
        if rr == 0.0:
            vals.append(MAX_DB if float(ec @ ec) == 0.0 else -MAX_DB)
            continue
        target = (float(ec @ rc) / rr) * rc
        noise = ec - target
        vals.append(_db(float(target @ target), float(noise @ noise)))
    return float(np.mean(vals))


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    """SNR in dB: ``10 log10(|ref|^2 / |ref - est|^2)`` per channel; mean over channels."""
    r, e = _pair(ref, est)
    return float(np.mean([_db(float(rc @ rc), float((rc - ec) @ (rc - ec)))
                          for rc, ec in zip(r, e)]))


def sdr(ref: np.ndarray, est: np.ndarray, filter_len: int = 512) -> float:
    """Signal-to-distortion ratio in dB, BSS Eval's single-source definition (Vincent, Gribonval
    & Fevotte 2006, eq. 3-5 with a time-invariant gain of ``filter_len`` taps, as mir_eval's
    ``bss_eval_sources``): ``s_target`` is the least-squares projection of ``est`` onto
    ``ref`` and its delays ``0 .. filter_len - 1``, and
    ``SDR = 10 log10(|s_target|^2 / |est - s_target|^2)``; mean over channels.
    Filtering the reference (an EQ, a delay shorter than ``filter_len``) is not penalised.
    """
    from scipy import fft as sfft
    from scipy.linalg import solve_toeplitz
    from scipy.signal import fftconvolve

    r, e = _pair(ref, est)
    n = r.shape[-1]
    taps = max(1, min(filter_len, n))
    # lags 0 .. taps-1 only: a circular correlation of n + taps - 1 points never wraps there
    size = 1 << (n + taps - 2).bit_length()
    vals = []
    for rc, ec in zip(r, e):
        rf = sfft.rfft(rc, size)
        auto = sfft.irfft(rf * np.conj(rf), size)[:taps]  # R[k] = sum_t r[t] r[t+k]
        cross = sfft.irfft(np.conj(rf) * sfft.rfft(ec, size), size)[:taps]  # sum r[t] e[t+k]
        if auto[0] == 0.0:
            vals.append(MAX_DB if float(ec @ ec) == 0.0 else -MAX_DB)
            continue
        # Tikhonov floor keeps the Toeplitz system solvable for band-limited (ill-conditioned)
        # references; 1e-10 of the energy changes the projection by far less than 0.01 dB.
        auto = auto.copy()
        auto[0] *= 1.0 + 1e-10
        coef = solve_toeplitz(auto, cross)
        target = fftconvolve(rc, coef)  # full length n + taps - 1, as BSS Eval
        noise = np.concatenate([ec, np.zeros(taps - 1)]) - target
        vals.append(_db(float(target @ target), float(noise @ noise)))
    return float(np.mean(vals))


def _need(module: str, metric: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{metric} needs the '{package}' package: pip install 'upsr[metrics]'"
                         ) from None


def pesq_wb(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO via the ``pesq`` package, on audio resampled to
    16 kHz (the only wide-band rate P.862.2 defines); mean over channels."""
    pesq = _need("pesq", "PESQ", "pesq")
    from upsr.audio.resample import resample

    r, e = _pair(ref, est)
    if sr != 16000:
        r = resample(r, sr, 16000).astype(np.float64)
        e = resample(e, sr, 16000).astype(np.float64)
    return float(np.mean([pesq.pesq(16000, rc, ec, "wb") for rc, ec in zip(r, e)]))


def stoi(ref: np.ndarray, est: np.ndarray, sr: int, extended: bool = False) -> float:
    """STOI (Taal et al. 2011; ``extended``: ESTOI, Jensen & Taal 2016) via ``pystoi``, which
    resamples to 10 kHz itself; mean over channels."""
    pystoi = _need("pystoi", "STOI", "pystoi")
    r, e = _pair(ref, est)
    return float(np.mean([pystoi.stoi(rc, ec, sr, extended=extended) for rc, ec in zip(r, e)]))


_VISQOL_APIS: dict[str, object] = {}


def _visqol_api(mode: str):
    """One initialised ``VisqolApi`` per mode (loading its SVR model takes a while)."""
    if mode not in _VISQOL_APIS:
        visqol_mod = _need("visqol", "ViSQOL", "visqol-python")
        api = visqol_mod.VisqolApi()
        try:
            api.create(mode=mode)
        except ImportError as exc:  # e.g. libsvm-official missing for the audio-mode model
            raise UsageError(f"ViSQOL cannot start: {str(exc).splitlines()[0]}") from None
        _VISQOL_APIS[mode] = api
    return _VISQOL_APIS[mode]


def visqol(ref: np.ndarray, est: np.ndarray, sr: int, mode: str = "audio") -> float:
    """ViSQOL v3 MOS-LQO (Chinen et al. 2020) via the pure-Python ``visqol-python`` package.

    ``audio`` mode works at 48 kHz, ``speech`` mode at 16 kHz (both signals are resampled);
    ViSQOL down-mixes channels itself, so the mono mean of each signal is scored. The package
    measures files, so both go through temporary float WAVs.
    """
    import tempfile
    from pathlib import Path

    import soundfile as sf

    from upsr.audio.resample import resample

    if mode not in ("audio", "speech"):
        raise UsageError(f"ViSQOL mode must be 'audio' or 'speech', got {mode!r}")
    rate = 48000 if mode == "audio" else 16000
    r, e = _pair(ref, est)
    r = resample(r.mean(axis=0), sr, rate)
    e = resample(e.mean(axis=0), sr, rate)
    api = _visqol_api(mode)
    with tempfile.TemporaryDirectory(prefix="upsr-visqol-") as tmp:
        ref_path, est_path = Path(tmp) / "ref.wav", Path(tmp) / "est.wav"
        sf.write(ref_path, r, rate, subtype="FLOAT")
        sf.write(est_path, e, rate, subtype="FLOAT")
        return float(api.measure(str(ref_path), str(est_path)).moslqo)


_EXTRA_MODULES = {"pesq": ("pesq", "PESQ", "pesq"), "stoi": ("pystoi", "STOI", "pystoi"),
                  "estoi": ("pystoi", "ESTOI", "pystoi"),
                  "visqol": ("visqol", "ViSQOL", "visqol-python")}


def require(name: str) -> None:
    """Fail early (UsageError, one line) when an optional metric's package is missing."""
    if name not in _EXTRA_MODULES:
        raise UsageError(f"unknown metric {name!r}; optional metrics are "
                         f"{', '.join(_EXTRA_MODULES)}")
    _need(*_EXTRA_MODULES[name])
    if name == "visqol":
        _visqol_api("audio")
