"""Convert the official AudioSR checkpoint (``audiosr_basic`` / ``audiosr_speech``
``pytorch_model.bin``) into upsr's state: one VAE, the vocoder and the U-Net.

The official file is a dict whose ``state_dict`` is the whole ``LatentDiffusion`` module
(read with :func:`upsr.models.importers.safe_load`, so no pickled code runs). Its keys:

- ``model.diffusion_model.*``: the U-Net → ``unet.*``;
- ``first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*``: the VAE → ``vae.*``;
- ``first_stage_model.vocoder.*``: the vocoder → ``vocoder.*``;
- ``cond_stage_models.0.vae.*``: the condition's VAE + vocoder copy (see below);
- ``model_ema.*``: LitEma, U-Net parameter names with every dot removed
  (``diffusion_modelout2weight``), plus ``decay`` and ``num_updates``;
- ``clap.*``: a CLAP model AudioSR never uses (dropped);
- ``betas``, ``alphas_cumprod``, … (12 schedule buffers) and ``logvar``: dropped after a check;
- ``scale_factor``: the latent scale → ``config["scale_factor"]``.

- **One VAE.** The official pipeline encodes the condition with the ``cond_stage_models.0.vae``
  copy and decodes with ``first_stage_model``. Only the copy's ``encoder`` and ``quant_conv``
  take part in inference, so those must equal the first-stage ones bit for bit; if they do not,
  the import fails rather than change the condition (its decoder and vocoder are never run).
- **EMA or not.** ``ema=False`` (the default, as the official CLI and ``build_model`` run) takes
  the U-Net from ``model.diffusion_model``; ``ema=True`` takes the ``model_ema`` shadow weights.
- **Schedule.** ``alphas_cumprod`` must be the 1000-step cosine schedule (s = 0.008, no clipping)
  the upsr sampler computes; the other buffers and ``logvar`` are dropped.
- **Weight norm.** A vocoder saved with old-style ``weight_g``/``weight_v`` keys is folded to
  plain weights (the official loader removes weight norm at construction).
- **Strict.** Every other key is an error naming it; the result is checked key by key and shape by
  shape against the modules built from the inferred configuration (on the meta device).

**Storage dtype: float32 by default.** Rounding the weights to half precision changes outputs
far more than float32 itself does. Measured on the parity fixtures' small configurations
(relative L2 of the output with rounded weights vs float32 weights; in brackets the float32 vs
float64 difference of the same computation): VAE decode(encode) fp16 5.9e-3, bf16 4.1e-2
[6.4e-6]; VAE encoder mean fp16 1.3e-3, bf16 9.8e-3 [1.5e-6]; vocoder fp16 2.1e-4, bf16
1.4e-3 [7.6e-8]; U-Net fp16 7.9e-4, bf16 6.5e-3 [6.8e-7]. So the default keeps float32
(≈ 2.69 GB for the 672 M kept parameters, against ≈ 1.35 GB in fp16); ``dtype=torch.float16``
or ``torch.bfloat16`` is available when size matters more than parity. Reproduce the table with
``python benchmarks/audiosr_weight_dtype.py``.
"""

from __future__ import annotations

import math
import typing as tp

import torch

from upsr.checkpoint import check_keys
from upsr.errors import CheckpointError
from upsr.models.audiosr.unet import UNet, UNetConfig
from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig

