import math
import sys

import numpy as np
import pytest

from upsr.errors import UsageError
from upsr.eval import metrics
from upsr.eval.metrics import MAX_DB, lsd, lsd_hf, lsd_lf, sdr, si_snr, snr


def naive_lsd(ref, est, n_fft, hop, lo=0, hi=None):
    """Float64 LSD with nothing shared with the package: explicit periodic Hann, explicit
    reflect padding by index, one DFT per frame, Python loops over frames and channels."""
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    est = np.atleast_2d(np.asarray(est, dtype=np.float64))
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    pad = n_fft // 2

    def reflect(x):
        t = x.shape[0]
        idx = [abs(i) if i < 0 else (2 * (t - 1) - i if i >= t else i)
               for i in range(-pad, t + pad)]
        return x[idx]

    per_channel = []
    for r, e in zip(ref, est):
        pr, pe = reflect(r), reflect(e)
        frames = 1 + r.shape[0] // hop
        dists = []
        for m in range(frames):
            seg_r = pr[m * hop:m * hop + n_fft] * window
            seg_e = pe[m * hop:m * hop + n_fft] * window
            lr = np.log10(np.maximum(np.abs(np.fft.rfft(seg_r)) ** 2, 1e-8))
            le = np.log10(np.maximum(np.abs(np.fft.rfft(seg_e)) ** 2, 1e-8))
            d = (le - lr)[lo:hi]
            dists.append(math.sqrt(float(np.mean(d * d))))
        per_channel.append(sum(dists) / len(dists))
    return sum(per_channel) / len(per_channel)


def test_lsd_of_identical_signals_is_zero():
    x = np.random.default_rng(0).standard_normal((2, 8000))
    assert lsd(x, x) == 0.0
    assert lsd(x[0], x[0], 1024, 256) == 0.0


@pytest.mark.parametrize("n_fft,hop", [(2048, 512), (1024, 256)])
def test_lsd_matches_naive_float64_implementation(n_fft, hop):
    rng = np.random.default_rng(n_fft)
    ref = rng.standard_normal((2, 6007))
    est = ref + 0.3 * rng.standard_normal((2, 6007))
    est[:, 3000:3500] = 0.0  # silent stretch: exercises the 1e-8 floor
    ours = lsd(ref, est, n_fft, hop)
    assert ours == pytest.approx(naive_lsd(ref, est, n_fft, hop), rel=1e-10)
    assert lsd(ref[1], est[1], n_fft, hop) == pytest.approx(
        naive_lsd(ref[1], est[1], n_fft, hop), rel=1e-10)


def test_lsd_matches_aero_torch_formula():
    import torch
    rng = np.random.default_rng(1)
    ref, est = rng.standard_normal((2, 3, 9000))

    def spec(x):
        s = torch.stft(torch.from_numpy(x), 2048, 512,
                       window=torch.hann_window(2048, dtype=torch.float64), return_complex=True)
        return torch.log10(s.abs().square().clamp(1e-8))

    aero = (spec(est) - spec(ref)).square().mean(dim=1).sqrt().mean().item()
    assert lsd(ref, est) == pytest.approx(aero, rel=1e-10)


def test_lsd_hf_lf_split_at_cutoff_bin():
    sr, cutoff = 16000, 4000.0
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(5000)
    est = ref + 0.5 * rng.standard_normal(5000)
    k = round(cutoff * 2048 / sr)
    assert metrics.cutoff_bin(sr, cutoff, 2048) == k == 512
    assert lsd_hf(ref, est, sr, cutoff) == pytest.approx(naive_lsd(ref, est, 2048, 512, lo=k),
                                                         rel=1e-10)
    assert lsd_lf(ref, est, sr, cutoff) == pytest.approx(naive_lsd(ref, est, 2048, 512, hi=k),
                                                         rel=1e-10)
    with pytest.raises(UsageError):
        lsd_hf(ref, est, sr, 9000.0)


def _orthogonal_noise(ref, rng):
    """Zero-mean noise orthogonal to the (zero-mean) reference."""
    n = rng.standard_normal(ref.shape[-1])
    n -= n.mean()
    r = ref - ref.mean()
    return n - (n @ r) / (r @ r) * r


def test_si_snr_closed_forms():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(4000)
    assert si_snr(ref, 0.25 * ref) >= 150.0  # a scaled copy is perfect
    assert si_snr(ref, ref) == MAX_DB
    for target_db, scale in ((20.0, 1.0), (3.0, 0.5), (-10.0, 2.0)):
        noise = _orthogonal_noise(ref, rng)
        r = ref - ref.mean()
        noise *= math.sqrt((scale ** 2) * (r @ r) / (noise @ noise) / 10 ** (target_db / 10))
        assert si_snr(ref, scale * ref + noise) == pytest.approx(target_db, abs=1e-9)
    # offset-invariant (zero-mean), and the channel mean for [C, T]
    assert si_snr(ref, ref + 3.0) >= 150.0
    two = np.stack([ref, ref])
    est = np.stack([ref + _orthogonal_noise(ref, rng) * 0.0, ref])
    assert si_snr(two, est) >= 150.0


def test_snr_closed_form():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((2, 3000))
    noise = rng.standard_normal((2, 3000))
    expected = np.mean([10 * np.log10((r @ r) / (n @ n)) for r, n in zip(ref, noise)])
    assert snr(ref, ref + noise) == pytest.approx(expected, abs=1e-10)
    assert snr(ref, ref) == MAX_DB


def naive_sdr(ref, est, taps):
    """BSS Eval projection by explicit least squares on the matrix of delayed references."""
    n = ref.shape[0]
    basis = np.zeros((n + taps - 1, taps))
    for k in range(taps):
        basis[k:k + n, k] = ref
    target_est = np.concatenate([est, np.zeros(taps - 1)])
    coef, *_ = np.linalg.lstsq(basis, target_est, rcond=None)
    target = basis @ coef
    noise = target_est - target
    return 10 * np.log10((target @ target) / (noise @ noise))


def test_sdr_matches_least_squares_projection():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal(700)
    est = 0.7 * np.roll(ref, 3) + 0.2 * rng.standard_normal(700)
    assert sdr(ref, est, filter_len=16) == pytest.approx(naive_sdr(ref, est, 16), abs=1e-6)


def test_sdr_forgives_short_filters_but_not_noise():
    rng = np.random.default_rng(6)
    ref = np.concatenate([rng.standard_normal(4000), np.zeros(600)])
    filtered = np.convolve(ref, [0.0, 0.9, -0.3, 0.1])[:ref.size]  # delay + EQ, tail inside
    assert sdr(ref, filtered) > 100.0
    assert snr(ref, filtered) < 10.0
    noisy = ref + 0.1 * rng.standard_normal(ref.size)
    # the 512 free taps absorb about 512 / 4600 of white noise: ~0.5 dB above the SNR
    gain = sdr(ref, noisy) - snr(ref, noisy)
    assert 0.0 < gain < -10 * np.log10(1 - 2 * 512 / ref.size)


def test_bad_shapes_and_missing_extras(monkeypatch):
    with pytest.raises(UsageError):
        lsd(np.zeros(100), np.zeros(99))
    with pytest.raises(UsageError):
        si_snr(np.zeros((2, 0)), np.zeros((2, 0)))
    for name, module in (("pesq", "pesq"), ("stoi", "pystoi"), ("visqol", "visqol")):
        monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError
        with pytest.raises(UsageError, match="pip install"):
            metrics.require(name)
    with pytest.raises(UsageError):
        metrics.require("mos")
