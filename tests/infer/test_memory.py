"""``upsr enhance`` gives freed model memory back (glibc's mmap threshold fixed)."""

import platform
import subprocess
import sys

import pytest

CODE = """
import sys
import numpy as np
from upsr.infer.batch import return_freed_memory
if sys.argv[1] == "fixed":
    assert return_freed_memory()
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
big = np.empty(8 << 17)  # an 8 MiB block, freed: glibc raises its threshold to 8 MiB
big[:] = 1
del big
blocks, pins = [], []
for _ in range(40):  # 160 MiB of 4 MiB blocks (written, so resident), each before a small one
    b = np.empty(4 << 17)
    b[:] = 1
    blocks.append(b)
    pins.append(np.empty(1000))
before = rss_mib()
del blocks
print(before - rss_mib())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_freed_blocks_go_back_to_the_system():
    freed = {}
    for mode in ("default", "fixed"):
        res = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        freed[mode] = float(res.stdout)
    assert freed["default"] < 40  # the heap keeps them (pinned by the small blocks)
    assert freed["fixed"] > 150   # each was mapped for itself and unmapped when freed
