"""Apollo: parameter count, parity with the official code, checkpoints, receptive field,
chunked inference and arbitrary lengths."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import fixture_path, random_state, rel_l2
from upsr import checkpoint, models
from upsr.errors import CheckpointError
from upsr.models.apollo import Apollo, ApolloConfig, convert_official
from upsr.models.base import make_config
from upsr.nn.roformer import rope_tables

TOL = 1e-5


@functools.lru_cache(maxsize=2)
def _load(name: str):
    path = fixture_path(name)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return path, meta, tensors, state


def _fixture(name: str = "apollo.safetensors"):
    """(path, metadata, all tensors, official state) of a parity fixture; fresh dicts each call
    so that tests may edit them."""
    path, meta, tensors, state = _load(name)
    return path, meta, dict(tensors), dict(state)


def _official_model(meta, state) -> Apollo:
    """Our model built from the fixture's official container, as ``upsr models import`` does."""
    container = {"model_name": "Apollo", "state_dict": state,
                 "model_args": {"n_sample_rate": 2}, "infos": {}}
    overrides, converted = convert_official(container)
    ctor = json.loads(meta["constructor_args"])
    assert overrides == {k: ctor[k] for k in overrides}
    model = Apollo(make_config(ApolloConfig, overrides, what="fixture"))
    checkpoint.load_state_strict(model, converted, "fixture")
    return model.eval()


