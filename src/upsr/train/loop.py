"""The trainer: GAN systems (AEROMamba, Apollo, Wave-U-Mamba) and diffusion systems (MambaWave).

Each step (Goodfellow et al. 2014, alternating updates as in HiFi-GAN/MelGAN):

1. ``fake = G(lr)``;
2. discriminator step: ``D([real; fake.detach()])`` in one forward (one DDP forward per
   backward), adversarial D loss, clip, step;
3. generator step: weighted reconstruction losses + ``adversarial`` × G loss on ``D(fake)`` +
   ``feature_matching`` × matching against ``D(real)`` features (D frozen and unwrapped, so no
   gradient is synchronised for it), clip, step; then the EMA of G.

A run folder holds ``recipe.toml`` (resolved), ``log.csv``, ``checkpoints/{latest,best}
.safetensors`` (upsr checkpoints, ``upsr enhance --model FILE`` loads them; EMA weights when
EMA is on), ``checkpoints/latest.state.pt`` (G, D, optimisers, schedulers, EMA, RNG states,
step) and ``valid/step_XXXXXXX/`` examples. ``--resume`` restores the state file; because every
data item is a function of (seed, epoch, index), the continued run equals an uninterrupted one.

A diffusion model (its class sets ``diffusion = True``) has no discriminator: each step is one
optimiser step on :class:`upsr.train.systems.DiffusionLoss`, and validation runs its sampler
(``valid.steps`` DDIM steps) and adds NU-Wave's LSD (``lsd_nuwave``, n_fft 1024, hop 256, as
the MambaWave paper reports) and SNR.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import sys
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from upsr.errors import CheckpointError, UsageError
from upsr.fsutil import atomic_path, atomic_write_text
from upsr.train import audiosr_stages as stages
from upsr.train import data as D
from upsr.train import distributed as dist_
from upsr.train import recipe as R
from upsr.train import systems as S

log = logging.getLogger("upsr.train")

STATE_FILE = "latest.state.pt"


class _Restore(nn.Module):
    """``forward = restore``, so DDP hooks the generator's real entry point."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.restore(x)  # type: ignore[operator]


@dataclass
class State:
    """Everything a step changes (what the state file saves)."""

    generator: nn.Module  # the Restorer itself
    discriminator: nn.Module | None  # None for diffusion systems
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler | None
    ema: dict[str, torch.Tensor] | None = None
    step: int = 0
    best: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """A configured training run (built by :func:`prepare`)."""

    recipe: R.Recipe
    recipe_text: str
    run_dir: Path
    dist: dist_.Dist
    state: State
    g_train: nn.Module  # DDP-wrapped (or plain) restore module, or the diffusion loss
    d_train: nn.Module | None  # DDP-wrapped (or plain) discriminator
    gen_loss: S.GeneratorLoss
    dataset: D.PairDataset
    valid: list[D.ValidItem]
    steps_per_epoch: int
    total_steps: int
    epoch_items: int
    autocast: bool
    diffusion: bool = False
    variant: dict[str, float] = field(default_factory=dict)  # checkpoint metadata
    stage: str | None = None  # AudioSR's "vae"/"vocoder" fine-tuning (upsr.train.audiosr_stages)


# ----------------------------------------------------------------------------------- set-up


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _align(model: tp.Any, sr: int) -> int:
    """Segment frames must be a multiple of this for a model that consumes another rate:
    whole input hops at its input rate (AEROMamba: 64 × 4 = 256 samples at 44.1 kHz), so
    that ``restore`` returns exactly the target's length. Models that run at ``sr`` (the
    degraded side resampled back) take any length."""
    if model.in_rate is None or model.in_rate == sr:
        return 1
    ratio = sr // math.gcd(sr, int(model.in_rate))
    return int(model.align) * ratio


def _init_weights(model: nn.Module, path: str) -> None:
    """Start from the weights of a upsr checkpoint of the same system and configuration
    (e.g. AudioSR's diffusion stage on an imported VAE + vocoder)."""
    from safetensors.torch import load_file

    from upsr import checkpoint, models

    meta = checkpoint.read_metadata(path)
    if models.canonical(meta["model"]) != getattr(model, "name", ""):
        raise UsageError(f"recipe model.init: {path} holds a {meta['model']!r} model, not "
                         f"{getattr(model, 'name', '')!r}")
    checkpoint.load_state_strict(model, load_file(str(path)), f"recipe model.init {path}")


