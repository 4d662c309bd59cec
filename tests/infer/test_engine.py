import numpy as np
import pytest
import torch

from upsr.audio import synth
from upsr.infer.engine import EnhanceOptions, Job, Runner, enhance_array, restore_stream, run_jobs
from upsr.infer.stream import ArraySource


class Ident:
    name = "ident"
    in_rate = None
    out_rate = 16000
    channels = "mono"
    context_s = 0.0
    align = 1
    uses_cutoff = False

    def restore(self, x):
        return x.clone()


class Fir(Ident):
    """Known finite receptive field: a centred 129-tap FIR (64 samples each side)."""

    name = "fir"
    context_s = 64 / 16000

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.taps = torch.randn(1, 1, 129, generator=g, dtype=torch.float64)

    def restore(self, x):
        y = torch.nn.functional.conv1d(x[:, None].double(), self.taps, padding=64)[:, 0]
        return y.float()


class Up4(Ident):
    """in 4 kHz -> out 16 kHz, sample-and-hold: output length must be exactly 4x."""

    name = "up4"
    in_rate = 4000
    out_rate = 16000

    def restore(self, x):
        return x.repeat_interleave(4, dim=-1)


class Garbage(Ident):
    """Replaces everything with loud noise: only the splice can keep the low band."""

    name = "garbage"

    def restore(self, x):
        g = torch.Generator().manual_seed(x.shape[-1])
        return torch.randn(x.shape, generator=g)


OFF = dict(lf_replace=False)


@pytest.mark.parametrize("n", [7999, 8000, 8001, 11999, 12000, 12001, 1, 3])
def test_identity_is_bit_exact_around_chunk_boundaries(n):
    x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32) * 0.3
    y, sr = enhance_array(x, 16000, Ident(), cutoff_hz=None, detect_cutoff=False,
                          options=EnhanceOptions(chunk_s=0.25, overlap_s=0.0, **OFF))
    assert sr == 16000 and np.array_equal(x, y)


def test_finite_receptive_field_chunked_equals_whole():
    x = np.random.default_rng(1).standard_normal((2, 50000)).astype(np.float32)
    kw = dict(cutoff_hz=None, detect_cutoff=False)
    whole, _ = enhance_array(x, 16000, Fir(), options=EnhanceOptions(chunk_s=100, **OFF), **kw)
    chunked, _ = enhance_array(x, 16000, Fir(), options=EnhanceOptions(
        chunk_s=0.3, overlap_s=0.05, batch_size=3, **OFF), **kw)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_ratio_model_exact_length_and_seamless():
    x = np.random.default_rng(2).standard_normal((1, 12345)).astype(np.float32)
    y, sr = enhance_array(x, 4000, Up4(), cutoff_hz=None, detect_cutoff=False,
                          options=EnhanceOptions(chunk_s=0.5, overlap_s=0.1, **OFF))
    assert sr == 16000 and y.shape == (1, 4 * 12345)
    np.testing.assert_allclose(y, np.repeat(x, 4, axis=-1), atol=1e-6)


def test_input_is_resampled_to_model_rate_with_exact_length():
    x = synth.tilted_noise(1.0, 44100, channels=2, seed=3)
    y, sr = enhance_array(x, 44100, Ident(), cutoff_hz=None, detect_cutoff=False,
                          options=EnhanceOptions(**OFF))
    assert sr == 16000 and y.shape == (2, 16000)
    y2, sr2 = enhance_array(x, 44100, Ident(), cutoff_hz=None, detect_cutoff=False,
                            options=EnhanceOptions(out_sr=22050, **OFF))
    assert sr2 == 22050 and y2.shape == (2, 22050)


def test_low_band_splice_keeps_input_below_cutoff():
    x = synth.brickwall(synth.tilted_noise(2.0, 16000, channels=1, seed=4), 16000, 3000)
    y, _ = enhance_array(x, 16000, Garbage(), cutoff_hz=3000.0,
                         options=EnhanceOptions(chunk_s=0.5))
    # measure away from the file edges, where the model's noise starts abruptly (a step is
    # broadband, so no splice can keep it out of the low band there)
    w = np.zeros(x.shape[-1])
    w[1600:-1600] = np.hanning(x.shape[-1] - 3200)
    X, Y = np.fft.rfft(w * x[0]), np.fft.rfft(w * y[0])
    f = np.fft.rfftfreq(x.shape[-1], 1 / 16000)
    low = f < 3000 - 300
    err_db = 20 * np.log10(np.linalg.norm(Y[low] - X[low]) / np.linalg.norm(X[low]))
    assert err_db < -60
    high = f > 3000 + 300
    assert np.linalg.norm(Y[high]) > 10 * np.linalg.norm(X[high])  # the model's band is kept


