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
from upsr.errors import CheckpointError
from upsr.models.audiosr.importer import convert_official
from upsr.models.audiosr.unet import UNet, UNetConfig, timestep_embedding
from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig
from upsr.models.importers import safe_load
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


# --- import of the official checkpoint format --------------------------------------------------

SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def _ema_name(key: str) -> str:
    return "model_ema." + ("diffusion_model." + key).replace(".", "")


@functools.lru_cache(maxsize=1)
def _official_state_dict():
    """What ``LatentDiffusion.state_dict()`` holds, with the fixtures' small networks: U-Net,
    first-stage VAE + vocoder, the condition's copy, EMA shadows (perturbed, so that choosing
    them is visible), a stand-in CLAP, the official schedule buffers, logvar, scale_factor."""
    _, _, vae = _fixture("audiosr_vae")
    _, _, voc = _fixture("audiosr_vocoder")
    _, ut, unet = _fixture("audiosr_unet")
    _, math_t, _ = _fixture("audiosr_pipeline_math")
    g = torch.Generator().manual_seed(7)
    sd: dict[str, torch.Tensor] = {}
    sd.update({"model.diffusion_model." + k: v.clone() for k, v in unet.items()})
    for prefix in ("first_stage_model.", "cond_stage_models.0.vae."):
        sd.update({prefix + k: v.clone() for k, v in vae.items()})
        sd.update({prefix + "vocoder." + k: v.clone() for k, v in voc.items()})
    sd.update({_ema_name(k): v + 0.01 * torch.randn(v.shape, generator=g)
               for k, v in unet.items()})
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    sd["clap.model.audio_branch.patch_embed.proj.weight"] = torch.randn(8, 1, 4, 4, generator=g)
    sd["clap.model.text_branch.embeddings.word_embeddings.weight"] = torch.randn(
        50, 8, generator=g)
    sd.update({name: math_t["schedule." + name].clone() for name in SCHEDULE})
    sd["logvar"] = torch.zeros(1000)
    sd["scale_factor"] = ut["wrapper.scale_factor"].clone()
    return sd


def _official_sd() -> dict[str, torch.Tensor]:
    return dict(_official_state_dict())


def _models(config, state):
    """Our three networks built from an imported (config, state), as the Restorer does."""
    config = json.loads(json.dumps(config))  # through JSON, like checkpoint metadata
    out = []
    for name, cls, cfg_cls in (("vae", AutoencoderKL, VAEConfig), ("vocoder", Vocoder,
                                                                    VocoderConfig),
                               ("unet", UNet, UNetConfig)):
        part = {k[len(name) + 1:]: v.float() for k, v in state.items()
                if k.startswith(name + ".")}
        out.append(_built(cls, cfg_cls(**config[name]), part))
    return out


