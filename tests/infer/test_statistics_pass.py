"""The whole-signal statistics pass: skipped only where it cannot change the output, and run
with at most ``batch_size`` rows per call.

A signal that is one chunk whose model input is the whole signal is normalised by its own
statistics in the plain call: that *is* whole-signal inference, and a pass would compute the
same statistics (in float64). Everywhere else (several chunks, a very short signal that a
model pads internally) the pass still runs.
"""

import numpy as np
import pytest
import torch

from tests.conftest import rel_l2
from upsr import models
from upsr.audio.synth import music_like
from upsr.infer import engine
from upsr.infer.engine import EnhanceOptions, Job, Runner, enhance_array, restore_stream, run_jobs
from upsr.infer.stream import ArraySource

KW = dict(cutoff_hz=None, detect_cutoff=False)


class RmsNorm:
    """A model with global statistics: each row divided by its RMS (the call's own, or the
    frozen whole-signal one), so the output shows which statistics it used."""

    name = "rmsnorm"
    in_rate = 1000
    out_rate = 1000
    channels = "mono"
    context_s = 0.0
    align = 1
    global_statistics = True

    def __init__(self):
        self.collected = 0
        self.frozen = None
        self.calls = []  # per call: statistics per row (None: the row's own)
        self.mixed = False  # a call got rows with and rows without statistics
        self.collect_rows = []  # rows per statistics call

    def collect_statistics(self, x, keep, last, acc, frozen):
        self.collected += 1
        self.collect_rows.append(x.shape[0])
        assert frozen is None or len(frozen) == x.shape[0]
        part = x[:, keep[0]:x.shape[-1] if last else keep[1]].double()
        sums = torch.stack([part.square().sum(-1), torch.full_like(part[:, 0], part.shape[-1])])
        return sums if acc is None else acc + sums

    @staticmethod
    def finish_statistics(acc):
        return [float(torch.sqrt(acc[0, r] / acc[1, r])) for r in range(acc.shape[1])]

    def use_statistics(self, rows):
        if rows is not None and any(r is None for r in rows):
            self.mixed = True
            raise ValueError("rows with and without statistics in one call")
        self.frozen = rows

    def restore(self, x):
        self.calls.append(self.frozen)
        if self.frozen:
            return x / torch.tensor(self.frozen, dtype=x.dtype)[:, None]
        return x / x.square().mean(-1, keepdim=True).sqrt()


def test_one_chunk_skips_the_pass_and_equals_the_own_statistics():
    x = music_like(3.0, 1000, channels=2, seed=1).astype(np.float32)
    x[1] *= 0.1
    m = RmsNorm()
    y, _ = enhance_array(x, 1000, m, options=EnhanceOptions(lf_replace=False), **KW)
    assert m.collected == 0 and m.calls == [None]
    own = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True))
    np.testing.assert_allclose(y, own, rtol=1e-6)
    # forced pass: the same output to float rounding
    engine.WHOLE_STATS_MIN_S, keep = float("inf"), engine.WHOLE_STATS_MIN_S
    try:
        forced, _ = enhance_array(x, 1000, m, options=EnhanceOptions(lf_replace=False), **KW)
    finally:
        engine.WHOLE_STATS_MIN_S = keep
    assert m.collected == 1 and m.calls[-1] is not None
    np.testing.assert_allclose(forced, y, rtol=1e-6)


def test_several_chunks_or_a_short_signal_still_run_the_pass():
    m = RmsNorm()
    x = music_like(3.0, 1000, channels=1, seed=2).astype(np.float32)
    enhance_array(x, 1000, m, options=EnhanceOptions(chunk_s=1.0, overlap_s=0.1,
                                                     lf_replace=False), **KW)
    assert m.collected == 3 and all(c is not None for c in m.calls)
    m = RmsNorm()
    enhance_array(x[:, :900], 1000, m, options=EnhanceOptions(lf_replace=False), **KW)
    assert m.collected == 1 and len(m.calls) == 1 and m.calls[0] is not None


def test_rows_with_and_without_statistics_never_share_a_call():
    """A one-chunk file (own statistics) and a chunked file (pass statistics) whose chunks
    have the same length are run side by side: their rows go to separate calls."""
    m = RmsNorm()
    opts = EnhanceOptions(chunk_s=1.0, overlap_s=0.1, lf_replace=False, batch_size=8)
    a = music_like(1.1, 1000, channels=1, seed=3).astype(np.float32)  # one chunk of 1100
    b = music_like(3.0, 1000, channels=1, seed=4).astype(np.float32)  # chunks of 1100
    outs: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    jobs = [Job(k, restore_stream(ArraySource(x, 1000), m, outs[k].append, None, opts),
                None, 1000) for k, x in (("a", a), ("b", b))]
    errors = []
    run_jobs(jobs, Runner(m), opts.batch_size, on_done=lambda j, e: errors.append(e))
    assert errors == [None, None] and not m.mixed
    assert None in m.calls and any(c is not None for c in m.calls)
    ya = np.concatenate(outs["a"], axis=-1)
    np.testing.assert_allclose(ya, a / np.sqrt(np.mean(a.astype(np.float64) ** 2)), rtol=1e-6)


@pytest.fixture(scope="module")
def aero():
    torch.manual_seed(0)
    return models.build("aeromamba", channels=4, growth=1, n_fft=128, hop_length=64,
                        dconv_depth=1, official_forward=True).eval()


