"""upsr.audio.filters: measured responses equal scipy's designs, zero-phase has no delay,
causal filters delay, boxcar leaves nothing above the cutoff, bad cutoffs are usage errors,
and high orders at low cutoffs stay stable."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from upsr.audio import filters
from upsr.errors import UsageError

SR = 44100
N = 1 << 15


def _reference_sos(kind: str, order: int, cutoff: float, sr: float) -> np.ndarray:
    """The same design written independently: normalised Wn, zpk -> sos by hand."""
    wn = cutoff / (sr / 2)
    if kind == "butter":
        z, p, k = signal.butter(order, wn, output="zpk")
    elif kind == "cheby1":
        z, p, k = signal.cheby1(order, 0.1, wn, output="zpk")
    elif kind == "cheby2":
        z, p, k = signal.cheby2(order, 60.0, wn, output="zpk")
    elif kind == "ellip":
        z, p, k = signal.ellip(order, 0.1, 60.0, wn, output="zpk")
    else:
        z, p, k = signal.bessel(order, wn, output="zpk", norm="phase")
    return signal.zpk2sos(z, p, k)


def _measured_db(y: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """|FFT| of an impulse response in dB at ``freqs`` (nearest bins)."""
    spec = np.abs(np.fft.rfft(y))
    bins = np.round(freqs / (SR / 2) * (len(spec) - 1)).astype(int)
    return 20 * np.log10(np.maximum(spec[bins], 1e-300))


@pytest.mark.parametrize("kind", filters.IIR_KINDS)
@pytest.mark.parametrize("order", [2, 8])
def test_applied_response_matches_scipy_design(kind, order):
    cutoff = 4000.0
    # Frequencies on exact FFT bins: the cutoff and three stop-band points.
    df = SR / N
    freqs = np.round(np.array([cutoff, 1.5 * cutoff, 2 * cutoff, 3 * cutoff]) / df) * df
    _, h = signal.sosfreqz(_reference_sos(kind, order, cutoff, SR), worN=freqs, fs=SR)
    ref_db = 20 * np.log10(np.abs(h))

    impulse = np.zeros(N)
    impulse[0] = 1.0
    causal = filters.lowpass(impulse, SR, cutoff, kind=kind, order=order, zero_phase=False)
    got = _measured_db(causal, freqs)
    # Compare where the response is above the float64 noise floor of the measurement.
    keep = ref_db > -200
    np.testing.assert_allclose(got[keep], ref_db[keep], atol=0.05)

    # Forward-backward squares the magnitude: twice the dB, measured on a centred impulse.
    centred = np.roll(impulse, N // 2)
    zp = filters.lowpass(centred, SR, cutoff, kind=kind, order=order, zero_phase=True)
    got_zp = _measured_db(zp, freqs)
    keep = 2 * ref_db > -200
    np.testing.assert_allclose(got_zp[keep], 2 * ref_db[keep], atol=0.1)


def test_cutoff_semantics_at_the_cutoff():
    """Known values at the cutoff: -3.01 dB Butterworth, -ripple for Cheby I/ellip,
    -stop_db for Cheby II."""
    impulse = np.zeros(N)
    impulse[0] = 1.0
    cutoff = 8 * SR / N * 256  # exactly on a bin
    expect = {"butter": -3.0103, "cheby1": -0.1, "ellip": -0.1, "cheby2": -60.0}
    for kind, db in expect.items():
        y = filters.lowpass(impulse, SR, cutoff, kind=kind, order=6, zero_phase=False)
        assert _measured_db(y, np.array([cutoff]))[0] == pytest.approx(db, abs=0.02)


@pytest.mark.parametrize("kind", filters.IIR_KINDS)
def test_zero_phase_has_no_delay(kind):
    impulse = np.zeros(4001)
    impulse[2000] = 1.0
    y = filters.lowpass(impulse, SR, 3000.0, kind=kind, order=8, zero_phase=True)
    np.testing.assert_allclose(y[2001:], y[1999::-1], atol=1e-9)  # symmetric about the impulse
    x = np.random.default_rng(0).standard_normal(SR // 2)
    y = filters.lowpass(x, SR, 3000.0, kind=kind, order=8, zero_phase=True)
    lags = signal.correlation_lags(len(y), len(x))
    assert lags[np.argmax(signal.correlate(y, x))] == 0


@pytest.mark.parametrize("kind", filters.IIR_KINDS)
def test_causal_delays_and_is_causal(kind):
    impulse = np.zeros(4000)
    impulse[1000] = 1.0
    y = filters.lowpass(impulse, SR, 3000.0, kind=kind, order=8, zero_phase=False)
    assert np.all(y[:1000] == 0.0)  # nothing before the input
    energy = y**2
    centroid = np.sum(np.arange(len(y)) * energy) / np.sum(energy)
    assert centroid > 1000.5  # positive group delay
    # and it agrees with the design's group delay at low frequency (a few samples)
    sos = filters.design_lowpass(kind, 8, 3000.0, SR)
    b, a = signal.sos2tf(sos)
    _, gd = signal.group_delay((b, a), w=[100.0], fs=SR)
    assert np.argmax(np.abs(y)) - 1000 > 0 and gd[0] > 0


def test_boxcar_leaves_nothing_above_cutoff():
    x = np.random.default_rng(1).standard_normal((2, SR)).astype(np.float32)
    cutoff = 5000.0
    y = filters.lowpass(x, SR, cutoff, kind="boxcar")
    assert y.shape == x.shape and y.dtype == np.float32
    spec = np.abs(np.fft.rfft(y.astype(np.float64), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    above = spec[:, freqs > cutoff].sum() / spec.sum()
    assert above < 1e-10
    # and below the cutoff it is the input's spectrum (float32 rounding aside)
    xs = np.fft.rfft(x.astype(np.float64), axis=-1)
    below = freqs <= cutoff
    err = np.abs(np.fft.rfft(y.astype(np.float64), axis=-1)[:, below] - xs[:, below])
    assert err.max() / np.abs(xs).max() < 1e-5


@pytest.mark.parametrize("cutoff", [SR / 2, SR, 0.0, -5.0])
@pytest.mark.parametrize("kind", filters.KINDS)
def test_bad_cutoff_is_usage_error(kind, cutoff):
    with pytest.raises(UsageError, match="Nyquist"):
        filters.lowpass(np.zeros(100), SR, cutoff, kind=kind)


def test_other_bad_arguments():
    for order in (0, 17, 2.5):
        with pytest.raises(UsageError, match="order"):
            filters.design_lowpass("butter", order, 1000.0, SR)
    with pytest.raises(UsageError, match="kind"):
        filters.lowpass(np.zeros(100), SR, 1000.0, kind="gauss")
    with pytest.raises(UsageError, match="SOS"):
        filters.design_lowpass("boxcar", 8, 1000.0, SR)


@pytest.mark.parametrize("kind", filters.IIR_KINDS)
def test_high_order_low_cutoff_is_stable(kind):
    sr = 48000
    sos = filters.design_lowpass(kind, 16, 50.0, sr)
    assert filters.section_pole_radius(sos) < 1.0
    assert max(np.abs(np.roots(a)).max() for a in sos[:, 3:]) < 1.0
    x = np.random.default_rng(2).standard_normal(sr).astype(np.float32)
    for zero_phase in (True, False):
        y = filters.lowpass(x, sr, 50.0, kind=kind, order=16, zero_phase=zero_phase)
        assert np.isfinite(y).all()
        assert np.max(np.abs(y)) < 2 * np.max(np.abs(x))
    # The polynomial (ba) form of the same Butterworth is not: a pole leaves the unit circle.
    _, a = signal.butter(16, 50.0, fs=sr)
    assert np.max(np.abs(np.roots(a))) > 1.0


def test_shapes_dtypes_and_short_inputs():
    x = np.random.default_rng(3).standard_normal((2, 3, 500)).astype(np.float32)
    y = filters.lowpass(x, SR, 2000.0, kind="ellip", order=12)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y[1, 2], filters.lowpass(x[1, 2], SR, 2000.0, kind="ellip",
                                                        order=12), atol=1e-6)
    short = filters.lowpass(np.ones(5), SR, 2000.0, order=16)  # shorter than the default pad
    assert short.shape == (5,) and np.isfinite(short).all()
    assert filters.lowpass(np.arange(10), SR, 2000.0).dtype == np.float32