def unused_parameters(gen: nn.Module, lr: torch.Tensor) -> list[str]:
    """Names of the generator's trainable parameters that get no gradient from ``restore``
    on ``lr: [B, T_lr]`` (AEROMamba with ``official_forward``: its Mamba blocks), found by
    one forward/backward on a copy (the model, its buffers and the RNG are left as they are)."""
    probe = copy.deepcopy(gen)
    rng = torch.get_rng_state()
    try:
        probe.restore(lr).float().square().mean().backward()  # type: ignore[operator]
    finally:
        torch.set_rng_state(rng)
    return [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]


def _freeze_unused(gen: nn.Module, dataset: D.PairDataset) -> None:
    """Before DDP: parameters no step updates are excluded (``requires_grad = False``), so
    DDP does not wait for their gradients (which never come) from the second step on."""
    _, lr = dataset[(0, 0)]
    dev = next(gen.parameters()).device
    names = set(unused_parameters(gen, lr.to(dev)))
    if names:
        log.info("%d generator tensors get no gradient (e.g. %s); DDP leaves them out",
                 len(names), sorted(names)[0])
        for n, p in gen.named_parameters():
            if n in names:
                p.requires_grad_(False)


def _best_on_disk(path: Path, st: State, key: str) -> None:
    """On resume: ``best.safetensors`` may hold a better score than the state file saw (it is
    written at every validation, the state at checkpoints only)."""
    from upsr import checkpoint

    if not path.is_file():
        return
    value = json.loads(checkpoint.read_metadata(path).get("metrics") or "{}").get(key)
    if value is not None and _better(key, float(value), st.best):
        st.best = float(value)