def _pass_vs_plain(model, x):
    """Relative L2 between the plain call and the call with the statistics one pass over the
    whole signal collects (keep = everything, last chunk: as the engine would call it)."""
    xt = torch.from_numpy(x).to(next(model.parameters()).dtype)
    with torch.no_grad():
        plain = model.restore(xt)
        acc = model.collect_statistics(xt, (0, xt.shape[-1]), True, None, None)
        model.use_statistics(model.finish_statistics(acc))
        try:
            forced = model.restore(xt)
        finally:
            model.use_statistics(None)
    return rel_l2(forced.numpy(), plain.numpy())


def test_aeromamba_pass_over_one_whole_chunk_reproduces_its_own_statistics(aero):
    """In float64 (no float32 rounding to amplify) the pass's statistics equal the plain
    call's for signals of at least WHOLE_STATS_MIN_S, frames a multiple of the hop or not;
    a signal shorter than the model's internal minimum (320 samples) is padded inside the
    model, and the padding's frames count in its own statistics but not in the pass's."""
    m = aero.double()
    try:
        for seconds in (engine.WHOLE_STATS_MIN_S, 1.2345):
            x = music_like(seconds, 11025, channels=2, seed=6)
            x[:, x.shape[-1] // 2:] *= 0.2
            assert _pass_vs_plain(m, x) < 1e-10
        short = music_like(0.02, 11025, channels=1, seed=6)  # 220 samples
        assert _pass_vs_plain(m, short) > 1e-6
    finally:
        aero.float()


@pytest.mark.parametrize("seconds", [1.0, 1.2345])  # frames a multiple of the hop, and not
def test_aeromamba_one_chunk_is_the_plain_forward_and_matches_the_pass(aero, seconds,
                                                                        monkeypatch):
    x = music_like(seconds, 11025, channels=2, seed=5).astype(np.float32)
    x[:, x.shape[-1] // 2:] *= 0.2  # level change: statistics of any part differ from the whole
    calls = []
    monkeypatch.setattr(aero, "collect_statistics",
                        lambda *a, **k: calls.append(1) or type(aero).collect_statistics(
                            aero, *a, **k))
    opts = EnhanceOptions(lf_replace=False)
    y, sr = enhance_array(x, 11025, aero, options=opts, **KW)
    assert sr == 44100 and not calls
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs each call on one thread (infer.parallel)
    try:
        with torch.no_grad():
            plain = aero.restore(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(y, plain)  # exactly whole-signal inference
    monkeypatch.setattr(engine, "WHOLE_STATS_MIN_S", float("inf"))
    forced, _ = enhance_array(x, 11025, aero, options=opts, **KW)
    assert calls  # the pass ran this time
    # float32 rounding of the statistics (float64 sums vs GroupNorm's own), amplified by the
    # random weights: 6e-5 here (the float64 test above shows the statistics are the same)
    assert rel_l2(forced, y) < 3e-4


def test_statistics_pass_runs_at_most_batch_size_rows_per_call():
    """Rows per call follow the batch size; each row keeps its own statistics (also the
    frozen ones a second pass hands back), so the output is the same."""
    x = music_like(3.0, 1000, channels=2, seed=8).astype(np.float32)
    x[1] *= 0.1
    outs, rows = [], []
    for batch in (1, 4):
        m = RmsNorm()
        y, _ = enhance_array(x, 1000, m, options=EnhanceOptions(
            chunk_s=1.0, overlap_s=0.1, lf_replace=False, batch_size=batch, stat_passes=2),
            **KW)
        outs.append(y)
        rows.append(set(m.collect_rows))
    assert rows == [{1}, {2}]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert abs(np.std(outs[0][0]) / np.std(outs[0][1]) - 1) < 0.05  # each row its own


def test_aeromamba_statistics_pass_row_by_row_matches_all_rows_at_once(aero):
    """The same with AEROMamba: its statistics agree to the float32 rounding that its random
    weights amplify (1e-4 relative after two passes; 6e-5 already between one call and its
    own pass above) and the outputs to less."""
    from upsr.infer.chunk import ChunkPlan

    x = music_like(2.5, 11025, channels=2, seed=7).astype(np.float32)
    x[1] *= 0.3
    src = ArraySource(x, 11025)
    r = engine.plan_rates(aero, 11025, x.shape[-1])
    chunks = list(ChunkPlan.for_rate(r.frames_in, 11025, 0.8, 0.05, aero.context_s, aero.align))
    assert len(chunks) >= 3
    together = engine._statistics_passes(aero, src, r, None, 2, chunks, 2)
    alone = engine._statistics_passes(aero, src, r, None, 2, chunks, 2, rows=1)
    assert len(together) == len(alone) == 2
    for a, b in zip(together, alone):
        assert a.keys() == b.keys()
        for key in a:
            mean_a, var_a = a[key]
            mean_b, var_b = b[key]
            scale = float(mean_a.abs().max() + var_a.abs().max())
            assert float((mean_a - mean_b).abs().max()) < 1e-3 * scale
            assert float((var_a - var_b).abs().max()) < 1e-3 * scale
    # the channels' statistics differ, so a swap would show
    assert abs(float(together[0]["input"][1] / together[1]["input"][1]) - 1) > 0.5
