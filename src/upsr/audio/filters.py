"""Low-pass filters used to simulate band-limited audio (and to band-limit on purpose).

The IIR designs are scipy's classic prototypes (Butterworth, Chebyshev I/II, elliptic, Bessel)
in second-order sections only: the transfer-function (``ba``) form loses its poles to rounding
at high orders and low cutoffs (a 16th-order Butterworth at 50 Hz / 48 kHz has poles outside
the unit circle once expanded into a polynomial), while cascaded biquads stay stable. This is
the family of filters used by NVSR/AudioSR-style degradation pipelines (Liu et al., 2022,
"Neural Vocoder is All You Need for Speech Super-resolution", sec. 3.1) and by AERO's
evaluation protocol (order-8 Chebyshev I).

``boxcar`` is the ideal brick wall: the whole signal's spectrum above the cutoff is set to zero
(one FFT over the full length, so it is exactly zero-phase and leaves no energy above the
cutoff, at the price of time-domain ringing).

``cutoff_hz`` means what scipy's ``Wn`` means for each design: the -3 dB point for Butterworth,
the edge of the ripple band for Chebyshev I and elliptic, the start of the stop band (first
reaching ``stop_db``) for Chebyshev II, and for Bessel the phase-normalised frequency
(``bessel_norm="phase"``, scipy's default) or the -3 dB point (``"mag"``).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from upsr.errors import UsageError

KINDS = ("butter", "cheby1", "cheby2", "ellip", "bessel", "boxcar")
IIR_KINDS = KINDS[:-1]
MAX_ORDER = 16


def _check(kind: str, order: int, cutoff_hz: float, sr: float) -> str:
    k = str(kind).lower()
    if k not in KINDS:
        raise UsageError(f"unknown low-pass kind {kind!r}; use one of {', '.join(KINDS)}")
    if sr <= 0:
        raise UsageError(f"sample rate must be > 0 (got {sr})")
    if not 0 < cutoff_hz < sr / 2:
        raise UsageError(f"low-pass cutoff {cutoff_hz:g} Hz must be above 0 and below the "
                         f"Nyquist frequency {sr / 2:g} Hz (sample rate {sr:g} Hz)")
    if k != "boxcar" and (int(order) != order or not 1 <= order <= MAX_ORDER):
        raise UsageError(f"low-pass order must be an integer from 1 to {MAX_ORDER} "
                         f"(got {order})")
    return k


def design_lowpass(kind: str, order: int, cutoff_hz: float, sr: float, ripple_db: float = 0.1,
                   stop_db: float = 60.0, bessel_norm: str = "phase") -> np.ndarray:
    """Second-order sections ``[n_sections, 6]`` of a digital low-pass (bilinear transform).

    ``ripple_db``: pass-band ripple of ``cheby1``/``ellip``; ``stop_db``: minimum stop-band
    attenuation of ``cheby2``/``ellip``. ``boxcar`` has no SOS form (use :func:`lowpass`).
    Raises :class:`UsageError` for an unknown kind, an order outside 1..16 or a cutoff not
    strictly between 0 and ``sr / 2``.
    """
    k = _check(kind, order, cutoff_hz, sr)
    if k == "boxcar":
        raise UsageError("boxcar is an ideal FFT brick wall and has no SOS design; "
                         "call lowpass(..., kind='boxcar')")
    if k in ("cheby1", "ellip") and ripple_db <= 0:
        raise UsageError(f"pass-band ripple must be > 0 dB (got {ripple_db})")
    if k in ("cheby2", "ellip") and stop_db <= 0:
        raise UsageError(f"stop-band attenuation must be > 0 dB (got {stop_db})")
    n, wn, fs = int(order), float(cutoff_hz), float(sr)
    if k == "butter":
        sos = signal.butter(n, wn, btype="low", output="sos", fs=fs)
    elif k == "cheby1":
        sos = signal.cheby1(n, ripple_db, wn, btype="low", output="sos", fs=fs)
    elif k == "cheby2":
        sos = signal.cheby2(n, stop_db, wn, btype="low", output="sos", fs=fs)
    elif k == "ellip":
        sos = signal.ellip(n, ripple_db, stop_db, wn, btype="low", output="sos", fs=fs)
    else:
        if bessel_norm not in ("phase", "mag", "delay"):
            raise UsageError(f"bessel_norm must be phase, mag or delay (got {bessel_norm!r})")
        sos = signal.bessel(n, wn, btype="low", output="sos", fs=fs, norm=bessel_norm)
    if section_pole_radius(sos) >= 1.0:  # pragma: no cover - SOS keeps them inside
        raise UsageError(f"{k} order {n} at {cutoff_hz:g} Hz is numerically unstable")
    return sos


def section_pole_radius(sos: np.ndarray) -> float:
    """Largest pole magnitude over the biquads' denominators (< 1 means stable).

    Computed per section, never from the expanded polynomial (which is the unstable form).
    """
    return max((float(np.max(np.abs(np.roots(a)))) for a in sos[:, 3:] if np.any(a[1:])),
               default=0.0)


def brickwall(x: np.ndarray, sr: float, cutoff_hz: float) -> np.ndarray:
    """Zero every FFT bin above ``cutoff_hz`` of ``x`` ``[..., T]`` (whole-signal FFT).

    Computed in float64; returns ``x``'s float dtype (float32 for non-float input).
    """
    x = np.asarray(x)
    spec = np.fft.rfft(x.astype(np.float64, copy=False), axis=-1)
    spec[..., np.fft.rfftfreq(x.shape[-1], 1.0 / sr) > cutoff_hz] = 0.0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1).astype(_out_dtype(x), copy=False)


def _out_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)


def apply_sos(sos: np.ndarray, x: np.ndarray, zero_phase: bool = True) -> np.ndarray:
    """Filter ``x`` ``[..., T]`` along time with ``sos``, forward-backward or causally.

    Zero-phase (``sosfiltfilt``) squares the magnitude response and has no delay; its edges
    use odd padding of up to ``3 * (2 * n_sections + 1)`` samples, shortened for short
    inputs. Causal (``sosfilt``) starts from rest and delays by the filter's group delay.
    Runs in float64 (biquads in float32 lose the low-cutoff poles) and returns ``x``'s dtype.
    """
    x = np.asarray(x)
    t = x.shape[-1]
    xf = x.astype(np.float64, copy=False)
    if t == 0:
        return x.astype(_out_dtype(x))
    if zero_phase:
        padlen = min(3 * (2 * len(sos) + 1), t - 1)
        y = signal.sosfiltfilt(sos, xf, axis=-1, padlen=padlen)
    else:
        y = signal.sosfilt(sos, xf, axis=-1)
    return y.astype(_out_dtype(x), copy=False)


def lowpass(x: np.ndarray, sr: float, cutoff_hz: float, kind: str = "cheby1", order: int = 8,
            zero_phase: bool = True, ripple_db: float = 0.1, stop_db: float = 60.0,
            bessel_norm: str = "phase") -> np.ndarray:
    """Low-pass ``x`` ``[..., T]`` (time last) at ``cutoff_hz``; returns the same shape.

    ``kind`` is one of :data:`KINDS`; IIR kinds are designed by :func:`design_lowpass` and
    applied by :func:`apply_sos` (``zero_phase`` picks forward-backward or causal filtering).
    ``boxcar`` is the ideal FFT brick wall and is zero-phase whatever ``zero_phase`` says.
    """
    k = _check(kind, order, cutoff_hz, sr)
    if k == "boxcar":
        return brickwall(x, sr, cutoff_hz)
    sos = design_lowpass(k, order, cutoff_hz, sr, ripple_db=ripple_db, stop_db=stop_db,
                         bessel_norm=bessel_norm)
    return apply_sos(sos, x, zero_phase=zero_phase)