def test_official_container_imports_and_reproduces_the_fixtures(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": _official_sd(), "epoch": 3, "global_step": 12000}, path)
    config, state = convert_official(safe_load(path))
    assert config["vae"] == VAEConfig.small().as_dict()
    assert config["vocoder"] == VocoderConfig.small().as_dict()
    assert config["unet"] == UNetConfig.small().as_dict()
    _, ut, _ = _fixture("audiosr_unet")
    assert config["scale_factor"] == float(ut["wrapper.scale_factor"])
    # one VAE, no CLAP/EMA/schedule: exactly the three networks' parameters
    n = sum(int(meta["param_count"]) for meta, _, _ in
            (_fixture(f) for f in ("audiosr_vae", "audiosr_vocoder", "audiosr_unet")))
    assert sum(v.numel() for v in state.values()) == n
    assert all(v.dtype == torch.float32 for v in state.values())
    vae, vocoder, unet = _models(config, state)
    _, vt, _ = _fixture("audiosr_vae")
    _, ct, _ = _fixture("audiosr_vocoder")
    with torch.no_grad():
        assert rel_l2(vae.decode(vae.encode(vt["input"]).mode()), vt["output"]) <= TOL_VAE_OUT
        assert rel_l2(vocoder(ct["input"]), ct["output"]) <= TOL
        assert rel_l2(unet(ut["input"], ut["timesteps"]), ut["output"]) <= TOL


def test_import_ema_and_half_precision():
    sd = _official_sd()
    _, ema_state = convert_official({"state_dict": sd}, ema=True)
    for key in ("out.2.weight", "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"):
        assert torch.equal(ema_state["unet." + key], sd[_ema_name(key)])
        assert not torch.equal(ema_state["unet." + key], sd["model.diffusion_model." + key])
    _, half = convert_official(sd, dtype=torch.float16)  # a bare state dict works too
    key = "vocoder.conv_pre.weight"
    assert half[key].dtype == torch.float16
    assert torch.equal(half[key], sd["first_stage_model." + key].half())
    with pytest.raises(CheckpointError, match="dtype"):
        convert_official(sd, dtype=torch.int8)


def test_import_folds_old_weight_norm_in_the_vocoder():
    """``w = g·v/‖v‖`` with the norm per dim-0 slice (the old ``weight_norm(dim=0)``)."""
    sd = _official_sd()
    key = "first_stage_model.vocoder.ups.1.weight"  # ConvTranspose1d: [in, out, k]
    w = sd.pop(key)
    sd[key + "_g"] = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
    sd[key + "_v"] = w * torch.linspace(0.5, 2.0, w.shape[0]).view(-1, 1, 1)
    _, state = convert_official(sd)
    assert rel_l2(state["vocoder.ups.1.weight"], w) <= 1e-6
    del sd[key + "_g"]
    with pytest.raises(CheckpointError, match="no matching"):
        convert_official(sd)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda sd: sd.update({"first_stage_model.loss.logvar": torch.zeros(1)}),
     "unexpected key 'first_stage_model.loss.logvar'"),
    (lambda sd: sd.pop("model.diffusion_model.out.2.bias"),
     "missing key 'model.diffusion_model.out.2.bias'"),
    (lambda sd: sd.update({"first_stage_model.vocoder.conv_post.weight": torch.zeros(1, 4, 5)}),
     "first_stage_model.vocoder.conv_post.weight' has shape"),
    (lambda sd: sd.update({"cond_stage_models.0.vae.encoder.conv_in.bias":
                           sd["cond_stage_models.0.vae.encoder.conv_in.bias"] + 1e-3}),
     "condition VAE 'cond_stage_models.0.vae.encoder.conv_in.bias' differs"),
    (lambda sd: sd.update({"alphas_cumprod": torch.linspace(1.0, 0.0, 1000)}),
     "cosine schedule"),
    (lambda sd: sd.pop("scale_factor"), "scale_factor"),
    (lambda sd: sd.update({"model_ema.unknown": torch.zeros(1)}),
     "unexpected key 'model_ema.unknown'"),
])
def test_import_errors_name_the_key(edit, message):
    sd = _official_sd()  # the edits replace tensors, never change them in place
    edit(sd)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(".", r"\.")):
        convert_official({"state_dict": sd}, ema="model_ema.unknown" in sd)


def test_import_rejects_what_is_not_an_audiosr_checkpoint():
    with pytest.raises(CheckpointError, match="state_dict"):
        convert_official(["not", "a", "dict"])
    with pytest.raises(CheckpointError, match="model.diffusion_model"):
        convert_official({"state_dict": {"scale_factor": torch.tensor(0.5)}})
    sd = {k: v for k, v in _official_sd().items() if not k.startswith("model_ema.")}
    with pytest.raises(CheckpointError, match="EMA weights requested"):
        convert_official(sd, ema=True)


def test_published_dot_free_ema_names_are_unambiguous():
    with torch.device("meta"):
        keys = list(UNet().state_dict())
    assert len({_ema_name(k) for k in keys}) == len(keys)


def test_import_reads_the_published_configuration_off_the_weights():
    """The full-size layout (meta tensors, no memory) maps to the published configs."""
    with torch.device("meta"):
        parts = {"model.diffusion_model.": UNet().state_dict(),
                 "first_stage_model.": AutoencoderKL().state_dict(),
                 "first_stage_model.vocoder.": Vocoder().state_dict()}
    sd = {prefix + k: v for prefix, part in parts.items() for k, v in part.items()}
    sd["scale_factor"] = torch.tensor(0.3342)
    config, state = convert_official({"state_dict": sd})
    assert config == {"vae": VAEConfig().as_dict(), "vocoder": VocoderConfig().as_dict(),
                      "unet": UNetConfig().as_dict(), "scale_factor": pytest.approx(0.3342)}
    assert sum(v.numel() for v in state.values()) == 223_535_569 + 190_281_889 + 258_195_088
