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
