"""Row-parallel inference (``upsr.infer.parallel``): rows side by side on model replicas give
exactly what the serial path gives at one intra-op thread; failures stay with their files;
the rule keeps large models (and GPUs) on the serial path."""

import threading
import time

import numpy as np
import pytest
import torch

from tests.infer.test_engine import Ident, NanOnTwo
from upsr import models
from upsr.audio.synth import brickwall, music_like
from upsr.infer.engine import EnhanceOptions, Job, Runner, enhance_array, restore_stream, run_jobs
from upsr.infer.parallel import MAX_PARAMS, RowPool, row_workers
from upsr.infer.stream import ArraySource

KW = dict(cutoff_hz=None, detect_cutoff=False)


@pytest.fixture(autouse=True)
def one_thread():
    """The serial path at one intra-op thread: what each row worker runs at."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_aero():
    """A 10 k-parameter AEROMamba with Mamba running (``benchmarks/enhance.py``'s
    ``tiny10k-aeromamba``): whole-signal statistics, two passes."""
    torch.manual_seed(0)
    return models.build("aeromamba", channels=4, growth=1, n_fft=64, hop_length=32,
                        strides=(8, 4), d_state=4, dconv_depth=1).eval()


def test_pool_runs_side_by_side_on_distinct_replicas_in_order():
    class Holder:
        busy = False

    model = Holder()
    seen: list[int] = []
    overlap = threading.Event()
    lock = threading.Lock()

    def fn(m, item):
        assert not m.busy  # no other running call holds this replica
        if item == 3:
            raise ValueError("row 3")
        m.busy = True
        with lock:
            seen.append(id(m))
        time.sleep(0.02)
        if sum(1 for r in pool.replicas if r.busy) > 1:
            overlap.set()
        m.busy = False
        return item * 10, torch.get_num_threads()

    with RowPool(model, 2) as pool:
        assert pool.replicas[0] is model and pool.replicas[1] is not model
        out = pool.map(fn, [0, 1, 2, 3, 4, 5])
        assert torch.get_num_threads() == 1  # the caller's own count is untouched
        with pytest.raises(ValueError, match="row 3"):
            pool.map_or_raise(fn, [3])
    assert isinstance(out[3], ValueError)
    assert [o[0] for k, o in enumerate(out) if k != 3] == [0, 10, 20, 40, 50]
    assert all(o[1] == 1 for k, o in enumerate(out) if k != 3)  # one thread per worker
    assert overlap.is_set() and len(set(seen)) == 2


def test_caller_thread_count_survives_the_pool():
    torch.set_num_threads(2)
    with RowPool(torch.nn.Linear(2, 2), 2) as pool:
        counts = pool.map_or_raise(lambda m, _: torch.get_num_threads(), [0, 1])
        assert torch.get_num_threads() == 2
    assert counts == [1, 1]


def test_rule_small_torch_models_only_on_cpu():
    sbr = models.build("sbr")
    assert row_workers(sbr, "cpu", threads=2) == 2
    assert row_workers(sbr, "cpu", threads=1) == 1
    assert row_workers(sbr, "cuda", threads=8) == 1
    assert row_workers(object(), "cpu", threads=2) == 1  # not a module: may hold state
    with torch.device("meta"):
        big = models.build("aeromamba")  # published: 21 M parameters
    assert sum(p.numel() for p in big.parameters()) >= MAX_PARAMS
    assert row_workers(big, "cpu", threads=2) == 1


@pytest.mark.parametrize("channels", [2, 1])
def test_aeromamba_rows_side_by_side_equal_the_serial_path(tiny_aero, channels):
    """Both passes (statistics, output) and the splice on the pool: identical to the serial
    path at one thread, stereo (channels side by side) and mono (two chunks per step, its
    statistics pass on a worker too), with the caller at two threads (``--jobs 1``) as
    the serial path runs in each ``--jobs 2`` worker."""
    x = music_like(3.0, 11025, channels=2, seed=3)[:channels].astype(np.float32)
    x[..., 2 * 11025:] *= 0.3  # chunk statistics differ from the whole signal's
    opts = EnhanceOptions(chunk_s=0.8, overlap_s=0.05, batch_size=1)
    serial, sr = enhance_array(x, 11025, tiny_aero, options=opts, cutoff_hz=4000.0,
                               workers=1)
    torch.set_num_threads(2)  # the caller's count does not reach the workers' calls
    side, sr2 = enhance_array(x, 11025, tiny_aero, options=opts, cutoff_hz=4000.0, workers=2)
    assert sr == sr2 == 44100 and serial.shape == side.shape == (channels, 4 * x.shape[-1])
    np.testing.assert_array_equal(side, serial)


def test_sbr_on_the_pool_is_byte_identical():
    x = music_like(4.0, 44100, channels=2, seed=2).astype(np.float32)
    x = brickwall(x, 44100, 9000.0).astype(np.float32)
    model = models.build("sbr")
    opts = EnhanceOptions(chunk_s=1.0)
    serial, _ = enhance_array(x, 44100, model, options=opts, cutoff_hz=9000.0, workers=1)
    side, _ = enhance_array(x, 44100, model, options=opts, cutoff_hz=9000.0, workers=2)
    assert np.abs(serial - x).max() > 1e-3  # the band above 9 kHz was rebuilt
    np.testing.assert_array_equal(side, serial)


def test_a_failing_row_in_a_wave_fails_only_its_own_file():
    model = NanOnTwo()
    outs, jobs = {}, []
    for i in range(4):
        x = np.full((2, 3000), i, np.float32)
        outs[i] = []
        jobs.append(Job(i, restore_stream(ArraySource(x, 16000), model, outs[i].append, None,
                                          EnhanceOptions(lf_replace=False)), None, 16000))
    results = {}
    with RowPool(model, 2) as pool:
        runner = Runner(model, pool=pool)
        run_jobs(jobs, runner, batch_size=1, on_done=lambda j, e: results.__setitem__(j.key, e))
    assert runner.calls == 8  # one row per call, two at a time
    assert isinstance(results[2], FloatingPointError)
    for i in (0, 1, 3):
        assert results[i] is None
        np.testing.assert_array_equal(np.concatenate(outs[i], -1), np.full((2, 3000), i))


def test_a_failing_call_of_several_files_in_a_wave_is_run_again_file_by_file():
    """Mono files, two rows per call: the call holding file 2's row fails and is run again
    one file at a time, so its other file still comes out."""
    model = NanOnTwo()
    outs, jobs = {}, []
    for i in range(4):
        x = np.full((1, 3000), i, np.float32)
        outs[i] = []
        jobs.append(Job(i, restore_stream(ArraySource(x, 16000), model, outs[i].append, None,
                                          EnhanceOptions(lf_replace=False)), None, 16000))
    results = {}
    with RowPool(model, 2) as pool:
        runner = Runner(model, pool=pool)
        run_jobs(jobs, runner, batch_size=2, on_done=lambda j, e: results.__setitem__(j.key, e))
    assert runner.calls == 4  # a wave of two 2-row calls, then the failed one file by file
    assert isinstance(results[2], FloatingPointError)
    for i in (0, 1, 3):
        assert results[i] is None
        np.testing.assert_array_equal(np.concatenate(outs[i], -1), np.full((1, 3000), i))


class SlowIdent(torch.nn.Module, Ident):
    """test_engine's Ident as a module (so it gets a pool) that takes 50 ms per call
    (sleeping: the GIL is free meanwhile)."""

    name = "slow"

    def restore(self, x):
        time.sleep(0.05)
        return x.clone()


def test_a_waves_time_is_shared_by_the_rows_of_its_calls():
    """Per-file wall time (reports): calls run side by side are charged together, each file
    its share by the rows it contributed (a file with 2 of 3 rows: 2/3 of the wave)."""
    from types import SimpleNamespace

    from upsr.infer.batch import _Clock, _TimedRunner

    a, b = SimpleNamespace(wall_s=0.0), SimpleNamespace(wall_s=0.0)
    rows = [np.zeros(160, np.float32) + k for k in range(3)]
    clock = _Clock()
    for row, item in zip(rows, (a, a, b)):
        clock.owner[row.ctypes.data] = item
    with RowPool(SlowIdent(), 2) as pool:
        runner = _TimedRunner(SlowIdent(), pool=pool)
        runner.clock = clock
        t0 = time.perf_counter()
        out = runner.run_wave([(rows[:2], [None, None], None), (rows[2:], [None], None)])
        wall = time.perf_counter() - t0
    assert [[float(r[0]) for r in call] for call in out] == [[0.0, 1.0], [2.0]]
    assert a.wall_s + b.wall_s == pytest.approx(wall, rel=0.05)
    assert a.wall_s == pytest.approx(2 * b.wall_s)