def default_run_dir(recipe: R.Recipe) -> Path:
    return Path("runs") / f"{recipe.name or 'recipe'}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare(recipe: R.Recipe, run_dir: Path | None, *, resume: bool = False,
            device: str = "auto") -> Run:
    """Build models, data, optimisers; restore the run folder's state with ``resume``."""
    from upsr import models

    d = dist_.setup(device)
    if run_dir is None:
        run_dir = Path(dist_.broadcast(d, str(default_run_dir(recipe))))
    ckpt_dir = run_dir / "checkpoints"
    if resume and not (ckpt_dir / STATE_FILE).is_file():
        raise UsageError(f"--resume: {ckpt_dir / STATE_FILE} does not exist (nothing to "
                         f"resume; pass the run folder with --out)")
    if not resume and (ckpt_dir / STATE_FILE).is_file():
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or "
                         f"another --out")
    recipe_text = R.dump(recipe)
    if resume:
        saved = run_dir / "recipe.toml"
        R.check_resume(saved.read_text(encoding="utf-8") if saved.is_file()
                       else _saved_recipe(ckpt_dir / STATE_FILE), recipe, str(saved))
    _seed_all(recipe.train.seed)
    gen = models.build(recipe.model.name, **recipe.model.config)
    if recipe.model.init:
        _init_weights(gen, recipe.model.init)
    S.check_recipe_model(recipe, gen)
    stage = stages.stage_of(gen)
    is_diffusion = bool(getattr(gen, "diffusion", False)) and stage is None
    disc = None if is_diffusion else S.build_discriminator(recipe.discriminator,
                                                           recipe.data.channels)
    gen.to(d.device).train()
    if disc is not None:
        disc.to(d.device).train()

    spec = recipe.degrade_spec()
    rate_ch = dict(sr=recipe.data.sample_rate, channels=recipe.data.channels)
    source = D.open_source(recipe.data.train, "data.train", **rate_ch)
    variant = D.variant_of(spec, source)
    if recipe.data.valid:
        valid_src = D.open_source(recipe.data.valid, "data.valid", **rate_ch)
    elif recipe.data.valid_files:
        source, valid_src = D.split(source, recipe.data.valid_files)
    else:
        valid_src = None
    if not source.paired and spec.is_identity and stage is None:
        log.warning("no [degrade] given: the model learns the identity")
    if not source.paired:
        spec.check_rate(recipe.data.sample_rate)
    sr = recipe.data.sample_rate
    align = _align(gen, sr)
    frames = max(align, int(recipe.data.segment_s * sr) // align * align)
    common = dict(sr=sr, channels=recipe.data.channels, seed=recipe.train.seed,
                  degrade=spec, lr_rate=gen.in_rate, silence_power=recipe.data.silence_power,
                  normalize=recipe.data.normalize, peak=recipe.data.peak)
    dataset = D.PairDataset(source, frames=frames, stems_prob=recipe.data.stems_prob,
                            stems_max=recipe.data.stems_max,
                            stems_gain_db=recipe.data.stems_gain_db, **common)
    valid: list[D.ValidItem] = []
    if valid_src is not None and d.main:
        vframes = max(align, int(recipe.valid.segment_s * sr) // align * align)
        vds = D.PairDataset(valid_src, frames=vframes, **common)
        valid = D.valid_items(vds, recipe.valid.items, vframes)
    per_step = recipe.data.batch_size * d.world
    epoch_items = max(recipe.data.epoch_items or len(source.clips), per_step)
    steps_per_epoch = epoch_items // per_step
    total = recipe.train.steps or recipe.train.epochs * steps_per_epoch

    g_opt = S.build_optimizer(gen.parameters(), recipe.optim.generator)
    d_opt = (None if disc is None
             else S.build_optimizer(disc.parameters(), recipe.optim.discriminator))
    state = State(gen, disc, g_opt, d_opt, S.build_scheduler(g_opt, recipe.schedule),
                  None if d_opt is None else S.build_scheduler(d_opt, recipe.schedule))
    if recipe.train.ema:
        state.ema = {k: v.detach().clone() for k, v in gen.state_dict().items()}
    if resume:
        load_state(ckpt_dir / STATE_FILE, state, d.device)
        _best_on_disk(ckpt_dir / "best.safetensors", state, recipe.checkpoint.metric)
    g_train: nn.Module = _trained_module(gen, is_diffusion, stage)
    d_train: nn.Module | None = disc
    if d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        if d.device.type == "cuda":  # batch statistics over all ranks (Apollo used sync BN)
            gen = nn.SyncBatchNorm.convert_sync_batchnorm(gen)
            state.generator = gen
        if not is_diffusion and stage is None:
            _freeze_unused(gen, dataset)
        g_train = DDP(_trained_module(gen, is_diffusion, stage), device_ids=ids)
        d_train = None if disc is None else DDP(disc, device_ids=ids)
    from upsr.infer.precision import device_has_native_bf16

    want, native = recipe.train.precision, device_has_native_bf16(d.device.type)
    autocast = native and (want == "bf16" or (want == "auto" and d.device.type == "cuda"))
    if want == "bf16" and not native:
        log.warning("train.precision bf16: %s has no native bf16; training in float32",
                    d.device.type)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.toml", recipe_text)
    dist_.barrier(d)
    return Run(recipe, recipe_text, run_dir, d, state, g_train, d_train,
               S.GeneratorLoss({} if is_diffusion or stage else recipe.losses).to(d.device),
               dataset, valid, steps_per_epoch, total, epoch_items, autocast, is_diffusion,
               variant, stage)


def _trained_module(gen: nn.Module, is_diffusion: bool, stage: str | None) -> nn.Module:
    """What DDP wraps: the diffusion loss, a first-stage forward, or ``restore``."""
    if stage is not None:
        return stages.StageForward(gen)
    return S.DiffusionLoss(gen) if is_diffusion else _Restore(gen)


# -------------------------------------------------------------------------------- one step


def _split_batch(out: S.DiscOutput, n: int) -> tuple[S.DiscOutput, S.DiscOutput]:
    logits, feats = out
    real = ([x[:n] for x in logits], [[f[:n] for f in fs] for fs in feats])
    fake = ([x[n:] for x in logits], [[f[n:] for f in fs] for fs in feats])
    return real, fake


def _clip(params: tp.Iterable[torch.Tensor], max_norm: float) -> float:
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(list(params), max_norm))
    return float("nan")


def train_step(run: Run, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, float]:
    """One D step and one G step on ``hr: [B, C, T]`` (target) and ``lr: [B, C, T_lr]``
    (diffusion systems: one step on the diffusion loss)."""
    if run.diffusion:
        return diffusion_step(run, hr, lr)
    if run.stage is not None:
        return stages.train_step(run, hr)
    rc, st = run.recipe, run.state
    dev = run.dist.device
    hr, lr = hr.to(dev, non_blocking=True), lr.to(dev, non_blocking=True)
    B, C, T = hr.shape
    w_adv = rc.losses.get("adversarial", 0.0)
    w_fm = rc.losses.get("feature_matching", 0.0)
    use_d = (w_adv > 0 or w_fm > 0) and st.step >= rc.discriminator.start
    d_loss_fn, g_loss_fn, fm_fn = S.adversarial_losses(rc.discriminator)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.autocast)
    with amp:
        fake = run.g_train(lr.reshape(B * C, -1))
    fake = fake.float().reshape(B, C, -1)
    n = min(T, fake.shape[-1])
    fake, hr = fake[..., :n], hr[..., :n]
    out: dict[str, float] = {}

    disc = st.discriminator
    assert disc is not None and st.opt_d is not None and run.d_train is not None
    if use_d:
        for p in disc.parameters():
            p.requires_grad_(True)
        real_in = S.disc_input(disc, hr)
        with amp:
            both = run.d_train(torch.cat([real_in, S.disc_input(disc, fake.detach())]))
        (r_logits, _), (f_logits, _) = _split_batch(both, real_in.shape[0])
        d_loss = d_loss_fn([x.float() for x in r_logits], [x.float() for x in f_logits])
        st.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        out["grad_norm_d"] = _clip(disc.parameters(), rc.optim.discriminator.grad_clip)
        st.opt_d.step()
        out["loss_d"] = float(d_loss.detach())
        for p in disc.parameters():
            p.requires_grad_(False)

    rec = run.gen_loss(fake, hr)
    total = rec["total"]
    if use_d:
        real_in = S.disc_input(disc, hr)
        with amp:
            both = disc(torch.cat([real_in, S.disc_input(disc, fake)]))
        (_, r_feats), (f_logits, f_feats) = _split_batch(both, real_in.shape[0])
        if w_adv > 0:
            adv = g_loss_fn([x.float() for x in f_logits])
            total = total + w_adv * adv
            out["adversarial"] = float(adv.detach())
        if w_fm > 0:
            fm = fm_fn([[f.float() for f in fs] for fs in f_feats],
                       [[f.float() for f in fs] for fs in r_feats])
            total = total + w_fm * fm
            out["feature_matching"] = float(fm.detach())
    st.opt_g.zero_grad(set_to_none=True)
    total.backward()
    out["grad_norm_g"] = _clip(st.generator.parameters(), rc.optim.generator.grad_clip)
    st.opt_g.step()
    if st.ema is not None:
        _ema_update(st.ema, st.generator, rc.train.ema)
    out["loss_g"] = float(total.detach())
    for k, v in rec.items():
        if k != "total":
            out[k] = float(v.detach())
    if not math.isfinite(out["loss_g"]):
        raise UsageError(f"step {st.step + 1}: the generator loss is not finite; lower the "
                         f"learning rate or check the data")
    return out


