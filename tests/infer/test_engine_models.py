"""Chunked == whole through the engine (``enhance_array``), for every registered model.

Small configs of the published topologies; Wave-U-Mamba with the realistic (slowly decaying)
re-draw of its Mamba weights that its own chunking test uses. The signal is cut into at least
three chunks with each model's own ``context_s``; the whole-signal run is one chunk.
AEROMamba normalises by whole-signal statistics: the engine runs its statistics pass first
(two-pass), so chunks agree with the whole run to ~5e-4 (relative L2) instead of the
1-17 % that each chunk's own statistics give.
"""

import numpy as np
import pytest
import torch

from upsr import models
from upsr.audio.synth import music_like
from upsr.infer.engine import EnhanceOptions, enhance_array

KW = dict(cutoff_hz=None, detect_cutoff=False)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _run(model, x, sr, chunk_s):
    whole, _ = enhance_array(x, sr, model, options=EnhanceOptions(chunk_s=100,
                                                                   lf_replace=False), **KW)
    chunked, _ = enhance_array(x, sr, model, options=EnhanceOptions(
        chunk_s=chunk_s, overlap_s=0.05, lf_replace=False, batch_size=2), **KW)
    return chunked, whole


def test_sbr_chunked_equals_whole_through_the_engine():
    x = music_like(2.0, 44100, channels=2, seed=1)
    chunked, whole = _run(models.build("sbr"), x, 44100, 0.5)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_apollo_chunked_equals_whole_through_the_engine():
    from upsr.models.apollo import Apollo, ApolloConfig

    torch.manual_seed(0)
    model = Apollo(ApolloConfig(feature_dim=16, layer=1)).eval()
    x = music_like(2.0, 44100, channels=1, seed=2)
    chunked, whole = _run(model, x, 44100, 0.6)
    assert np.abs(chunked - whole).max() <= 1e-4 * np.abs(whole).max()


def test_wave_u_mamba_chunked_equals_whole_through_the_engine():
    from tests.models.test_wave_u_mamba import SMALL, realistic_

    torch.manual_seed(0)
    model = realistic_(models.build("wave-u-mamba", **SMALL), seed=3).eval()
    x = music_like(1.5, 48000, channels=1, seed=3)
    chunked, whole = _run(model, x, 48000, 0.45)
    rms = np.sqrt(np.mean(whole ** 2))
    assert np.abs(chunked - whole).max() / rms <= 1e-4


@pytest.fixture(scope="module")
def aero():
    torch.manual_seed(0)
    return models.build("aeromamba", channels=4, official_forward=True).eval()


def test_aeromamba_two_pass_chunked_equals_whole_through_the_engine(aero):
    x = music_like(3.0, 11025, channels=1, seed=1)[0].astype(np.float32)
    x[2 * 11025:] *= 0.2  # a level change: chunk statistics differ from the whole signal's
    chunked, whole = _run(aero, x, 11025, 0.8)
    with torch.no_grad():
        raw = aero.restore(torch.from_numpy(x)[None])[0].numpy()
    assert _rel(whole, raw) < 1e-5  # one chunk through the engine is the plain forward
    two_pass = _rel(chunked, whole)
    aero.global_statistics = False  # each chunk its own statistics, as the official code
    try:
        own, _ = enhance_array(x, 11025, aero, options=EnhanceOptions(
            chunk_s=0.8, overlap_s=0.05, lf_replace=False, batch_size=2), **KW)
    finally:
        del aero.global_statistics
    assert two_pass < 2e-3
    assert _rel(own, whole) > 10 * two_pass


def test_aeromamba_with_exact_statistics_is_exact(aero):
    """Given the whole signal's statistics, chunks reproduce it to float precision: the rest
    of the two-pass error is only the statistics pass's approximation."""
    from upsr.infer import engine

    x = music_like(2.0, 11025, channels=1, seed=4)[0].astype(np.float32)
    acc = aero.collect_statistics(torch.from_numpy(x)[None], (0, x.size), True, None, None)
    exact = aero.finish_statistics(acc)
    whole, _ = enhance_array(x, 11025, aero, options=EnhanceOptions(chunk_s=100,
                                                                   lf_replace=False), **KW)
    orig = engine._statistics_passes
    engine._statistics_passes = lambda *a, **k: exact
    try:
        chunked, _ = enhance_array(x, 11025, aero, options=EnhanceOptions(
            chunk_s=0.6, overlap_s=0.05, lf_replace=False), **KW)
    finally:
        engine._statistics_passes = orig
    assert _rel(chunked, whole) < 1e-5