UNET = "model.diffusion_model."
FIRST = "first_stage_model."
COND = "cond_stage_models.0.vae."
EMA = "model_ema."
EMA_UNET = "diffusion_model"  # LitEma wraps DiffusionWrapper, whose U-Net is ``diffusion_model``
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
COND_USED = ("encoder.", "quant_conv.")
VOCODER = "vocoder."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
DROPPED_PREFIXES = ("clap.",)
TIMESTEPS = 1000
COSINE_S = 8e-3
STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def convert_official(obj: tp.Any, *, ema: bool = False, dtype: torch.dtype = torch.float32,
                     ) -> tuple[dict[str, tp.Any], dict[str, torch.Tensor]]:
    """Official AudioSR checkpoint → ``(config, state)``.

    ``config`` = ``{"vae": VAEConfig dict, "vocoder": VocoderConfig dict, "unet": UNetConfig
    dict, "scale_factor": float}`` (sizes read off the weights); ``state`` keys are prefixed
    ``vae.``, ``vocoder.``, ``unet.``, tensors in ``dtype`` (float32 default; see the module
    docstring for what half precision costs). ``obj`` is the unpickled file (a dict with
    ``state_dict``) or the state dict itself.
    """
    if dtype not in STORE_DTYPES:
        raise CheckpointError(f"audiosr: storage dtype must be one of "
                              f"{', '.join(str(d) for d in STORE_DTYPES)}, got {dtype}")
    state = _official_state(obj)
    unet, vae, vocoder, cond, ema_state = {}, {}, {}, {}, {}
    scale_factor: float | None = None
    alphas_cumprod: torch.Tensor | None = None
    for key, value in state.items():
        if key.startswith(UNET):
            unet[key[len(UNET):]] = value
        elif key.startswith(FIRST + VOCODER):
            vocoder[key[len(FIRST + VOCODER):]] = value
        elif key.startswith(FIRST) and key[len(FIRST):].startswith(VAE_PARTS):
            vae[key[len(FIRST):]] = value
        elif key.startswith(COND) and key[len(COND):].startswith((*VAE_PARTS, VOCODER)):
            cond[key[len(COND):]] = value
        elif key.startswith(EMA):
            ema_state[key[len(EMA):]] = value
        elif key == "scale_factor":
            scale_factor = float(value.reshape(-1)[0]) if value.numel() == 1 else math.nan
        elif key in SCHEDULE_BUFFERS:
            if key == "alphas_cumprod":
                alphas_cumprod = value
        elif not key.startswith(DROPPED_PREFIXES):
            raise CheckpointError(f"audiosr: unexpected key {key!r} (not a part of AudioSR's "
                                  f"LatentDiffusion)")
    if scale_factor is None or not math.isfinite(scale_factor) or scale_factor <= 0:
        raise CheckpointError("audiosr: missing or invalid key 'scale_factor' (the latent scale)")
    for name, part in (("model.diffusion_model", unet), ("first_stage_model", vae),
                       ("first_stage_model.vocoder", vocoder)):
        if not part:
            raise CheckpointError(f"audiosr: no '{name}.*' keys; not an AudioSR checkpoint")
    if alphas_cumprod is not None:
        _check_schedule(alphas_cumprod)
    vocoder = _fold_weight_norm(vocoder)
    _check_condition_vae(cond, vae)

    vae_cfg = _vae_config(vae)
    voc_cfg = _vocoder_config(vocoder)
    unet_cfg = _unet_config(unet)
    with torch.device("meta"):  # expected keys and shapes without allocating weights
        expected = {"vae": AutoencoderKL(vae_cfg).state_dict(),
                    "vocoder": Vocoder(voc_cfg).state_dict(),
                    "unet": UNet(unet_cfg).state_dict()}
    if ema:
        unet = _ema_unet(ema_state, expected["unet"])
    out: dict[str, torch.Tensor] = {}
    for name, part, official in (("vae", vae, FIRST), ("vocoder", vocoder, FIRST + VOCODER),
                                 ("unet", unet, UNET)):
        check_keys(part, expected[name], "audiosr", name=_official_name(official, ema))
        for key in expected[name]:  # our module order
            out[f"{name}.{key}"] = part[key].detach().to(dtype=dtype).contiguous()
    config = {"vae": vae_cfg.as_dict(), "vocoder": voc_cfg.as_dict(),
              "unet": unet_cfg.as_dict(), "scale_factor": scale_factor}
    return config, out


