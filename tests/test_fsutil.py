"""Files upsr writes get the mode a plain ``open`` gives (``0o666 & ~umask``), not 0600."""

import os
import stat

import numpy as np
import pytest

from upsr import fsutil
from upsr.audio import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> str:
    return stat.filemode(os.stat(path).st_mode)


def test_atomic_write_under_umask_022_is_rw_r_r(tmp_path, umask_022):
    p = tmp_path / "report.json"
    fsutil.atomic_write_text(p, "{}")
    assert _mode(p) == "-rw-r--r--"  # as `ls -l` shows it


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == "-rw-------"


def test_restored_audio_and_streamed_audio_are_0644(tmp_path, umask_022):
    x = np.zeros((1, 1000), np.float32)
    io.write(tmp_path / "a.flac", x, 44100)
    with io.BlockWriter(tmp_path / "b.wav", 44100, 1, subtype="PCM_16") as w:  # spooled
        w.write(x)
    assert _mode(tmp_path / "a.flac") == "-rw-r--r--"
    assert _mode(tmp_path / "b.wav") == "-rw-r--r--"


def test_enhance_output_is_0644(tmp_path, umask_022):
    from upsr.infer.batch import BatchOptions, enhance_files, plan_items

    t = np.arange(22050) / 44100
    io.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 440 * t))[None], 44100)
    items = plan_items([str(tmp_path / "in.wav")], str(tmp_path / "out"), None)
    done = enhance_files(items, "sbr", BatchOptions())
    assert done[0].status == "done", done[0].error
    assert _mode(done[0].dst) == "-rw-r--r--"