def _rope_float64(positions: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official RoPE buffers in closed form (float64): pair (2i, 2i+1) shares the angle
    pos · 10000^(-2i/d)."""
    pos = np.arange(positions)[:, None]
    angle = pos * 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)[None, :]
    return (torch.from_numpy(np.repeat(np.cos(angle), 2, axis=1)).float(),
            torch.from_numpy(np.repeat(np.sin(angle), 2, axis=1)).float())


def _random_official(feature_dim: int = 16, layer: int = 2, seed: int = 0
                     ) -> tuple[dict, dict]:
    """``(constructor args, state)`` of an official Apollo with random weights: the official
    keys (``test_official_keys_equal_the_fixture_keys`` checks them against the fixture where
    it is present) with every weight re-drawn, and the RoPE buffers ``net.{i}.band_net.
    {cos,sin}_freq`` the official module registers (100 positions)."""
    with torch.device("meta"):
        names = Apollo(ApolloConfig(feature_dim=feature_dim, layer=layer)).state_dict()
    state = random_state(names, seed)
    cos, sin = _rope_float64(100, feature_dim // 8)
    for i in range(layer):
        state[f"net.{i}.band_net.cos_freq"] = cos.clone()
        state[f"net.{i}.band_net.sin_freq"] = sin.clone()
    return {"sr": 44100, "win": 20, "feature_dim": feature_dim, "layer": layer}, state


def test_official_keys_equal_the_fixture_keys():
    _, meta, _, state = _fixture()
    ctor = json.loads(meta["constructor_args"])
    _, ours = _random_official(ctor["feature_dim"], ctor["layer"])
    assert sorted(ours) == sorted(state)
    assert all(ours[k].shape == state[k].shape for k in state)


def _small(feature_dim: int = 16, layer: int = 1, seed: int = 0) -> Apollo:
    torch.manual_seed(seed)
    return Apollo(ApolloConfig(feature_dim=feature_dim, layer=layer)).eval()


# -- size ------------------------------------------------------------------------------------
def test_default_config_has_published_parameter_count():
    with torch.device("meta"):
        model = models.build("apollo")
    assert sum(p.numel() for p in model.parameters()) == 16_539_308
    assert (model.in_rate, model.out_rate, model.channels) == (44100, 44100, "mono")
    assert model.band_widths == (5,) * 79 + (47,)


def test_fixture_config_parameter_count_matches_official():
    _, meta, _, state = _fixture()
    model = _official_model(meta, state)
    assert sum(p.numel() for p in model.parameters()) == int(meta["param_count"])


# -- parity with the official implementation -------------------------------------------------
def test_stages_match_official_intermediates():
    """Each stage fed the official input of that stage reproduces the official output."""
    _, meta, t, state = _fixture()
    model = _official_model(meta, state)
    b, c, n = t["input"].shape
    with torch.no_grad():
        net_out = model.net(t["inter.subband_feature"])
        est = model.head(t["inter.net_out"])
        wav = model.istft(torch.view_as_complex(t["inter.est_spec"].contiguous()), n)
    assert rel_l2(net_out, t["inter.net_out"]) <= TOL
    assert rel_l2(torch.view_as_real(est), t["inter.est_spec"]) <= TOL
    assert rel_l2(wav.reshape(b, c, n), t["output"]) <= TOL


def test_band_features_match_official_where_the_input_has_signal():
    """The band embedding equals the official one on every band above -80 dB of the loudest.

    Bands holding no signal (the fixture input stops at 16 kHz) contain only float32 FFT
    rounding noise, which the per-band normalisation divides by ~sqrt(eps): there the
    features depend on the FFT library's instruction path (see the subprocess test below).
    """
    _, meta, t, state = _fixture()
    model = _official_model(meta, state)
    b, c, n = t["input"].shape
    with torch.no_grad():
        spec = model.stft(t["input"].reshape(b * c, n))
        feat = model.features(spec)
    ref = t["inter.subband_feature"]
    edges = np.cumsum((0,) + model.band_widths)
    power = torch.stack([spec[:, lo:hi].abs().square().sum(1) for lo, hi in
                         zip(edges[:-1], edges[1:])], 1)  # [B, K, T] per band and frame
    live = power > 1e-8 * power.max()
    assert 0.5 < live.float().mean() < 1.0
    mask = live[:, :, None, :].expand_as(ref)
    assert rel_l2(feat[mask], ref[mask]) <= TOL
    # and the whole tensor is still close (FFT noise only)
    assert rel_l2(feat, ref) <= 1e-3


def test_end_to_end_matches_official_with_the_same_fft_path():
    """Whole forward pass (STFT -> ... -> iSTFT) equals the official output and intermediates.

    Run in a child process with ``MKL_ENABLE_INSTRUCTIONS=SSE4_2`` because the fixtures' float32
    FFT took MKL's SSE4.2 path: on AVX-512 MKL's FFT rounds differently, and the signal-free
    bands (pure rounding noise, normalised by their tiny norm) move the output by ~2e-4.
    """
    path, meta, _, _ = _fixture()
    code = textwrap.dedent(f"""
        import json, torch
        from safetensors import safe_open
        from safetensors.torch import load_file
        from tests.models.test_apollo import _official_model
        from tests.conftest import rel_l2
        torch.set_num_threads(1)
        t = load_file({str(path)!r})
        meta = safe_open({str(path)!r}, "pt").metadata()
        state = {{k[6:]: v for k, v in t.items() if k.startswith("state.")}}
        m = _official_model(meta, state)
        b, c, n = t["input"].shape
        with torch.no_grad():
            x = t["input"].reshape(b * c, n)
            feat = m.features(m.stft(x))
            net = m.net(feat)
            est = torch.view_as_real(m.head(net))
            y = m.restore(x).reshape(b, c, n)
        print(json.dumps({{"feat": rel_l2(feat, t["inter.subband_feature"]),
                          "net": rel_l2(net, t["inter.net_out"]),
                          "est": rel_l2(est, t["inter.est_spec"]),
                          "out": rel_l2(y, t["output"])}}))
    """)
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS="SSE4_2", MKL_VERBOSE="0")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    assert max(errors.values()) <= TOL, errors


def test_batch_and_channel_folding_are_independent():
    """[B·C, T] rows are independent signals: one row alone gives the same output."""
    model = _small(layer=2)
    x = torch.randn(3, 9000) * 0.1
    with torch.no_grad():
        full = model.restore(x)
        one = model.restore(x[1:2])
    assert torch.allclose(full[1:2], one, atol=1e-6, rtol=0)


# -- official checkpoint conversion ----------------------------------------------------------
def test_convert_lightning_checkpoint_strips_prefix_and_drops_discriminator():
    _, state = _random_official()
    lightning = {f"audio_model.{k}": v for k, v in state.items()}
    lightning["discriminator.disc.0.weight"] = torch.zeros(3)
    overrides, converted = convert_official({"state_dict": lightning, "epoch": 3})
    ref_overrides, ref = convert_official({"model_name": "Apollo", "state_dict": state})
    assert overrides == ref_overrides
    assert converted.keys() == ref.keys()
    assert all(torch.equal(converted[k], ref[k]) for k in ref)
    assert not any("cos_freq" in k or "sin_freq" in k for k in converted)


def test_convert_maps_model_args_and_rejects_contradictions():
    ctor, state = _random_official()
    overrides, _ = convert_official({"state_dict": state, "model_args": ctor})
    assert overrides == ctor
    with pytest.raises(CheckpointError, match="layer"):
        convert_official({"state_dict": state, "model_args": dict(ctor, layer=5)})
    with pytest.raises(CheckpointError, match="'depth'"):
        convert_official({"state_dict": state, "model_args": {"depth": 3}})
    with pytest.raises(CheckpointError, match="model_name"):
        convert_official({"model_name": "TDANet", "state_dict": state})


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update({"BN.0.2.weight": torch.zeros(1)}), "BN.0.2.weight"),
    (lambda s: s.pop("output.79.1.bias"), "output.79.1.bias"),
    (lambda s: s.pop("net.1.band_net.sin_freq"), "net.1.band_net.sin_freq"),
    (lambda s: s.update({"net.0.band_net.cos_freq": s["net.0.band_net.cos_freq"] * 1.01}),
     "net.0.band_net.cos_freq"),
    (lambda s: s.update({"BN.3.1.bias": torch.zeros(7)}), "BN.3.1.bias"),
])
def test_convert_names_the_bad_key(edit, match):
    _, state = _random_official()
    state = dict(state)
    edit(state)
    with pytest.raises(CheckpointError, match=match.replace(".", r"\.")):
        convert_official({"state_dict": state})


def test_rope_buffers_equal_our_tables():
    _, meta, _, state = _fixture()
    head_dim = json.loads(meta["constructor_args"])["feature_dim"] // 8
    cos, sin = rope_tables(100, head_dim)
    assert torch.equal(state["net.0.band_net.cos_freq"], cos)
    assert torch.equal(state["net.0.band_net.sin_freq"], sin)
    # the table itself: pair (2i, 2i+1) shares the angle pos * 10000**(-2i/d), float64 check
    pos = np.arange(100)[:, None]
    angle = pos * 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)[None, :]
    np.testing.assert_allclose(cos.numpy(), np.repeat(np.cos(angle), 2, axis=1), atol=2e-5)
    np.testing.assert_allclose(sin.numpy(), np.repeat(np.sin(angle), 2, axis=1), atol=2e-5)


def test_import_official_pickle_round_trip(tmp_path):
    """``upsr models import`` path: a torch-saved official dict with random weights -> upsr
    checkpoint -> the model built from the constructor args with those weights."""
    from upsr.models.importers import import_official

    ctor, state = _random_official(seed=5)
    src = tmp_path / "pytorch_model.bin"
    torch.save({"model_name": "Apollo", "state_dict": state,
                "model_args": {"n_sample_rate": 2}}, src)
    out = import_official("apollo", src, tmp_path / "apollo.safetensors")
    loaded = checkpoint.load(out, expect="apollo")
    direct = Apollo(ApolloConfig(feature_dim=ctor["feature_dim"], layer=ctor["layer"])).eval()
    direct.load_state_dict({k: v for k, v in state.items() if "_freq" not in k})
    x = torch.randn(2, 5000) * 0.1
    with torch.no_grad():
        y = loaded.restore(x)
        assert torch.equal(y, direct.restore(x))
        other = _random_official(seed=6)[1]
        direct.load_state_dict({k: v for k, v in other.items() if "_freq" not in k})
        assert rel_l2(direct.restore(x), y) > 1e-2


# -- upsr checkpoints ------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _small(feature_dim=32, layer=2)
    path = checkpoint.save(tmp_path / "a.safetensors", model, step=7)
    loaded = checkpoint.load(path)
    assert isinstance(loaded, Apollo)
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 4410)
    with torch.no_grad():
        assert torch.equal(model.restore(x), loaded.restore(x))


def test_wrong_system_and_corrupt_files_are_clear_errors(tmp_path):
    path = checkpoint.save(tmp_path / "a.safetensors", _small())
    with pytest.raises(CheckpointError, match="not 'aeromamba'"):
        checkpoint.load(path, expect="aeromamba")
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoint.load(bad, expect="apollo")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        checkpoint.load(junk)


# -- receptive field, chunking, lengths ------------------------------------------------------
@pytest.mark.parametrize("layer", [1, 2])
def test_receptive_field_is_measured_exactly(layer):
    """Perturb one sample at several offsets from the frame grid; the output changes within
    ``receptive_field`` samples and nowhere beyond, and the bound is tight to one hop."""
    model = _small(layer=layer)
    hop = model.align
    n = 4 * model.receptive_field
    torch.manual_seed(1)
    x = torch.randn(1, n) * 0.1
    offsets = (0, 1, 440)  # on a frame centre, just after it, just before the next
    positions = [(n // 2 // hop) * hop + off for off in offsets]
    reach = 0
    with torch.no_grad():
        base = model.restore(x)
        for pos in positions:  # one call each: rows of one batch may round differently
            x2 = x.clone()
            x2[0, pos] += 0.5
            changed = torch.nonzero(model.restore(x2)[0] != base[0]).flatten()
            reach = max(reach, pos - int(changed.min()), int(changed.max()) - pos)
    assert model.receptive_field - hop // 2 < reach <= model.receptive_field
    assert model.context_s == pytest.approx(model.receptive_field / 44100)


def test_context_s_of_published_config():
    cfg = ApolloConfig()
    with torch.device("meta"):
        model = Apollo(cfg)
    # 6 BSNets x 3 blocks x 3 frames each side + 2 frames of STFT/iSTFT overlap, 441-sample hop
    assert model.receptive_field == (6 * 3 * 3 + 2) * 441
    assert model.context_s == pytest.approx(0.56)


def _chunked(model: Apollo, x: torch.Tensor, keep: int, context: int) -> torch.Tensor:
    """Minimal chunker: kept regions of ``keep`` samples, each run with ``context`` samples of
    real audio either side (where the signal has them), margins dropped, concatenated."""
    n = x.shape[-1]
    out = []
    for start in range(0, n, keep):
        stop = min(start + keep, n)
        lo, hi = max(0, start - context), min(n, stop + context)
        with torch.no_grad():
            y = model.restore(x[:, lo:hi])
        out.append(y[:, start - lo: start - lo + stop - start])
    return torch.cat(out, -1)


def test_chunked_inference_with_context_equals_whole_signal():
    """30 s in 10 s chunks, each run with ``context_s`` of real audio either side, equals the
    whole-signal output in every kept region (and keeps the odd total length)."""
    model = _small(feature_dim=16, layer=1)
    torch.manual_seed(2)
    n = 44100 * 30 + 123
    x = torch.randn(1, n) * 0.1
    with torch.no_grad():
        whole = model.restore(x)
    assert whole.shape == x.shape
    context = round(model.context_s * model.out_rate)
    keep = 1000 * model.align  # 10 s; chunk starts on the STFT frame grid
    chunked = _chunked(model, x, keep, context)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_chunks_off_the_frame_grid_differ():
    """Why ``align`` matters: shifting the chunk grid by 100 samples moves the STFT frames,
    so the kept centres are no longer the whole-signal output."""
    model = _small(feature_dim=16, layer=1)
    torch.manual_seed(3)
    x = torch.randn(1, 44100) * 0.1
    with torch.no_grad():
        whole = model.restore(x)
    context, keep = model.receptive_field, 30 * model.align
    aligned = _chunked(model, x, keep, context)
    shifted = torch.cat([whole[:, :100], _chunked(model, x[:, 100:], keep, context)], -1)
    assert (aligned - whole).abs().max() <= 1e-4 * whole.abs().max()
    assert (shifted - whole).abs().max() > 1e-3 * whole.abs().max()


@pytest.mark.parametrize("length", [1, 440, 441, 442, 881, 1322, 4409, 4410, 44099])
def test_output_has_exactly_the_input_length(length):
    """Lengths one short of hop multiples, the shortest inputs, 0.1 s, 1 s (30 s: above)."""
    model = _small()
    x = torch.randn(2, length) * 0.1
    with torch.no_grad():
        y = model.restore(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert model.restore(torch.zeros(1, 0)).shape == (1, 0)


def test_engine_chunk_plan_with_context_and_align_equals_whole_signal():
    """The engine's ChunkPlan fed ``context_s`` and ``align`` (kept regions that are not hop
    multiples, chunk starts rounded down onto the frame grid) reproduces the whole signal."""
    from upsr.infer.chunk import ChunkPlan

    model = _small(feature_dim=16, layer=1)
    torch.manual_seed(4)
    x = torch.randn(1, 44100 * 2 + 17) * 0.1
    plan = ChunkPlan.for_rate(x.shape[-1], 44100, chunk_s=0.3123, overlap_s=0.0,
                              context_s=model.context_s, align=model.align)
    out = torch.zeros_like(x)
    with torch.no_grad():
        whole = model.restore(x)
        for ch in plan:
            assert ch.lo % model.align == 0
            y = model.restore(x[:, ch.lo:ch.hi])
            out[:, ch.keep_lo:ch.keep_hi] = y[:, ch.keep_lo - ch.lo:ch.keep_hi - ch.lo]
    assert len(plan) > 4
    assert (out - whole).abs().max() <= 1e-4 * whole.abs().max()


# -- bf16 inference ------------------------------------------------------------------------
BF16_TOL = 2e-2  # relative L2 of a bf16 output against float32 (REL_L2_BOUND of `auto`)


def _music(seconds: float, seed: int = 0) -> torch.Tensor:
    from upsr.audio import synth

    return torch.from_numpy(synth.music_like(seconds, 44100, channels=1, seed=seed)).float()


def test_time_conv_block_bf16_matches_float32():
    """The bf16 path (NHWC depthwise convolution, fused residual) computes the official
    block's function within bf16 rounding, and leaves its input alone."""
    from upsr.models.apollo import TimeConvBlock

    torch.manual_seed(0)
    block = TimeConvBlock(16, 64).eval()
    with torch.no_grad():
        block.conv[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 30, 6, 16)
    xb = x.bfloat16()
    x0 = xb.clone()
    with torch.inference_mode():
        ref = block(x.permute(0, 2, 3, 1).reshape(12, 16, 30))  # official layout, float32
        ref = ref.reshape(2, 6, 16, 30).permute(0, 3, 1, 2)
        y = block.forward_frames(xb)
    assert y.dtype == torch.bfloat16 and torch.equal(xb, x0)
    assert 1e-4 < rel_l2(y.float(), ref) < BF16_TOL