def test_mid_side_round_trip_is_identity():
    x = synth.music_like(1.0, 16000, channels=2, seed=5)
    y, _ = enhance_array(x, 16000, Ident(), cutoff_hz=None, detect_cutoff=False,
                         options=EnhanceOptions(stereo="mid-side", **OFF))
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_jobs_are_batched_across_files_and_failures_stay_local():
    model = Ident()
    outs: dict[int, list] = {}

    class Boom(ArraySource):
        def blocks(self, n):
            yield self.x[:, :100]
            raise RuntimeError("decode failed")

    jobs = []
    for i in range(5):
        x = np.full((1, 3000), i, np.float32)
        src = Boom(x, 16000) if i == 2 else ArraySource(x, 16000)
        outs[i] = []
        gen = restore_stream(src, model, outs[i].append, None,
                             EnhanceOptions(chunk_s=10, **OFF))
        jobs.append(Job(i, gen, None, 16000))
    runner = Runner(model)
    results = {}
    run_jobs(jobs, runner, batch_size=8, on_done=lambda j, e: results.__setitem__(j.key, e))
    assert runner.calls == 1  # four one-chunk files in one forward pass
    assert isinstance(results[2], RuntimeError)
    for i in (0, 1, 3, 4):
        assert results[i] is None
        np.testing.assert_array_equal(np.concatenate(outs[i], -1), np.full((1, 3000), i))


def test_options_validation():
    with pytest.raises(ValueError):
        EnhanceOptions(chunk_s=0)
    with pytest.raises(ValueError):
        EnhanceOptions(stereo="surround")


# -- batching key, per-file retry, device, stereo models, limiter, the Protocol ------------------

class RateSpy(Ident):
    """Cutoff-aware identity that records, per call, the rate and the batch size it got."""

    name = "spy"
    out_rate = None
    min_out_rate = 8000
    uses_cutoff = True

    def __init__(self):
        self.calls = []

    def restore(self, x, cutoff_hz=None, sample_rate=None):
        self.calls.append((sample_rate, x.shape[0]))
        return x.clone()


def _jobs(model, signals, opts):
    outs, jobs = {}, []
    for key, (x, sr, cutoff) in signals.items():
        outs[key] = []
        gen = restore_stream(ArraySource(x, sr), model, outs[key].append, cutoff, opts)
        jobs.append(Job(key, gen, cutoff, sr))
    return outs, jobs


def test_rows_of_different_rates_never_share_a_batch():
    """Equal-length chunks of a 44.1 and a 48 kHz file: each forward pass gets one rate, and
    it is the rate of its rows (on main they shared one pass at the first row's rate)."""
    model = RateSpy()
    x = np.ones((1, 4000), np.float32)
    outs, jobs = _jobs(model, {"a": (x, 44100, 5000.0), "b": (x * 2, 48000, 5000.0),
                               "c": (x * 3, 44100, 5000.0)}, EnhanceOptions(**OFF))
    results = {}
    run_jobs(jobs, Runner(model), batch_size=8,
             on_done=lambda j, e: results.__setitem__(j.key, e))
    assert all(e is None for e in results.values())
    assert sorted(model.calls) == [(44100, 2), (48000, 1)]
    for key, scale in (("a", 1), ("b", 2), ("c", 3)):
        np.testing.assert_array_equal(np.concatenate(outs[key], -1), x * scale)


class NanOnTwo(Ident):
    """Produces NaN for any row whose first sample is 2 (file 2's rows), identity otherwise."""

    def restore(self, x):
        y = x.clone()
        y[x[:, 0] == 2] = float("nan")
        return y


def test_a_nan_row_fails_only_its_own_file():
    model = NanOnTwo()
    signals = {i: (np.full((1, 3000), i, np.float32), 16000, None) for i in range(4)}
    outs, jobs = _jobs(model, signals, EnhanceOptions(chunk_s=10, **OFF))
    results = {}
    run_jobs(jobs, Runner(model), batch_size=8,
             on_done=lambda j, e: results.__setitem__(j.key, e))
    assert isinstance(results[2], FloatingPointError)
    for i in (0, 1, 3):
        assert results[i] is None
        np.testing.assert_array_equal(np.concatenate(outs[i], -1), signals[i][0])


def test_enhance_array_moves_the_model_to_the_device():
    class Movable(Ident):
        device = "nowhere"

        def to(self, device):
            self.device = device
            return self

    m = Movable()
    enhance_array(np.zeros((1, 100), np.float32), 16000, m, detect_cutoff=False,
                  options=EnhanceOptions(**OFF), device="cpu")
    assert m.device == "cpu"


