"""AEROMamba: parameter count, parity with the official code, the paper's Mamba path, checkpoints,
official import, receptive field / chunking, and output lengths."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tests.conftest import fixture_path, random_state, randomise_batchnorms, rel_l2
from upsr import checkpoint, models
from upsr.audio.synth import music_like
from upsr.errors import CheckpointError
from upsr.models import aeromamba as am

SR = 11025


def _fixture():
    path = fixture_path("aeromamba.safetensors")
    meta = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return json.loads(meta["constructor_args"]), state, tensors


#: The official ``Aero(**kwargs)`` arguments of conf/experiment/aeromamba.yaml (the parity
#: fixture's ``constructor_args``) with 4 channels instead of 48: what an official checkpoint
#: of a small AEROMamba holds.
OFFICIAL_ARGS = {
    "in_channels": 1, "out_channels": 1, "channels": 4, "growth": 2, "nfft": 512,
    "hop_length": 256, "end_iters": 0, "cac": True, "rewrite": True, "hybrid": False,
    "hybrid_old": False, "freq_emb": 0.2, "emb_scale": 10, "emb_smooth": True, "kernel_size": 8,
    "strides": [4, 4, 2, 2], "context": 1, "context_enc": 0, "freq_ends": 4, "enc_freq_attn": 0,
    "norm_starts": 2, "norm_groups": 4, "dconv_mode": 1, "dconv_depth": 2, "dconv_comp": 4,
    "dconv_time_attn": 4, "dconv_lstm": 4, "dconv_mamba": 0, "dconv_init": 0.001,
    "rescale": 0.1, "lr_sr": 11025, "hr_sr": 44100, "spec_upsample": True,
    "act_func": "snake", "debug": False}


def _random_official(seed: int = 0) -> tuple[dict, dict]:
    """``(kwargs, state)`` of an official checkpoint with random weights: the state keys are
    the official module names (``test_official_keys_equal_the_fixture_keys`` checks them
    against the fixture where it is present); every tensor is re-drawn, BatchNorm statistics
    included, so a wrong mapping changes the output."""
    with torch.device("meta"):
        names = models.build("aeromamba", channels=4, official_forward=True).state_dict()
    return dict(OFFICIAL_ARGS), random_state(names, seed)


def test_official_keys_equal_the_fixture_keys():
    """Where the parity fixture is present: its official state keys are the ones
    :func:`_random_official` writes (same config family, 8 channels)."""
    args, state, _ = _fixture()
    with torch.device("meta"):
        ours = models.build("aeromamba", channels=args["channels"],
                            official_forward=True).state_dict()
    assert sorted(state) == sorted(ours)
    assert all(tuple(state[k].shape) == tuple(ours[k].shape) for k in state)
    assert {k: v for k, v in args.items() if k != "channels"} == {
        k: v for k, v in OFFICIAL_ARGS.items() if k != "channels"}


def _official_package(args: dict, state: dict) -> dict:
    """What the safe unpickler gives for an official ``checkpoint.th``."""
    return {"models": {"generator": {"class": object(), "args": [], "kwargs": dict(args),
                                     "state": dict(state)}},
            "optimizers": {}, "history": []}


def _small(**kw) -> am.AEROMamba:
    """A reduced config (4 channels instead of 48) with the published time structure."""
    torch.manual_seed(0)
    return models.build("aeromamba", channels=4, **kw).eval()


def _signal(seconds: float, seed: int = 1) -> torch.Tensor:
    x = music_like(seconds, SR, channels=1, seed=seed)[0]
    return torch.from_numpy(np.ascontiguousarray(x[: int(round(seconds * SR))]))[None].float()


@contextlib.contextmanager
def frozen_statistics(model: am.AEROMamba):
    """Record the normalisation statistics of one whole-signal call, then replay them.

    The network normalises by whole-signal statistics (input mean/std, GroupNorm over the
    time axis), so any change anywhere moves every output a little. Freezing them isolates the
    receptive field of the convolutions (and Mamba), which is what ``context_s`` covers.
    Replay is exact: the same formula as ``nn.GroupNorm`` with the stored mean/var.
    """
    store: dict = {"mode": "record", "gn": {}, "in": None}
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]

    def make(m: nn.GroupNorm, key: int):
        def forward(x: torch.Tensor) -> torch.Tensor:
            xs = x.reshape(x.shape[0], m.num_groups, -1)
            if store["mode"] == "record":
                store["gn"][key] = (xs.mean(-1, keepdim=True),
                                    xs.var(-1, unbiased=False, keepdim=True))
            mean, var = store["gn"][key]
            shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
            y = ((xs - mean) / torch.sqrt(var + m.eps)).reshape_as(x)
            return y * m.weight.view(shape) + m.bias.view(shape)
        return forward

    for i, m in enumerate(norms):
        m.forward = make(m, i)  # type: ignore[method-assign]
    own = type(model)._statistics

    def statistics(z):
        if store["mode"] == "record":
            store["in"] = own(model, z)
        return store["in"]

    model._statistics = statistics  # type: ignore[method-assign]
    try:
        yield store
    finally:
        for m in norms:
            del m.forward
        del model._statistics


# --- size ------------------------------------------------------------------------------------

def test_default_parameter_count_is_published():
    for official in (False, True):
        model = models.build("aeromamba", official_forward=official)
        total = sum(p.numel() for p in model.parameters())
        mamba = sum(p.numel() for n, p in model.named_parameters() if ".mamba." in n)
        assert total == 20_964_190
        assert mamba == 2_606_400
    assert (model.in_rate, model.out_rate, model.channels) == (11025, 44100, "mono")


# --- parity with the official code ---------------------------------------------------------------

def test_official_forward_matches_fixture():
    args, state, t = _fixture()
    overrides, converted = am.convert_official(_official_package(args, state))
    assert overrides["official_forward"] is True
    model = models.build("aeromamba", **overrides).eval()
    checkpoint.load_state_strict(model, converted, "fixture")
    assert sum(p.numel() for p in model.parameters()) == int(
        safe_open(str(fixture_path("aeromamba.safetensors")), "pt").metadata()["param_count"])
    inter: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        y = model(t["input"][:, 0], inter)
    assert y.shape == t["output"][:, 0].shape
    assert rel_l2(y, t["output"][:, 0]) <= 1e-5
    for name in ("spec_in", "spec_out"):  # ours [B, 2, F, N]; fixture [B, 1, F, N, 2]
        assert rel_l2(inter[name].permute(0, 2, 3, 1), t[f"inter.{name}"][:, 0]) <= 1e-5, name
    for k in range(4):
        assert rel_l2(inter[f"encoder.{k}.out"], t[f"inter.encoder.{k}.out"]) <= 1e-5, k


def test_paper_forward_runs_mamba_official_does_not():
    args, state, t = _fixture()
    overrides, converted = am.convert_official(_official_package(args, state))
    x = t["input"][:, 0]
    outs = {}
    for official in (True, False):
        model = models.build("aeromamba", **(overrides | {"official_forward": official})).eval()
        model.load_state_dict(converted)
        with torch.no_grad():
            y = model.restore(x)
            gen = torch.Generator().manual_seed(0)
            for name, p in model.named_parameters():  # disturb only the Mamba weights
                if ".mamba." in name:  # (by 20 % of their scale: unit noise can overflow)
                    p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=gen))
            y_noisy = model.restore(x)
        outs[official] = (y, y_noisy)
    y_off, y_off_noisy = outs[True]
    y_pap, y_pap_noisy = outs[False]
    assert torch.equal(y_off, y_off_noisy)  # the released code never calls Mamba
    assert torch.isfinite(y_pap).all() and torch.isfinite(y_pap_noisy).all()
    assert rel_l2(y_pap, t["output"][:, 0]) > 1e-3  # Mamba changes the result...
    assert rel_l2(y_pap_noisy, y_pap) > 1e-3  # ...and depends on the Mamba weights


# --- checkpoints and official import --------------------------------------------------------------

def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model = _small(official_forward=False)
    path = checkpoint.save(tmp_path / "a.safetensors", model)
    loaded = checkpoint.load(path, expect="aeromamba")
    assert isinstance(loaded, am.AEROMamba) and loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    x = _signal(0.3)
    with torch.no_grad():
        assert torch.equal(model.restore(x), loaded.restore(x))


def test_wrong_system_and_corrupt_checkpoints_fail_clearly(tmp_path):
    path = checkpoint.save(tmp_path / "a.safetensors", _small())
    with pytest.raises(CheckpointError, match="not 'apollo'"):
        checkpoint.load(path, expect="apollo")
    data = path.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoint.load(broken)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        checkpoint.load(garbage)


def test_convert_official_names_bad_keys():
    args, state = _random_official()
    missing = dict(state)
    missing.pop("encoder.2.dconv.layers.1.mamba.A_log")
    with pytest.raises(CheckpointError, match="encoder.2.dconv.layers.1.mamba.A_log"):
        am.convert_official(_official_package(args, missing))
    extra = dict(state) | {"encoder.0.lstm.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="encoder.0.lstm.weight"):
        am.convert_official(_official_package(args, extra))
    with pytest.raises(CheckpointError, match="models.generator"):
        am.convert_official({"models": {"msd_melgan": {}}})
    with pytest.raises(CheckpointError, match="dconv_lstm"):
        am.convert_official(_official_package(args | {"dconv_lstm": 2}, state))
    with pytest.raises(CheckpointError, match="unknown official argument 'bogus'"):
        am.convert_official(_official_package(args | {"bogus": 1}, state))


def _omegaconf_like(value):
    """What the safe unpickler makes of an OmegaConf config: placeholders whose ``state``
    holds ``_content`` (DictConfig/ListConfig) or ``_val`` (value nodes)."""
    from upsr.models.importers import _opaque

    if isinstance(value, dict):
        node = _opaque("omegaconf.dictconfig", "DictConfig")()
        node.state = {"_metadata": None, "_parent": None,
                      "_content": {k: _omegaconf_like(v) for k, v in value.items()}}
    elif isinstance(value, list):
        node = _opaque("omegaconf.listconfig", "ListConfig")()
        node.state = {"_metadata": None, "_content": [_omegaconf_like(v) for v in value]}
    else:
        node = _opaque("omegaconf.nodes", "AnyNode")()
        node.state = {"_metadata": None, "_val": value}
    return node


def test_convert_official_reads_omegaconf_placeholders():
    args, state = _random_official()
    expected, _ = am.convert_official(_official_package(args, state))
    for kwargs in (_omegaconf_like(args),  # the whole config is a DictConfig
                   {k: _omegaconf_like(v) for k, v in args.items()}):  # plain dict of nodes
        package = {"class": object(), "args": [], "kwargs": kwargs, "state": state}
        overrides, _ = am.convert_official(package)
        assert overrides == expected
    assert expected["strides"] == (4, 4, 2, 2) and expected["channels"] == args["channels"]


def test_convert_official_without_readable_config_infers_channels():
    """``generator_best.th`` layout whose kwargs are an unreadable placeholder."""
    from upsr.models.importers import _opaque

    args, state = _random_official()
    package = {"class": object(), "args": [], "kwargs": _opaque("some", "Thing")(),
               "state": state}
    overrides, converted = am.convert_official(package)
    assert overrides == {"channels": args["channels"], "official_forward": True}
    assert converted.keys() == state.keys()


class OfficialAero:
    """Stands in for ``src.models.aero.Aero`` in a pickled official checkpoint."""


def test_cli_import_reproduces_the_official_model(tmp_path, run_cli):
    """``upsr models import`` of a pickled official checkpoint with random weights gives the
    model built from the official arguments with those weights (the fixture test checks that
    model against the official code)."""
    args, state = _random_official(seed=3)
    package = _official_package(args, state)
    package["models"]["generator"]["class"] = OfficialAero
    src = tmp_path / "checkpoint.th"
    torch.save(package, src)
    out = tmp_path / "aeromamba.safetensors"
    code, _, err = run_cli("models", "import", "aeromamba", str(src), str(out))
    assert code == 0, err
    model = checkpoint.load(out, expect="aeromamba")
    assert model.config.official_forward is True and model.config.channels == 4
    direct = models.build("aeromamba", channels=4, official_forward=True).eval()
    direct.load_state_dict(state)
    x = _signal(0.5)
    with torch.no_grad():
        y = model.restore(x)
        assert torch.equal(y, direct.restore(x))
        direct.load_state_dict(_random_official(seed=4)[1])  # other weights, other output
        assert rel_l2(direct.restore(x), y) > 1e-2


# --- receptive field and chunking ---------------------------------------------------------------

def _reach(model: am.AEROMamba, seconds: float, at: float,
           threshold: float) -> tuple[float, float]:
    """(past, future) reach in seconds of input: how far from a one-sample perturbation at
    ``at`` seconds the output changes by more than ``threshold`` × the largest change
    (statistics frozen)."""
    x = _signal(seconds)
    c = int(at * SR) + 17
    x2 = x.clone()
    x2[0, c] += 0.1
    with torch.no_grad(), frozen_statistics(model) as store:
        y = model.restore(x)
        store["mode"] = "replay"
        d = (model.restore(x2) - y)[0].abs()
    idx = torch.nonzero(d > threshold * d.max()).flatten()
    scale = model.config.scale * SR
    return (4 * c - idx.min().item()) / scale, (idx.max().item() - 4 * c) / scale


def test_receptive_field_without_mamba_is_within_context():
    model = _small(official_forward=True)
    past, future = _reach(model, 1.0, 0.5, 0.0)  # exact: any change at all
    assert 0.5 * model.context_s < max(past, future) <= model.context_s
    # the conv reach is a property of the config (32 frames of 64 samples + the STFT windows)
    assert model.context_s == pytest.approx((32 + 2) * 64 / SR)


def test_receptive_field_with_mamba_is_causal_and_within_context():
    model = _small(official_forward=False)
    with torch.no_grad():  # trained-like LayerScale so the Mamba path is not negligible
        for name, p in model.named_parameters():
            if name.endswith("conv2.3.scale"):
                p.uniform_(0.05, 0.5)
    local = am.AEROMambaConfig(channels=4, official_forward=True).context_s
    assert model.context_s == pytest.approx(local + am.MAMBA_REACH_S)
    # 1e-2 of the peak: above the float32 noise floor of the scan (~1e-3 of the peak)
    # perturb at 0.3 s of 3 s: room for the local reach before and the full context after
    past, future = _reach(model, 3.0, 0.3, 1e-2)
    assert past <= local  # the forward scan never looks ahead
    assert future <= model.context_s


def _chunked(model: am.AEROMamba, x: torch.Tensor, kept: int) -> torch.Tensor:
    """Minimal chunker: kept regions of ``kept`` samples, ``context_s`` of real audio each
    side, every chunk start on a multiple of ``model.align``."""
    ctx = int(np.ceil(model.context_s * SR))
    total = x.shape[-1]
    pieces = []
    for start in range(0, total, kept):
        stop = min(start + kept, total)
        lo = max(0, start - ctx) // model.align * model.align
        hi = min(total, stop + ctx)
        y = model.restore(x[:, lo:hi])
        pieces.append(y[:, 4 * (start - lo):4 * (stop - lo)])
    return torch.cat(pieces, dim=-1)


@pytest.mark.parametrize(("official", "seconds", "kept_s"), [(True, 30.0, 10.0),
                                                              (False, 8.0, 4.0)])
def test_chunked_equals_whole_signal(official, seconds, kept_s):
    """Chunks with ``context_s`` of real audio each side reproduce whole-signal inference in
    every kept region, once the whole-signal normalisation statistics are used (the model's
    input mean/std and its GroupNorms span the whole signal; see the class docstring). The
    Mamba variant runs on 8 s only to keep the suite fast."""
    model = _small(official_forward=official)
    x = _signal(seconds)
    kept = int(kept_s * SR)
    with torch.no_grad(), frozen_statistics(model) as store:
        whole = model.restore(x)
        store["mode"] = "replay"
        chunked = _chunked(model, x, kept)
    assert whole.shape == chunked.shape == (1, 4 * x.shape[-1])
    for s in range(0, x.shape[-1], kept):  # every kept region
        seg = slice(4 * s, 4 * min(s + kept, x.shape[-1]))
        assert rel_l2(chunked[:, seg], whole[:, seg]) <= 1e-4


# --- lengths ---------------------------------------------------------------------------------

def test_output_is_exactly_four_times_the_input():
    """1 sample short of hop multiples, shorter than the STFT frame, 0.1 s (30 s: see the
    chunking test); batch rows are processed independently."""
    model = _small(official_forward=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for length in (1, 63, 255, 319, 64 * 17 - 1, int(0.1 * SR)):
            x = torch.randn(2, length) * 0.1
            y = model.restore(x)
            assert y.shape == (2, 4 * length)
            assert torch.isfinite(y).all()
        assert torch.allclose(model.restore(x[1:]), y[1:], rtol=1e-4, atol=1e-6)


def test_paper_mode_lengths_and_empty_input():
    model = _small(official_forward=False)
    with torch.no_grad():
        for length in (1, 64 * 5 - 1, int(0.1 * SR)):
            y = model.restore(torch.randn(1, length) * 0.1)
            assert y.shape == (1, 4 * length) and torch.isfinite(y).all()
        assert model.restore(torch.zeros(3, 0)).shape == (3, 0)


# --- the statistics pass ------------------------------------------------------------------

def _float64_statistics(model: am.AEROMamba, x: torch.Tensor, frames: tuple[int, int]
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Reference for :meth:`collect_statistics`: one ordinary forward (with whatever statistics
    the model normalises by now) whose normalisation inputs are copied to float64, then the
    mean and variance over ``frames`` computed there (input: mean and unbiased std)."""
    a, b = frames
    inputs: dict[str, torch.Tensor] = {}

    def hook(key: str):
        def f(mod, args):
            inputs[key] = args[0].double()
        return f

    handles = [m.register_forward_pre_hook(hook(m.key))
               for m in model.modules() if isinstance(m, am._StatNorm)]
    inter: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            model(x, inter)
    finally:
        for h in handles:
            h.remove()
    z = inter["spec_in"].double()[..., a:b].reshape(x.shape[0], -1)
    out = {"input": (z.mean(-1)[:, None, None], z.std(-1)[:, None, None])}  # [rows, 1, 1]
    for m in model.modules():
        if isinstance(m, am._StatNorm):
            v = inputs[m.key]
            v = v.reshape(v.shape[0], m.num_groups, -1, v.shape[-1])[..., a:b].flatten(2)
            shape = (x.shape[0], -1, m.num_groups)  # [rows, norm rows per row, groups]
            out[m.key] = (v.mean(-1).reshape(shape), v.var(-1, unbiased=False).reshape(shape))
    return out


