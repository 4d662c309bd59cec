"""The statistics pass runs its chunks with at most ``STATS_CONTEXT_S`` of context: the same
kept regions as the output pass (so the same partition of the frames), shorter inputs, and
statistics that move by far less than the pass's own approximation."""

import numpy as np
import pytest
import torch

from tests.conftest import rel_l2
from tests.infer.test_statistics_pass import RmsNorm
from upsr import models
from upsr.audio.synth import music_like
from upsr.infer import engine
from upsr.infer.engine import EnhanceOptions, enhance_array

KW = dict(cutoff_hz=None, detect_cutoff=False)


class LongReach(RmsNorm):
    """test_statistics_pass's global RMS normalisation (pointwise, so its statistics do not
    depend on context at all) claiming 3 s of context; records the input length of every
    call."""

    name = "longreach"
    context_s = 3.0

    def __init__(self):
        super().__init__()
        self.collect_lengths, self.restore_lengths = [], []

    def collect_statistics(self, x, keep, last, acc, frozen):
        self.collect_lengths.append(x.shape[-1])
        return super().collect_statistics(x, keep, last, acc, frozen)

    def restore(self, x):
        self.restore_lengths.append(x.shape[-1])
        return super().restore(x)


def test_statistics_chunks_are_shorter_and_partition_the_same_frames(monkeypatch):
    x = music_like(12.0, 1000, channels=2, seed=1).astype(np.float32)
    x[:, 6000:] *= 0.2
    opts = EnhanceOptions(chunk_s=2.0, overlap_s=0.1, lf_replace=False)
    m = LongReach()
    y, _ = enhance_array(x, 1000, m, options=opts, **KW)
    cap = int(np.ceil(engine.STATS_CONTEXT_S * 1000))
    assert max(m.collect_lengths) <= 2100 + 2 * cap < max(m.restore_lengths)
    assert max(m.restore_lengths) == 2100 + 2 * 3000
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True))
    np.testing.assert_allclose(y, x / rms, rtol=1e-6)  # exact whole-signal statistics
    monkeypatch.setattr(engine, "STATS_CONTEXT_S", float("inf"))  # the full context
    full = LongReach()
    y_full, _ = enhance_array(x, 1000, full, options=opts, **KW)
    assert max(full.collect_lengths) == max(full.restore_lengths)
    np.testing.assert_array_equal(y, y_full)


@pytest.fixture(scope="module")
def tiny_mamba():
    torch.manual_seed(0)
    return models.build("aeromamba", channels=4, growth=1, n_fft=64, hop_length=32,
                        strides=(8, 4), d_state=4, dconv_depth=1).eval()


def test_aeromamba_with_mamba_keeps_its_chunked_error(tiny_mamba, monkeypatch):
    """Paper mode (Mamba runs, 2 s of Mamba context): the capped statistics pass changes the
    output by far less than the chunked-vs-whole difference it already has."""
    m = tiny_mamba
    assert m.context_s > 4 * engine.STATS_CONTEXT_S
    x = music_like(5.0, 11025, channels=1, seed=2)[0].astype(np.float32)
    x[2 * 11025:] *= 0.25
    whole, _ = enhance_array(x, 11025, m, options=EnhanceOptions(chunk_s=100,
                                                                 lf_replace=False), **KW)
    opts = EnhanceOptions(chunk_s=1.5, overlap_s=0.1, lf_replace=False)
    capped, _ = enhance_array(x, 11025, m, options=opts, **KW)
    monkeypatch.setattr(engine, "STATS_CONTEXT_S", float("inf"))
    full, _ = enhance_array(x, 11025, m, options=opts, **KW)
    assert rel_l2(full, whole) < 1e-4
    assert rel_l2(capped, full) < 1e-5
    assert rel_l2(capped, whole) < 1.5 * rel_l2(full, whole) + 1e-6