class SwapStereo(Ident):
    """A stereo model: takes ``[B, 2, T]`` and swaps the two channels."""

    name = "swap"
    channels = "stereo"

    def restore(self, x):
        assert x.dim() == 3 and x.shape[1] == 2, x.shape
        return x.flip(1)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_stereo_model_gets_channel_pairs(channels):
    x = np.random.default_rng(channels).standard_normal((channels, 5000)).astype(np.float32)
    y, _ = enhance_array(x, 16000, SwapStereo(), detect_cutoff=False,
                         options=EnhanceOptions(chunk_s=0.1, overlap_s=0.0, **OFF))
    want = x.copy()
    if channels >= 2:
        want[[0, 1]] = x[[1, 0]]  # the pair was swapped; a lone channel comes back as itself
    np.testing.assert_allclose(y, want, atol=1e-6)


def test_models_satisfy_the_model_protocol():
    from upsr.models import build
    from upsr.models.base import Model

    assert isinstance(build("sbr"), Model)
    assert isinstance(SwapStereo(), Model) is False  # no min_out_rate: not a full model


class Loud(Ident):
    """Adds ``0.6 sin(40 x)`` (broadband, memoryless, so chunking cannot change it) to its
    input: the splice keeps the input below the cutoff, this above."""

    name = "loud"

    def restore(self, x):
        return x + 0.6 * torch.sin(40 * x)


def test_limiter_lowers_only_the_added_band_and_never_clips():
    from upsr.infer.engine import LimiterStats

    t = np.arange(32000) / 16000
    loud = (t > 0.5) & (t < 0.8)  # the known band alone stays below full scale, always
    x = (np.where(loud, 0.9, 0.3) * np.sin(2 * np.pi * 200 * t))[None].astype(np.float32)
    stats = LimiterStats()
    opts = EnhanceOptions(chunk_s=0.4, overlap_s=0.05, ceiling=0.999)
    y, _ = enhance_array(x, 16000, Loud(), cutoff_hz=3000.0, options=opts, stats=stats)
    free, _ = enhance_array(x, 16000, Loud(), cutoff_hz=3000.0,
                            options=EnhanceOptions(chunk_s=0.4, overlap_s=0.05))
    assert np.abs(free).max() > 1.05         # without the limiter the sum passes full scale
    assert np.abs(y).max() <= 0.999 + 1e-6   # with it, never
    assert stats.events >= 1 and 0 < stats.seconds < 0.32 and stats.known_over == 0
    # the known band (below 3 kHz) is the input's, untouched by the limiter
    w = np.hanning(x.shape[-1])
    X, Y = np.fft.rfft(w * x[0]), np.fft.rfft(w * y[0])
    f = np.fft.rfftfreq(x.shape[-1], 1 / 16000)
    low = f < 2500
    assert np.linalg.norm(Y[low] - X[low]) / np.linalg.norm(X[low]) < 1e-3
    # the added band is only lowered where needed: away from the loud part it is as without
    quiet = (t < 0.49) | (t > 0.81)
    np.testing.assert_allclose(y[:, quiet], free[:, quiet], atol=1e-6)


def test_limit_gain_bound_against_a_naive_check():
    from upsr.infer.engine import limit_gain

    rng = np.random.default_rng(0)
    kept = 0.7 * np.sin(np.arange(5000) / 30.0)[None].repeat(2, 0)
    added = rng.standard_normal((2, 5000)) * 0.4
    g = limit_gain(kept, added, 0.95, reach=40)
    assert g.min() >= 0 and g.max() <= 1
    peak = np.abs(kept + g * added).max(axis=0)
    assert np.all(peak <= 0.95 + 1e-12)
    # and a gain of exactly one where no sample within the reach needed lowering
    over = (np.abs(kept + added) > 0.95).any(axis=0)
    near = np.convolve(over.astype(float), np.ones(2 * 80 + 1), mode="same") > 0
    assert np.all(g[~near] == 1.0)


def test_limiter_without_splice_leaves_the_input_alone():
    """Full-band input at full scale through a model that adds nothing: with no splice the
    whole input counts as known, so the limiter changes nothing (it only counts)."""
    from upsr.infer.engine import LimiterStats

    x = np.random.default_rng(3).uniform(-1, 1, (1, 8000)).astype(np.float32)
    x[0, 100] = 1.0
    stats = LimiterStats()
    y, _ = enhance_array(x, 16000, Ident(), detect_cutoff=False,
                         options=EnhanceOptions(ceiling=0.999, **OFF), stats=stats)
    assert np.array_equal(y, x)
    assert stats.known_over >= 1