@pytest.mark.parametrize("official", [True, False])
def test_collect_statistics_equals_float64_sums(official):
    """The statistics pass (float32 per-frame moments, float64 sums over time, stopped after
    the last GroupNorm) equals the same statistics computed in float64 from a full forward's
    activations, for a middle part of a chunk, a final chunk, and with frozen statistics."""
    model = _small(official_forward=official)
    x = _signal(1.0) + 0.05  # an offset: group means far from zero test the Σx² form
    x = torch.cat([x, 0.3 * _signal(1.0, seed=2)], dim=0)  # two rows, different levels
    hop = model.config.in_hop
    n_frames = -(-x.shape[-1] // hop) + 1
    for keep, last, frames in (((640, 7000), False, (10, 110)),
                               ((3000, x.shape[-1]), True, (47, n_frames))):
        acc = model.collect_statistics(x, keep, last, None, None)
        got = model.finish_statistics(acc)
        ref = _float64_statistics(model, x, frames)
        _assert_statistics_close(got, ref)
    # frozen: the next pass normalises by given statistics; the reference forward uses them too
    model.use_statistics(got)
    try:
        ref = _float64_statistics(model, x, frames)
    finally:
        model.use_statistics(None)
    _assert_statistics_close(model.finish_statistics(
        model.collect_statistics(x, keep, True, None, got)), ref)


def _assert_statistics_close(got: list, ref: dict) -> None:
    """Means within 1e-6 of the spread (relative), variances / stds within 1e-5 relative."""
    assert set(ref) == set(got[0])
    for key, (mean, second) in ref.items():
        g_mean = torch.stack([row[key][0] for row in got])
        g_second = torch.stack([row[key][1] for row in got])
        spread = second.sqrt() if key != "input" else second
        assert ((g_mean - mean).abs() <= 1e-6 * (mean.abs() + spread)).all(), key
        assert ((g_second - second).abs() <= 1e-5 * second).all(), key


def test_frozen_statistics_equal_the_call_s_own():
    """``use_statistics`` with the whole signal's statistics (one multiply-add per element)
    reproduces the ordinary forward, which computes the same statistics itself."""
    model = _small(official_forward=True)
    x = _signal(1.0)
    with torch.no_grad():
        y = model(x)
        model.use_statistics(model.finish_statistics(
            model.collect_statistics(x, (0, x.shape[-1]), True, None, None)))
        try:
            y_frozen = model(x)
        finally:
            model.use_statistics(None)
    assert rel_l2(y_frozen, y) <= 1e-5


# --- inference paths -------------------------------------------------------------------------

@pytest.mark.parametrize("official", [True, False])
def test_inference_path_equals_the_autograd_path(official):
    """Without autograd (eval mode) the network takes its inference path (folded BatchNorms,
    in-place Snake, matrix products instead of 1×1 and transposed convs, no concatenation);
    with autograd it takes the plain path that training uses. Both give the same output to
    float32 rounding, and gradients still flow through the plain path."""
    model = _small(official_forward=official)
    randomise_batchnorms(model)
    x = torch.cat([_signal(0.3), 0.5 * _signal(0.3, seed=2)])
    y_train_path = model(x)
    y_train_path.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".mamba." not in n or not official]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        y = model(x)
    with torch.inference_mode():
        y_inf = model(x)
    assert rel_l2(y, y_train_path.detach()) <= 1e-5
    assert torch.equal(y, y_inf)


def test_freq_conv_transpose_equals_conv_transpose2d():
    g = torch.Generator().manual_seed(0)
    for cin, cout, stride, rows in ((6, 2, 4, 5), (8, 3, 2, 7), (4, 4, 1, 3), (5, 12, 2, 6),
                                    (7, 9, 4, 4)):  # the last two: phase convs
        conv = nn.ConvTranspose2d(cin, cout, (8, 1), (stride, 1))
        x = torch.randn(2, cin, rows, 11, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(am._freq_conv_transpose(conv, x), conv(x),
                                       rtol=1e-5, atol=1e-6)


def test_in_place_snake_equals_snake():
    snake = am.Snake(3)
    x = torch.randn(6, 5, 40)  # 2 examples × 3 frequency rows
    with torch.no_grad():
        ref = snake(x, 2)
        got = am._snake_(x.clone(), snake.a.repeat(2)[:, None, None])
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