def _official_state(obj: tp.Any) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError("audiosr: expected the official dict with a 'state_dict' "
                              "(haoheliu/audiosr_basic or audiosr_speech pytorch_model.bin)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"audiosr: state_dict entry {key!r} is not a tensor")
    return dict(state)


def _check_schedule(alphas_cumprod: torch.Tensor) -> None:
    """ᾱ_t = f(t+1)/f(0) with f(i) = cos²(((i/T + s)/(1 + s))·π/2): LDM's cosine schedule as
    ``make_beta_schedule`` builds it for AudioSR (no clipping; fixture README §10 G)."""
    i = torch.arange(TIMESTEPS + 1, dtype=torch.float64)
    f = torch.cos((i / TIMESTEPS + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
    ref = f[1:] / f[0]
    got = alphas_cumprod.detach().to(torch.float64).reshape(-1)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=0.0, atol=1e-6):
        raise CheckpointError("audiosr: buffer 'alphas_cumprod' is not the 1000-step cosine "
                              "schedule (s 0.008) that upsr samples with")


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old-style weight-norm pairs ``X.weight_g``/``X.weight_v`` → ``X.weight = g·v/‖v‖``
    (norm over all dims but 0, as ``torch.nn.utils.weight_norm(dim=0)``)."""
    out = {k: v for k, v in state.items() if not k.endswith((".weight_g", ".weight_v"))}
    for key in state:
        if key.endswith(".weight_g"):
            base = key[: -len("_g")]
            if base + "_v" not in state:
                raise CheckpointError(f"audiosr: key {FIRST + VOCODER + key!r} has no "
                                      f"matching '{base}_v'")
            g, v = state[key].double(), state[base + "_v"].double()
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            out[base] = (g * v / norm).to(state[key].dtype)
        elif key.endswith(".weight_v") and key[: -len("_v")] + "_g" not in state:
            raise CheckpointError(f"audiosr: key {FIRST + VOCODER + key!r} has no matching "
                                  f"'{key[: -len('_v')]}_g'")
    return out


def _check_condition_vae(cond: dict[str, torch.Tensor], vae: dict[str, torch.Tensor]) -> None:
    """The condition encoder copy (if present) must equal the first-stage encoder exactly."""
    for key, value in cond.items():
        if not key.startswith(COND_USED):
            continue  # its decoder and vocoder never run
        ref = vae.get(key)
        if ref is None or ref.shape != value.shape or not torch.equal(ref, value):
            raise CheckpointError(
                f"audiosr: the condition VAE '{COND + key}' differs from "
                f"'{FIRST + key}'; upsr keeps one VAE and would encode the condition "
                f"differently from the official pipeline")
    if cond and not any(k.startswith(COND_USED) for k in cond):
        raise CheckpointError(f"audiosr: '{COND}*' holds no encoder")


def _official_name(prefix: str, ema: bool) -> tp.Callable[[str], str]:
    """Our key → the key the user's file holds (for error messages)."""
    if ema and prefix == UNET:
        return _ema_key
    return lambda key: prefix + key


def _ema_key(key: str) -> str:
    return EMA + (EMA_UNET + "." + key).replace(".", "")


def _ema_unet(ema_state: dict[str, torch.Tensor],
              expected: tp.Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The U-Net from LitEma's shadow buffers (names = parameter names without dots)."""
    if not any(k.startswith(EMA_UNET) for k in ema_state):
        raise CheckpointError("audiosr: EMA weights requested but the checkpoint has no "
                              "'model_ema.diffusion_model*' keys")
    names = {(EMA_UNET + "." + k).replace(".", ""): k for k in expected}
    if len(names) != len(expected):  # dot removal must stay unambiguous for this layout
        raise CheckpointError("audiosr: EMA key names are ambiguous for this U-Net layout")
    unet: dict[str, torch.Tensor] = {}
    for key, value in ema_state.items():
        if key in ("decay", "num_updates"):
            continue
        if key not in names:
            raise CheckpointError(f"audiosr: unexpected key {EMA + key!r}")
        unet[names[key]] = value
    return unet


def _shape(state: dict[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"audiosr: missing key {where + key!r}")
    return tuple(state[key].shape)


def _indices(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted child indices ``i`` of keys ``prefix{i}.…``."""
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state
             if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return sorted(found)


def _config(cls: tp.Any, what: str, **values: tp.Any) -> tp.Any:
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"audiosr: the {what} weights describe no valid model "
                              f"({exc})") from None


def _vae_config(vae: dict[str, torch.Tensor]) -> VAEConfig:
    ch, in_channels = _shape(vae, "encoder.conv_in.weight", FIRST)[:2]
    levels = _indices(vae, "encoder.down.")
    ch_mult = tuple(_shape(vae, f"encoder.down.{i}.block.0.conv1.weight", FIRST)[0] // ch
                    for i in levels)
    z_channels = _shape(vae, "decoder.conv_in.weight", FIRST)[1]
    defaults = VAEConfig()
    attn = tuple(defaults.resolution // 2 ** i for i in levels
                 if f"encoder.down.{i}.attn.0.q.weight" in vae)
    return tp.cast(VAEConfig, _config(
        VAEConfig, "VAE", ch=ch, ch_mult=ch_mult,
        num_res_blocks=len(_indices(vae, "encoder.down.0.block.")),
        attn_resolutions=attn, in_channels=in_channels,
        out_ch=_shape(vae, "decoder.conv_out.weight", FIRST)[0], z_channels=z_channels,
        embed_dim=_shape(vae, "post_quant_conv.weight", FIRST)[1],
        double_z=_shape(vae, "encoder.conv_out.weight", FIRST)[0] == 2 * z_channels))


def _vocoder_config(vocoder: dict[str, torch.Tensor]) -> VocoderConfig:
    """Widths from the weights; rates and dilations (invisible in shapes) are the published
    ones, and the strict shape check then confirms the kernel sizes."""
    where = FIRST + VOCODER
    channels, mels = _shape(vocoder, "conv_pre.weight", where)[:2]
    return tp.cast(VocoderConfig, _config(VocoderConfig, "vocoder", num_mels=mels,
                                          upsample_initial_channel=channels))


def _unet_config(unet: dict[str, torch.Tensor]) -> UNetConfig:
    """Levels, widths and attention placement from the block layout; ``num_head_channels`` is
    invisible in shapes and stays the published 32."""
    mc, in_channels = _shape(unet, "input_blocks.0.0.weight", UNET)[:2]
    blocks = _indices(unet, "input_blocks.")
    downs = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in unet]
    levels = len(downs) + 1
    res_blocks, rem = divmod(len(blocks) - 1 - len(downs), levels)
    if rem or res_blocks < 1:
        raise CheckpointError("audiosr: the U-Net input blocks do not form whole levels")
    mult, attention, depth, transformers = [], [], 1, 1
    for level in range(levels):
        first = 1 + level * (res_blocks + 1)  # the level's first ResBlock entry
        mult.append(_shape(unet, f"input_blocks.{first}.0.out_layers.3.weight", UNET)[0] // mc)
        if f"input_blocks.{first}.1.norm.weight" in unet:
            attention.append(2 ** level)
            transformers = 2 if f"input_blocks.{first}.2.norm.weight" in unet else 1
            depth = len(_indices(unet, f"input_blocks.{first}.1.transformer_blocks."))
    return tp.cast(UNetConfig, _config(
        UNetConfig, "U-Net", in_channels=in_channels,
        out_channels=_shape(unet, "out.2.weight", UNET)[0], model_channels=mc,
        channel_mult=tuple(mult), attention_resolutions=tuple(sorted(attention, reverse=True)),
        num_res_blocks=res_blocks, transformer_depth=depth, extra_sa_layer=transformers == 2))
