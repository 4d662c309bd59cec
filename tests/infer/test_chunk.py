import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upsr.infer.chunk import ChunkPlan, OverlapAdd, fade_weights, run_chunked


def test_fade_weights_pairs_sum_to_one():
    up = fade_weights(10, 4, 0)[:4]
    down = fade_weights(10, 0, 4)[-4:]
    np.testing.assert_allclose(up + down, 1.0, rtol=0, atol=1e-15)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 500), hop=st.integers(1, 64), ov_frac=st.floats(0, 1),
       ctx=st.integers(0, 40), ratio=st.sampled_from([1, 2, 4]))
def test_identity_is_bit_exact_and_covers_everything(total, hop, ov_frac, ctx, ratio):
    overlap = int(ov_frac * hop)
    plan = ChunkPlan(total, hop, overlap, ctx)
    rng = np.random.default_rng(total)
    x = rng.standard_normal((2, total)).astype(np.float32)
    chunks = list(plan)
    if total:
        assert chunks[0].keep_lo == 0 and chunks[-1].keep_hi == total
        for a, b in zip(chunks, chunks[1:]):
            assert b.keep_lo == a.keep_hi - overlap
    y = run_chunked(lambda c: np.repeat(c, ratio, axis=-1), x, plan, ratio)
    # exact: the cross-fade sums w*x + (1-w)*x in float64, within ~1e-16 of x, and the cast
    # back to float32 (where x is exactly representable) rounds that to x itself
    assert y.shape == (2, total * ratio)
    assert y.dtype == np.float32
    assert np.array_equal(y, np.repeat(x, ratio, axis=-1))


@pytest.mark.parametrize("total", [4095, 4096, 4097, 8191, 8192, 8193, 1, 100])
def test_identity_bit_exact_without_overlap(total):
    x = np.random.default_rng(0).standard_normal((1, total)).astype(np.float32)
    y = run_chunked(lambda c: c, x, ChunkPlan(total, 4096, 0, 300), 1)
    assert np.array_equal(x, y)


def _fir(x, taps):
    """A model with a known finite receptive field: a centred FIR along time (zero outside)."""
    k = len(taps) // 2
    out = np.zeros_like(x, dtype=np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (k, k)))
    for i, t in enumerate(taps):
        out += t * xp[:, i:i + x.shape[-1]]
    return out


def test_finite_receptive_field_model_chunked_equals_whole():
    rng = np.random.default_rng(1)
    taps = rng.standard_normal(101)
    x = rng.standard_normal((2, 20000))
    whole = _fir(x, taps)
    # context 50 = the FIR's half width: the kept centre must match whole-signal processing
    plan = ChunkPlan(x.shape[-1], 3000, 500, 50)
    chunked = run_chunked(lambda c: _fir(c, taps), x, plan, 1)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6 * np.abs(whole).max())
    # with too little context it would not: proves the test can fail
    bad = run_chunked(lambda c: _fir(c, taps), x, ChunkPlan(x.shape[-1], 3000, 500, 10), 1)
    assert np.abs(bad - whole).max() > 1e-3


def test_overlap_add_rejects_out_of_order():
    plan = list(ChunkPlan(100, 30, 10, 0))
    ola = OverlapAdd(1)
    ola.add(plan[1], np.zeros((1, plan[1].keep_hi - plan[1].keep_lo)))
    with pytest.raises(ValueError):
        ola.add(plan[0], np.zeros((1, plan[0].keep_hi - plan[0].keep_lo)))


def test_plan_for_rate():
    p = ChunkPlan.for_rate(44100 * 10, 44100, 4.0, 0.25, 0.54)
    assert p.hop == 176400 and p.overlap == 11025 and p.context == 23814
    with pytest.raises(ValueError):
        ChunkPlan(10, 5, 6, 0)
