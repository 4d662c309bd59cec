"""--precision: bf16 autocast where the CPU has it and the model allows it, float32 elsewhere."""

import logging

import numpy as np
import torch

from upsr.audio import synth
from upsr.eval.metrics import lsd_lf
from upsr.infer import precision as P
from upsr.infer.engine import EnhanceOptions, Runner, enhance_array
from upsr.models import build

TINY = {"channels": 4, "growth": 1, "n_fft": 128, "hop_length": 64, "d_state": 4,
        "dconv_depth": 1}   # recipes/tiny/aeromamba.toml


def _tiny():
    torch.manual_seed(0)
    return build("aeromamba", **TINY).eval()


def test_native_bf16_is_read_from_cpu_flags(monkeypatch):
    detect = P.cpu_has_native_bf16.__wrapped__
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert detect() is False
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert detect() is True
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    assert detect() is True


def test_falls_back_to_fp32_where_unsupported(monkeypatch, caplog):
    model = _tiny()
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setitem(P.BF16_ERRORS, "aeromamba", P.Bf16Error(1e-3, 1e-3))
    with caplog.at_level(logging.WARNING, logger="upsr"):
        assert P.resolve("bf16", model, "cpu") == "fp32"
    assert "no native bf16" in caplog.text
    assert P.resolve("auto", model, "cpu") == "fp32"
    assert P.resolve("auto", model, "mps") == "fp32"
    assert P.resolve("fp32", model, "cpu") == "fp32"


def test_auto_needs_native_bf16_and_a_small_measured_error(monkeypatch):
    model = _tiny()
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "BF16_MIN_PARAMS", 0)  # the size gate has its own test
    monkeypatch.setitem(P.BF16_ERRORS, "aeromamba", P.Bf16Error(P.LSD_BOUND / 2, 1e-3))
    assert P.resolve("auto", model, "cpu") == "bf16"
    monkeypatch.setitem(P.BF16_ERRORS, "aeromamba", P.Bf16Error(P.LSD_BOUND * 2, 1e-2))
    assert P.resolve("auto", model, "cpu") == "fp32"   # measured error too large
    monkeypatch.delitem(P.BF16_ERRORS, "aeromamba")
    assert P.resolve("auto", model, "cpu") == "fp32"   # never measured
    assert P.resolve("bf16", model, "cpu") == "bf16"   # asked for explicitly
    assert P.resolve("bf16", build("sbr"), "cpu") == "fp32"   # nothing to autocast


def test_auto_keeps_small_models_in_fp32(monkeypatch):
    """bf16 does not pay for a model of a few thousand parameters: auto keeps it in float32
    (an explicit bf16 still applies); the published configurations are above the gate."""
    model = _tiny()
    n = sum(p.numel() for p in model.parameters())
    assert P.parameter_count(model) == n < P.BF16_MIN_PARAMS
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setitem(P.BF16_ERRORS, "aeromamba", P.Bf16Error(1e-3, 1e-3))
    assert P.resolve("auto", model, "cpu") == "fp32"
    assert P.resolve("bf16", model, "cpu") == "bf16"
    monkeypatch.setattr(P, "BF16_MIN_PARAMS", n)
    assert P.resolve("auto", model, "cpu") == "bf16"
    for name in P.BF16_ERRORS:
        with torch.device("meta"):
            published = build(name)
        assert P.parameter_count(published) >= P.BF16_MIN_PARAMS, name


def test_measured_models_are_within_the_stated_bound():
    assert P.BF16_ERRORS, "the table of measured bf16 errors is empty"
    for name, err in P.BF16_ERRORS.items():
        assert err.lsd >= 0 and err.rel_l2 >= 0, name
    auto = {n for n, e in P.BF16_ERRORS.items()
            if e.lsd < P.LSD_BOUND and e.rel_l2 < P.REL_L2_BOUND}
    assert auto == {"aeromamba", "apollo", "wave-u-mamba"}


def test_bf16_output_is_close_to_fp32_and_the_scan_state_stays_fp32():
    model = _tiny()
    sr = 11025
    ref = synth.music_like(1.0, 44100, channels=1, seed=3)[0]
    from upsr.audio.resample import resample

    x = resample(ref[None], 44100, sr)[0].astype(np.float32)
    outs = {}
    for prec in ("fp32", "bf16"):
        runner = Runner(model, precision=prec)
        outs[prec] = np.concatenate(runner([x], [None]))
    y32, y16 = outs["fp32"], outs["bf16"]
    assert y16.dtype == np.float32 and y16.shape == y32.shape
    assert 0 < np.linalg.norm(y16 - y32) / np.linalg.norm(y32) < P.REL_L2_BOUND  # bf16 ran
    # through the engine (chunks, low-band splice): the same bound
    opts = EnhanceOptions(chunk_s=0.5, batch_size=1)
    e32, sr_out = enhance_array(x, sr, model, cutoff_hz=5000.0, options=opts)
    e16, _ = enhance_array(x, sr, model, cutoff_hz=5000.0, options=opts, precision="bf16")
    assert sr_out == 44100 and e16.shape == e32.shape == (44100,)
    assert 0 < np.linalg.norm(e16 - e32) / np.linalg.norm(e32) < P.REL_L2_BOUND
    # below the cutoff both are the input itself: bf16 never touches the known band
    assert lsd_lf(e32, e16, 44100, 4000.0) < 1e-3
    # Mamba under autocast: linear layers in bf16, the scan and its state in float32
    from upsr.nn.mamba import Mamba
    from upsr.nn.scan import selective_scan

    torch.manual_seed(1)
    m = Mamba(16, d_state=8).eval()
    h = torch.randn(1, 200, 16)
    with torch.inference_mode():
        ref = m(h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m(h)
            u = torch.randn(1, 32, 50).bfloat16()
            _, last = selective_scan(u, u.abs(), -torch.ones(32, 8), torch.randn(1, 8, 50),
                                     torch.randn(1, 8, 50), return_last_state=True)
    assert last.dtype == torch.float32
    rel = float((got.float() - ref).norm() / ref.norm())
    assert 0 < rel < 0.05
