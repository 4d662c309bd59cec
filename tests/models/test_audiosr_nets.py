"""AudioSR networks: parity of the VAE, vocoder and U-Net with the official code (fixtures §7–§9),
published parameter counts, and the import of official-format checkpoints."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import fixture_path, rel_l2
from upsr.models.audiosr.unet import UNet, UNetConfig, timestep_embedding
from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig
from upsr.nn.layers import remove_norms

TOL = 1e-5
TOL_VAE_OUT = 5e-5  # fixture README §7: the official float32 decoder is itself this noisy


@functools.lru_cache(maxsize=4)
def _load(name: str):
    path = fixture_path(f"{name}.safetensors")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return meta, tensors, state


def _fixture(name: str):
    meta, tensors, state = _load(name)
    return meta, dict(tensors), dict(state)


def _built(cls, cfg, state):
    model = cls(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


def _record(taps: dict, name: str, module: torch.nn.Module, pre: bool = False) -> None:
    if pre:
        module.register_forward_pre_hook(lambda m, args: taps.__setitem__(name, args[0]))
    else:
        module.register_forward_hook(lambda m, args, out: taps.__setitem__(name, out))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- configurations and parameter counts ---------------------------------------------------

@pytest.mark.parametrize(("cls", "cfg", "params", "keys"), [
    (AutoencoderKL, VAEConfig(), 223_535_569, 252),
    (Vocoder, VocoderConfig(), 190_281_889, 254),
    (UNet, UNetConfig(), 258_195_088, 1104),
])
def test_published_parameter_counts(cls, cfg, params, keys):
    with torch.device("meta"):
        model = cls(cfg)
    assert _count(model) == params
    assert len(model.state_dict()) == keys
    assert cfg == type(cfg).published()


def test_published_vae_parts_match_the_official_split():
    meta, _, _ = _fixture("audiosr_vae")
    full = json.loads(meta["full_config_param_count"])
    with torch.device("meta"):
        model = AutoencoderKL()
    for part in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        assert _count(getattr(model, part)) == full[part], part


@pytest.mark.parametrize(("name", "cls", "cfg"), [
    ("audiosr_vae", AutoencoderKL, VAEConfig.small()),
    ("audiosr_vocoder", Vocoder, VocoderConfig.small()),
    ("audiosr_unet", UNet, UNetConfig.small()),
])
def test_small_configs_are_the_fixture_constructors(name, cls, cfg):
    """Same keys (in the official order, except that the official vocoder lists ``bias`` before
    ``weight`` after remove_weight_norm), same shapes, same parameter count."""
    meta, _, state = _fixture(name)
    ours = cls(cfg).state_dict()
    official = json.loads(meta["state_keys"])
    assert (sorted(ours) if name == "audiosr_vocoder" else list(ours)) == (
        sorted(official) if name == "audiosr_vocoder" else official)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in state.items()}
    assert sum(v.numel() for v in ours.values()) == int(meta["param_count"])


def test_configs_from_json_lists_and_bad_widths():
    cfg = VocoderConfig(**json.loads(json.dumps(VocoderConfig.small().as_dict())))
    assert cfg == VocoderConfig.small()
    assert UNetConfig(**json.loads(json.dumps(UNetConfig().as_dict()))) == UNetConfig()
    with pytest.raises(ValueError, match="multiple of 32"):
        VAEConfig(ch=48)
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetConfig(model_channels=40)


# --- parity: VAE (fixture §7) ------------------------------------------------------------------

def test_vae_parity_every_tensor():
    meta, t, state = _fixture("audiosr_vae")
    model = _built(AutoencoderKL, VAEConfig.small(), state)
    taps: dict[str, torch.Tensor] = {}
    _record(taps, "inter.encoder_out", model.encoder)
    _record(taps, "inter.moments", model.quant_conv)
    _record(taps, "inter.post_quant_conv_out", model.post_quant_conv)
    seed = json.loads(meta["run_params"])["sample_seed"]
    with torch.no_grad():
        posterior = model.encode(t["input"])
        sample = posterior.sample(torch.Generator().manual_seed(seed))
        out = model.decode(posterior.mode())
    got = {**taps, "inter.posterior_mean": posterior.mean,
           "inter.posterior_logvar": posterior.logvar, "inter.posterior_sample": sample}
    for name, value in got.items():
        assert rel_l2(value, t[name]) <= TOL, name
    assert rel_l2(out, t["output"]) <= TOL_VAE_OUT
    # the clamp acted: the fixture pushes half of logvar channel 1 below -30
    assert float(posterior.logvar.min()) == -30.0
    assert float(posterior.moments[:, 16 + 1].min()) < -30.0
    # explicit noise gives the same sample, and the std is exp(logvar / 2)
    assert rel_l2(posterior.sample(noise=t["inter.sample_noise"]), t["inter.posterior_sample"]) \
        <= TOL
    assert torch.allclose(posterior.std, torch.exp(0.5 * t["inter.posterior_logvar"]))


def test_vae_batch_items_are_independent():
    """A batch of two equals the single runs (shapes follow the input length)."""
    _, t, state = _fixture("audiosr_vae")
    model = _built(AutoencoderKL, VAEConfig.small(), state)
    with torch.no_grad():
        x = t["input"][..., :32, :]
        pair = torch.cat([x, x.flip(-2)])
        both = model.encode(pair).mean
        one = model.encode(pair[1:]).mean
        mel = model.decode(both)
    assert both.shape == (2, 16, 4, 32) and mel.shape == (2, 1, 32, 256)
    assert rel_l2(both[1:], one) <= 1e-6


# --- parity: vocoder (fixture §8) --------------------------------------------------------------

def test_vocoder_parity_every_tensor():
    _, t, state = _fixture("audiosr_vocoder")
    model = _built(Vocoder, VocoderConfig.small(), state)
    taps: dict[str, torch.Tensor] = {}
    _record(taps, "inter.conv_pre_out", model.conv_pre)
    for i, up in enumerate(model.ups):
        _record(taps, f"inter.ups.{i}.out", up)
    _record(taps, "inter.conv_post_in", model.conv_post, pre=True)
    with torch.no_grad():
        out = model(t["input"])
    frames = t["input"].shape[-1]
    assert out.shape == (t["input"].shape[0], 1, model.cfg.hop * frames + 16)
    assert rel_l2(out, t["output"]) <= TOL
    assert len(taps) == 7
    for name, value in taps.items():
        assert rel_l2(value, t[name]) <= TOL, name


def test_vocoder_weight_norm_round_trip_keeps_outputs():
    _, t, state = _fixture("audiosr_vocoder")
    model = _built(Vocoder, VocoderConfig.small(), state)
    mel = t["input"][..., :4]
    with torch.no_grad():
        ref = model(mel)
        model.apply_weight_norm()
        assert any("parametrizations" in k for k in model.state_dict())
        normed = model(mel)
        remove_norms(model)
        back = model(mel)
    assert set(model.state_dict()) == set(state)
    assert rel_l2(normed, ref) <= 1e-6 and rel_l2(back, ref) <= 1e-6


# --- parity: U-Net (fixture §9) ----------------------------------------------------------------

def test_unet_parity_every_tensor():
    meta, t, state = _fixture("audiosr_unet")
    model = _built(UNet, UNetConfig.small(), state)
    taps: dict[str, torch.Tensor] = {}
    _record(taps, "inter.emb", model.time_embed)
    _record(taps, "inter.middle_block.out", model.middle_block)
    for i in json.loads(meta["run_params"])["record_input_blocks"]:
        _record(taps, f"inter.input_blocks.{i}.out", model.input_blocks[i])
    for i in json.loads(meta["run_params"])["record_output_blocks"]:
        _record(taps, f"inter.output_blocks.{i}.out", model.output_blocks[i])
    # the wrapper's concatenation: noisy latent first, condition scaled
    xc = torch.cat([t["wrapper.x"], t["wrapper.cond"] * t["wrapper.scale_factor"]], dim=1)
    assert torch.equal(xc, t["input"])
    with torch.no_grad():
        out = model(xc, t["timesteps"])
        float_t = model(xc, t["timesteps"].float())
    assert rel_l2(out, t["output"]) <= TOL
    assert torch.equal(out, float_t)
    assert rel_l2(timestep_embedding(t["timesteps"], 32), t["inter.t_emb"]) <= TOL
    assert len(taps) == 7
    for name, value in taps.items():
        assert rel_l2(value, t[name]) <= TOL, name


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 7, 981])
    emb = timestep_embedding(t, 8).double()
    i = torch.arange(4, dtype=torch.float64)
    args = t[:, None].double() * 10000.0 ** (-i / 4)
    ref = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    assert torch.allclose(emb, ref, atol=2e-4)  # float32 arguments up to t·f ≈ 981
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