def test_bf16_autocast_inference_runs_the_bsnets_in_bf16():
    """Under bf16 autocast without gradients the BSNet stack runs in bf16 (embedding, head
    and STFTs in float32): output float32, within the bound of float32, and equal to calling
    the stages with ``run_net(..., torch.bfloat16)`` directly."""
    model = _small(feature_dim=32, layer=2)
    x = _music(0.5)
    with torch.inference_mode():
        y32 = model.restore(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = model.restore(x)
        net = model.run_net(model.features(model.stft(x)), torch.bfloat16)
        direct = model.istft(model.head(net.float()), x.shape[-1])
    assert net.dtype == torch.bfloat16
    assert y16.dtype == torch.float32 and y16.shape == x.shape
    assert torch.equal(y16, direct)
    assert 1e-4 < rel_l2(y16, y32) < BF16_TOL


def test_bf16_inference_follows_weight_changes():
    """No stale bf16 weights: edit a weight in place (as an optimizer step or a state-dict
    load does) and the next bf16 forward equals a fresh model holding the new weights."""
    model = _small(feature_dim=32, layer=1)
    x = _music(0.3, seed=1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.restore(x)
    with torch.no_grad():
        model.net[0].seq_net.blocks[0].conv[2].weight.mul_(1.5)
        model.net[0].band_net.weight.weight.mul_(0.5)
    fresh = Apollo(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after, ref = model.restore(x), fresh.restore(x)
    assert torch.equal(after, ref) and rel_l2(after, before) > 1e-2


def test_bf16_autocast_training_keeps_gradients():
    """With gradients on (training under autocast) the float32 code runs with autocast's
    casts: backward works, every parameter gets a finite gradient."""
    model = _small(feature_dim=16, layer=1).train()
    x = _music(0.2, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model.restore(x)
    y.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