def diffusion_step(run: Run, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, float]:
    """One optimiser step on the diffusion loss (``run.g_train`` is a DiffusionLoss)."""
    rc, st = run.recipe, run.state
    dev = run.dist.device
    hr, lr = hr.to(dev, non_blocking=True), lr.to(dev, non_blocking=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.autocast):
        loss = run.g_train(hr, lr)
    st.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    out = {"grad_norm_g": _clip(st.generator.parameters(), rc.optim.generator.grad_clip)}
    st.opt_g.step()
    if st.ema is not None:
        _ema_update(st.ema, st.generator, rc.train.ema)
    out["loss_g"] = out["diffusion"] = float(loss.detach())
    if not math.isfinite(out["loss_g"]):
        raise UsageError(f"step {st.step + 1}: the diffusion loss is not finite; lower the "
                         f"learning rate or check the data")
    return out


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·θ`` for trained floating tensors and buffers; frozen
    parameters (AudioSR's VAE and vocoder in its diffusion stage) and integer buffers are
    copied, since the average of two equal floats is not always bit-equal to them."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point and k not in frozen:
            ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            ema[k].copy_(v)


# ------------------------------------------------------------------------- state save/load


def _rng_state() -> dict[str, tp.Any]:
    np_state: tp.Any = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                      "cached": float(np_state[4])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(s: dict[str, tp.Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_state(path: Path, st: State, recipe_text: str) -> None:
    blob = {"step": st.step, "best": st.best, "metrics": st.metrics,
            "generator": st.generator.state_dict(),
            "discriminator": None if st.discriminator is None else st.discriminator.state_dict(),
            "opt_g": st.opt_g.state_dict(),
            "opt_d": None if st.opt_d is None else st.opt_d.state_dict(),
            "sched_g": st.sched_g.state_dict(),
            "sched_d": None if st.sched_d is None else st.sched_d.state_dict(),
            "ema": st.ema, "rng": _rng_state(), "recipe": recipe_text}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _saved_recipe(path: Path) -> str:
    """The recipe text a state file was written with."""
    try:
        return str(torch.load(path, map_location="cpu", weights_only=True)["recipe"])
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None


def load_state(path: Path, st: State, device: torch.device) -> None:
    """Restore a state file into ``st`` (weights_only loading: no pickled code runs)."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
    try:
        st.generator.load_state_dict(blob["generator"])
        st.opt_g.load_state_dict(blob["opt_g"])
        st.sched_g.load_state_dict(blob["sched_g"])
        for part, key in ((st.discriminator, "discriminator"), (st.opt_d, "opt_d"),
                          (st.sched_d, "sched_d")):
            if (part is None) != (blob[key] is None):
                raise ValueError(f"the state file's {key} does not match this recipe")
            if part is not None:
                part.load_state_dict(blob[key])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: does not fit this recipe's models "
                              f"({str(exc).splitlines()[0]})") from None
    if st.ema is not None:
        st.ema = blob["ema"] or {k: v.detach().clone()
                                 for k, v in st.generator.state_dict().items()}
    st.step, st.best, st.metrics = int(blob["step"]), blob["best"], dict(blob["metrics"])
    _set_rng_state(blob["rng"])


def _export_model(st: State) -> nn.Module:
    """The generator as checkpoints hold it: the EMA weights when EMA is on."""
    if st.ema is None:
        return st.generator
    m = copy.deepcopy(st.generator)
    m.load_state_dict(st.ema)
    return m


def _better(key: str, value: float, best: float | None) -> bool:
    sign = -1.0 if key == "si_snr" else 1.0  # SI-SNR: higher is better
    return best is None or sign * value < sign * best


def save_best(run: Run, metrics: dict[str, float]) -> bool:
    """Rank 0, after every validation: ``best.safetensors`` when ``metrics`` improve on the
    best so far (by ``checkpoint.metric``). Returns whether it was written."""
    from upsr import checkpoint

    st = run.state
    key = run.recipe.checkpoint.metric
    value = metrics.get(key)
    if value is None or not math.isfinite(value) or not _better(key, value, st.best):
        return False
    st.best = value
    ckpt = run.run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    checkpoint.save(ckpt / "best.safetensors", _export_model(st), recipe=run.recipe_text,  # type: ignore[arg-type]
                    step=st.step, metrics=metrics, variant=run.variant)
    return True


def save_checkpoints(run: Run) -> None:
    """Rank 0: the state file and ``latest.safetensors``."""
    from upsr import checkpoint

    st = run.state
    ckpt = run.run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_state(ckpt / STATE_FILE, st, run.recipe_text)
    checkpoint.save(ckpt / "latest.safetensors", _export_model(st), recipe=run.recipe_text,  # type: ignore[arg-type]
                    step=st.step, metrics=st.metrics, variant=run.variant)


# ------------------------------------------------------------------------------ validation


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """LSD, LSD-HF and SI-SNR (``upsr eval``'s metrics) over the held-out items; writes the
    first ``examples`` as WAVs and a spectrogram PNG (lr resampled, estimate, target; drawn
    by :func:`upsr.eval.plots.spectrogram_panels`, as ``upsr eval --plot`` draws them)."""
    from upsr.audio.io import write
    from upsr.eval import metrics as M
    from upsr.eval.plots import spectrogram_panels

    if not run.valid:
        return {}
    model = _export_model(run.state)
    was_training = model.training
    model.eval()
    sr = run.recipe.data.sample_rate
    rows: dict[str, list[float]] = {"lsd": [], "lsd_hf": [], "si_snr": []}
    if run.diffusion:
        rows.update(lsd_nuwave=[], snr=[])
    out_dir = run.run_dir / "valid" / f"step_{run.state.step:07d}"
    for i, item in enumerate(run.valid):
        x = torch.from_numpy(item.lr).to(run.dist.device)
        if run.diffusion and run.recipe.valid.steps:
            est_t = model.sample(x, sampler="ddim", steps=run.recipe.valid.steps)  # type: ignore[operator]
        else:
            est_t = model.restore(x)  # type: ignore[operator]
        est = est_t.float().cpu().numpy()
        n = min(est.shape[-1], item.hr.shape[-1])
        est, ref = est[:, :n], item.hr[:, :n]
        rows["lsd"].append(M.lsd(ref, est))
        if 0 < item.cutoff_hz < sr / 2:
            rows["lsd_hf"].append(M.lsd_hf(ref, est, sr, item.cutoff_hz))
        rows["si_snr"].append(M.si_snr(ref, est))
        if run.diffusion:
            rows["lsd_nuwave"].append(M.lsd(ref, est, *M.LSD_VARIANTS["nuwave"]))
            rows["snr"].append(M.snr(ref, est))
        if i < run.recipe.valid.examples:
            from upsr.audio.resample import resample

            lr_sr = int(getattr(run.state.generator, "in_rate", None) or sr)
            lr_up = resample(item.lr, lr_sr, sr)[:, :n] if lr_sr != sr else item.lr[:, :n]
            out_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{i}_{item.name.replace('/', '_')}"
            for tag, sig, rate in (("lr", item.lr, lr_sr), ("est", est, sr), ("hr", ref, sr)):
                write(out_dir / f"{stem}_{tag}.wav", sig, rate, subtype="FLOAT")
            panels = [("input (resampled)", lr_up, sr),
                      (f"estimate, step {run.state.step}", est, sr), ("reference", ref, sr)]
            spectrogram_panels(out_dir / f"{stem}.png", panels, cutoff_hz=item.cutoff_hz)
    model.train(was_training)
    return {k: float(np.mean(v)) for k, v in rows.items() if v}


# -------------------------------------------------------------------------------- logging


class Logger:
    """CSV always (``log.csv``, rows past the resumed step dropped), TensorBoard when the
    ``tensorboard`` package is installed, a tqdm bar on a terminal; rank 0 only."""

    def __init__(self, run: Run, columns: list[str]) -> None:
        self.enabled = run.dist.main
        self.columns = ["step", "epoch", "lr_g", "lr_d", *columns, "steps_per_s",
                        "audio_s_per_s"]
        self.path = run.run_dir / "log.csv"
        self.tb: tp.Any = None
        self.bar: tp.Any = None
        if not self.enabled:
            return
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= run.state.step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.run_dir / "tensorboard"))
        except ImportError:
            self.tb = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.state.step, unit="step",
                            dynamic_ncols=True)

    def row(self, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        if self.tb is not None:
            for k, v in values.items():
                if k not in ("step", "epoch") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(values["step"]))

    def progress(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            shown = {k: f"{values[k]:.3g}" for k in ("loss_g", "loss_d", "steps_per_s")
                     if k in values}
            self.bar.set_postfix(shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------- loop


def _loader(run: Run, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
    rc = run.recipe
    sampler = D.EpochSampler(run.epoch_items, rc.data.batch_size, epoch, run.dist.rank,
                             run.dist.world, start_batch)
    return torch.utils.data.DataLoader(
        run.dataset, batch_size=rc.data.batch_size, sampler=sampler,
        num_workers=rc.data.num_workers, pin_memory=run.dist.device.type == "cuda",
        drop_last=True)


def check_replicas(run: Run) -> list[str]:
    """All ranks' generator digests; rank 0 records them in ``replicas.json``. Raises when
    the replicas differ (DDP keeps them equal; a difference means a broken set-up)."""
    digests = dist_.gather_digests(run.dist, run.state.generator)
    if run.dist.main:
        atomic_write_text(run.run_dir / "replicas.json",
                          json.dumps({"step": run.state.step, "digests": digests}, indent=1))
    if len(set(digests)) != 1:
        raise UsageError(f"step {run.state.step}: generator weights differ between ranks")
    return digests


def fit(run: Run) -> dict[str, float]:
    """Train to ``total_steps``: logs, validation and checkpoints at their cadences."""
    rc, st = run.recipe, run.state
    columns = ["loss_g", "loss_d", *[k for k in rc.losses], "grad_norm_g", "grad_norm_d",
               "lsd", "lsd_hf", "si_snr"]
    if run.diffusion:
        columns = ["loss_g", "grad_norm_g", "lsd", "lsd_hf", "lsd_nuwave", "snr", "si_snr"]
    if run.stage == "vae":
        columns.insert(2 + len(rc.losses), "adaptive_weight")
    columns = list(dict.fromkeys(columns))
    logger = Logger(run, columns)
    audio_per_step = (rc.data.batch_size * run.dist.world * run.dataset.frames
                      / rc.data.sample_rate)
    metrics: dict[str, float] = dict(st.metrics)
    t0, n0 = time.perf_counter(), st.step
    try:
        while st.step < run.total_steps:
            epoch, start = divmod(st.step, run.steps_per_epoch)
            for hr, lr in _loader(run, epoch, start):
                values = train_step(run, hr, lr)
                st.step += 1
                if rc.schedule.unit == "step" or st.step % run.steps_per_epoch == 0:
                    st.sched_g.step()
                    # the discriminator's schedule starts with its first step
                    # (``discriminator.start``), as torch expects optimiser before scheduler
                    if st.sched_d is not None and st.step > rc.discriminator.start:
                        st.sched_d.step()
                rate = (st.step - n0) / max(time.perf_counter() - t0, 1e-9)
                values.update(step=st.step, epoch=epoch, lr_g=st.opt_g.param_groups[0]["lr"],
                              steps_per_s=rate, audio_s_per_s=rate * audio_per_step)
                if st.opt_d is not None:
                    values["lr_d"] = st.opt_d.param_groups[0]["lr"]
                last = st.step >= run.total_steps
                do_valid = last or (rc.valid.every and st.step % rc.valid.every == 0)
                do_ckpt = last or (rc.checkpoint.every and st.step % rc.checkpoint.every == 0)
                if do_valid:
                    if run.dist.main:
                        metrics = validate(run)
                        st.metrics = metrics
                        values.update(metrics)
                        save_best(run, metrics)
                    dist_.barrier(run.dist)
                if st.step % rc.train.log_every == 0 or do_valid or last:
                    logger.row(values)
                logger.progress(values)
                if do_ckpt:
                    check_replicas(run)
                    if run.dist.main:
                        save_checkpoints(run)
                    dist_.barrier(run.dist)
                if last:
                    break
    finally:
        logger.close()
    return metrics


def train(recipe: R.Recipe, run_dir: Path | None = None, *, resume: bool = False,
          device: str = "auto") -> Run:
    """Prepare and run; returns the finished :class:`Run` (its ``state`` holds the models)."""
    run = prepare(recipe, run_dir, resume=resume, device=device)
    try:
        if run.dist.main:
            log.info("training %s: %d steps (%d per epoch) into %s", recipe.model.name,
                     run.total_steps, run.steps_per_epoch, run.run_dir)
        fit(run)
    finally:
        dist_.teardown(run.dist)
    return run
