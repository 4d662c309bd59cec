"""Training data: per-item degradation draws, determinism, sampler shares, silence, stems,
manifest pairs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from upsr.data.spec import parse_spec
from upsr.errors import UsageError
from upsr.train import data as D

from .helpers import write_clips


def _dataset(root, spec="mp3=32,64,128", sr=44100, frames=2205, **kw):
    return D.PairDataset(D.open_source(root, "data.train"), sr=sr, channels=1, frames=frames,
                         seed=7, degrade=parse_spec(spec), lr_rate=kw.pop("lr_rate", None),
                         **kw)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"), n=3, seconds=0.2, sr=44100)


def test_degradation_parameters_are_drawn_per_item(clips):
    """Apollo's official loader kept one bitrate per worker; here every item draws its own."""
    ds = _dataset(clips, "mp3=32,64,128 lowpass=cheby1,butter:4-8:3k-9k")
    params = [ds.make(np.random.default_rng([7, 0, i]))[2] for i in range(12)]
    assert len({p["mp3_kbps"] for p in params}) == 3
    assert len({p["lowpass_cutoff_hz"] for p in params}) == 12
    assert {p["lowpass_type"] for p in params} == {"cheby1", "butter"}


def test_items_are_deterministic_across_workers_and_differ_across_epochs(clips):
    ds = _dataset(clips, "resample=8k,16k,22050")
    keys = [(0, i) for i in range(4)] + [(1, 0)]
    direct = [ds[k] for k in keys]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=keys, num_workers=2)
    for (hr, lr), (hr2, lr2) in zip(direct, loader, strict=True):
        assert torch.equal(hr, hr2[0]) and torch.equal(lr, lr2[0])
    assert not torch.equal(direct[0][0], direct[4][0])  # epoch 1 crops elsewhere
    hr, lr = direct[0]
    assert hr.shape == lr.shape == (1, 2205)  # lr resampled back to the clean rate


def test_model_rate_inputs_have_the_exact_ratio(clips):
    ds = _dataset(clips, "resample=11025", frames=4352, lr_rate=11025)
    hr, lr = ds[(0, 0)]
    assert hr.shape == (1, 4352) and lr.shape == (1, 1088)


def test_epoch_sampler_splits_ranks_and_resumes_mid_epoch():
    ranks = [list(D.EpochSampler(10, 2, 3, rank=r, world=2)) for r in range(2)]
    assert ranks[0] == [(3, 0), (3, 2), (3, 4), (3, 6)]  # 10 // (2·2) = 2 batches each
    assert ranks[1] == [(3, 1), (3, 3), (3, 5), (3, 7)]
    tail = D.EpochSampler(10, 2, 3, rank=1, world=2, start_batch=1)
    assert list(tail) == ranks[1][2:] and len(tail) == 2


def test_silent_crops_are_redrawn(tmp_path):
    sf.write(tmp_path / "a_silent.wav", np.zeros(44100, np.float32), 44100)
    sf.write(tmp_path / "b_loud.wav", 0.5 * np.ones(44100, np.float32), 44100)
    ds = _dataset(tmp_path, "mp3=64", silence_power=1e-3)
    for i in range(8):
        assert float(ds.clean(np.random.default_rng(i)).max()) == pytest.approx(0.5)


def test_stem_mixing_uses_integer_gains_within_the_range(tmp_path):
    track = tmp_path / "song"
    track.mkdir()
    sf.write(track / "mixture.wav", 0.3 * np.ones(8000, np.float32), 44100, subtype="FLOAT")
    sf.write(track / "bass.wav", 0.01 * np.ones(8000, np.float32), 44100, subtype="FLOAT")
    src = D.open_source(tmp_path, "data.train")
    assert [c.path.name for c in src.clips] == ["mixture.wav"]
    assert [c.path.name for c in src.stems] == ["bass.wav"]
    ds = _dataset(tmp_path, "mp3=64", frames=1000, stems_prob=1.0, stems_max=1,
                  stems_gain_db=10.0)
    gains = set()
    for i in range(20):
        x = ds.clean(np.random.default_rng(i))
        g = 20 * np.log10(float(x.mean()) / 0.01)
        assert abs(g - round(g)) < 1e-3 and -10 <= round(g) <= 10
        gains.add(round(g))
    assert len(gains) > 5
    plain = _dataset(tmp_path, "mp3=64", frames=1000, stems_prob=0.0)
    assert float(plain.clean(np.random.default_rng(0)).mean()) == pytest.approx(0.3)


def test_manifest_pairs_are_aligned_crops_of_the_degrade_output(tmp_path, clips):
    from upsr.data.degrade import TreeOptions, degrade_tree

    out = tmp_path / "pairs"
    degrade_tree(clips, out, TreeOptions(spec=parse_spec("resample=11025"), seed=1, mono=True))
    src = D.open_source(out, "data.train")
    assert src.paired and len(src.clips) == 3
    ds = D.PairDataset(src, sr=44100, channels=1, frames=2048, seed=3, degrade=None,
                       lr_rate=11025)
    hr, lr = ds[(0, 1)]
    assert hr.shape == (1, 2048) and lr.shape == (1, 512)
    # find the crop in its pair's files: hr and lr start at the same instant
    for clip in src.clips:
        full_hr = sf.read(clip.path, dtype="float32")[0]
        full_lr = sf.read(clip.lr, dtype="float32")[0]
        for start in range(0, len(full_hr) - 2048 + 1, 4):
            if np.array_equal(full_hr[start:start + 2048], hr[0].numpy()):
                np.testing.assert_array_equal(full_lr[start // 4:start // 4 + 512], lr[0])
                return
    raise AssertionError("the hr crop is not a slice of any pair")


def test_validation_items_are_fixed_and_carry_a_cutoff(clips):
    ds = _dataset(clips, "lowpass=cheby1:8:4k-6k")
    a, b = D.valid_items(ds, 2, 4410), D.valid_items(ds, 2, 4410)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.lr, y.lr)
        assert x.hr.shape == x.lr.shape == (1, 4410)
        assert 4000 <= x.cutoff_hz <= 6000  # the drawn cut-off


def test_cutoff_prefers_known_parameters():
    lr = np.zeros((1, 100), np.float32)
    assert D.cutoff_of({"lowpass_cutoff_hz": 5000}, lr, 16000, 44100) == 5000
    assert D.cutoff_of({}, lr, 11025, 44100) == 5512.5
    assert D.cutoff_of({"lowpass_cutoff_hz": 9000}, lr, 8000, 48000) == 4000


def test_source_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        D.open_source(tmp_path / "missing", "data.train")
    with pytest.raises(UsageError, match="no audio files"):
        D.open_source(tmp_path, "data.train")
    write_clips(tmp_path, n=1)
    with pytest.raises(UsageError, match="would leave no training files"):
        D.split(D.open_source(tmp_path, "data.train"), 1)
