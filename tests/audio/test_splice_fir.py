"""The splice FIR is scipy's Kaiser window design, without importing scipy.signal."""

import subprocess
import sys

import numpy as np
import pytest

from upsr.audio.spectral import splice_fir


def _scipy_design(sr, cutoff_hz, transition_hz, atten_db=100.0):
    from scipy import signal

    nyq = sr / 2.0
    width = min(max(transition_hz, 1.0), 2.0 * min(cutoff_hz, nyq - cutoff_hz))
    taps, beta = signal.kaiserord(atten_db, width / nyq)
    return signal.firwin(taps | 1, cutoff_hz, window=("kaiser", beta), fs=sr)


@pytest.mark.parametrize("sr,cutoff,transition,atten", [
    (44100, 11250.0, 500.0, 100.0), (48000, 4250.0, 500.0, 100.0), (16000, 7990.0, 500.0, 100.0),
    (44100, 100.0, 500.0, 100.0), (96000, 20000.0, 37.0, 100.0), (22050, 5000.0, 800.0, 40.0),
    (8000, 3000.0, 300.0, 15.0)])
def test_splice_fir_equals_scipy_kaiser_design(sr, cutoff, transition, atten):
    h = splice_fir(sr, cutoff, transition, atten)
    ref = _scipy_design(sr, cutoff, transition, atten)
    assert h.shape == ref.shape and h.size % 2 == 1
    np.testing.assert_allclose(h, ref, rtol=0, atol=4e-16)
    assert not h.flags.writeable and splice_fir(sr, cutoff, transition, atten) is h  # cached


def test_splicing_does_not_import_scipy_signal():
    code = ("import sys, numpy as np\n"
            "from upsr.audio.spectral import lf_replace\n"
            "x = np.random.default_rng(0).standard_normal((2, 5000))\n"
            "lf_replace(x, x[::-1].copy(), 44100, 8000.0)\n"
            "assert 'scipy.signal' not in sys.modules, 'scipy.signal was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
