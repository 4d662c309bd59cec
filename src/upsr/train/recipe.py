"""Training recipes: a TOML file validated into frozen dataclasses.

A recipe names the model and its config, the data, the degradation, the discriminator, the
losses with their weights, the optimisers and schedule, the segment, batch, steps, validation
and checkpoint cadence, and the seed (DESIGN.md, "Training"). Sections and keys::

    [model]          name, config = {...}       (config: overrides of the model's config class)
    [data]           train, valid, valid_files, sample_rate, channels, segment_s, batch_size,
                     num_workers, epoch_items, silence_power, normalize, peak, stems_prob,
                     stems_max, stems_gain_db
    [degrade]        lowpass, mp3, resample     (the ``upsr degrade`` grammar; folder data only)
    [discriminator]  kind, adversarial, reduction, feature_matching, options = {...}, start
    [losses]         <loss name> = weight       (see :data:`LOSS_NAMES`)
    [optim.generator], [optim.discriminator]   name, lr, betas, eps, weight_decay, grad_clip
    [schedule]       kind, unit, step_size, gamma, warmup
    [train]          steps, epochs, seed, ema, precision, log_every
    [valid]          every, items, segment_s, examples
    [checkpoint]     every, metric

Every key has a default (the section dataclasses below), so a recipe states what differs.
An unknown key, a wrong type or a value outside the allowed set is a
:class:`~upsr.errors.UsageError` naming ``section.key`` and what is allowed. ``--set
section.key=value`` overrides (the value is read as a TOML value, else as a string), and
:func:`dump` writes the resolved recipe back as TOML (saved in the run folder and inside
every checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from upsr.errors import UsageError

#: Reconstruction-loss names a ``[losses]`` table may weight (see :mod:`upsr.train.systems`).
LOSS_NAMES = ("stft_aero", "stft_wave_u_mamba", "mel", "freq_mae", "l1",
              "adversarial", "feature_matching", "diffusion",
              "reconstruction", "kl", "mel_log")  # the last three: AudioSR's VAE/vocoder stages


def _choices(*values: str) -> dict[str, tp.Any]:
    return {"choices": values}


def _min(value: float, *, strict: bool = False) -> dict[str, tp.Any]:
    return {"min": value, "strict": strict}


@dataclass(frozen=True)
class ModelSection:
    """``name``: a registry name; ``config``: overrides of its config dataclass; ``init``: a
    upsr checkpoint of the same model whose weights start the run (empty: fresh weights)."""

    name: str = ""
    config: dict[str, tp.Any] = field(default_factory=dict)
    init: str = ""


@dataclass(frozen=True)
class DataSection:
    """Where pairs come from and how segments are cut.

    ``train``: a folder of clean audio (degraded on the fly by ``[degrade]``), the output
    folder of ``upsr degrade`` (it holds ``manifest.jsonl``), or ``builtin:music`` (generated
    music-like clips, the tiny recipes' default, see :mod:`upsr.train.data`). ``valid``: a
    separate folder of the same kind, or empty to hold out the last ``valid_files`` files
    (sorted) of ``train``.
    ``sample_rate``/``channels``: of the clean (target) side; files are resampled and mixed to
    them. ``epoch_items``: random segments per epoch (0: one per training file).
    ``silence_power``: a crop with ``Σx²/sr`` below it is redrawn (AEROMamba: 1e-3).
    ``normalize``: ``peak`` scales the clean crop to ``peak`` before degradation
    (Wave-U-Mamba: 0.9), ``joint_peak`` divides both sides by their joint peak afterwards
    (Apollo). ``stems_prob``: probability of mixing 1..``stems_max`` stems of a multitrack
    folder with integer gains in ±``stems_gain_db`` (Apollo: 0.5, 8, 10).
    """

    train: str = ""
    valid: str = ""
    valid_files: int = field(default=1, metadata=_min(0))
    sample_rate: int = field(default=48000, metadata=_min(1))
    channels: int = field(default=1, metadata=_min(1))
    segment_s: float = field(default=1.0, metadata=_min(0, strict=True))
    batch_size: int = field(default=1, metadata=_min(1))
    num_workers: int = field(default=0, metadata=_min(0))
    epoch_items: int = field(default=0, metadata=_min(0))
    silence_power: float = field(default=0.0, metadata=_min(0))
    normalize: str = field(default="none", metadata=_choices("none", "peak", "joint_peak"))
    peak: float = field(default=0.9, metadata=_min(0, strict=True))
    stems_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    stems_max: int = field(default=8, metadata=_min(1))
    stems_gain_db: float = field(default=10.0, metadata=_min(0))


@dataclass(frozen=True)
class DegradeSection:
    """The on-the-fly degradation, in ``upsr degrade``'s grammar (empty: identity).
    ``steps``: the order of application, e.g. ``"resample,lowpass"`` (default: low-pass, MP3,
    resample)."""

    lowpass: str = ""
    mp3: str = ""
    resample: str = ""
    steps: str = ""


@dataclass(frozen=True)
class DiscriminatorSection:
    """``kind``: ``melgan`` (AEROMamba's MelGAN MSD), ``hifigan`` (MPD + MSD, Wave-U-Mamba),
    ``multi_frequency`` (Apollo), ``patch`` (PatchGAN on mels: AudioSR's VAE stage);
    ``options``: keyword arguments of its constructor(s); ``start``: steps trained without the
    discriminator before it and the adversarial terms join (LDM's ``disc_start``)."""

    kind: str = field(default="hifigan",
                      metadata=_choices("melgan", "hifigan", "multi_frequency", "patch"))
    adversarial: str = field(default="lsgan", metadata=_choices("lsgan", "hinge"))
    reduction: str = field(default="sum", metadata=_choices("sum", "mean"))
    feature_matching: str = field(default="l1", metadata=_choices("l1", "relative"))
    options: dict[str, tp.Any] = field(default_factory=dict)
    start: int = field(default=0, metadata=_min(0))


@dataclass(frozen=True)
class OptimizerSection:
    """One optimiser; ``grad_clip`` is the max global gradient norm (0: none)."""

    name: str = field(default="adamw", metadata=_choices("adam", "adamw"))
    lr: float = field(default=2e-4, metadata=_min(0, strict=True))
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = field(default=1e-8, metadata=_min(0, strict=True))
    weight_decay: float = field(default=0.0, metadata=_min(0))
    grad_clip: float = field(default=0.0, metadata=_min(0))


@dataclass(frozen=True)
class OptimSection:
    generator: OptimizerSection = field(default_factory=OptimizerSection)
    discriminator: OptimizerSection = field(default_factory=OptimizerSection)


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule of both optimisers, stepped every ``unit`` (epoch or step).

    ``none``: constant; ``step``: ×``gamma`` every ``step_size`` units (Apollo: 2 epochs,
    0.98); ``exponential``: ×``gamma`` every unit (Wave-U-Mamba: 0.999 per epoch). ``warmup``:
    units of linear warm-up from lr/warmup before the decay starts (Wave-U-Mamba: 5 epochs).
    """

    kind: str = field(default="none", metadata=_choices("none", "step", "exponential"))
    unit: str = field(default="epoch", metadata=_choices("epoch", "step"))
    step_size: int = field(default=1, metadata=_min(1))
    gamma: float = field(default=1.0, metadata=_min(0, strict=True))
    warmup: int = field(default=0, metadata=_min(0))


@dataclass(frozen=True)
class TrainSection:
    """``steps``: optimiser steps to train (0: ``epochs`` decides); ``ema``: decay of an
    exponential moving average of the generator (0: off; checkpoints then hold the EMA
    weights); ``precision``: ``auto`` = bf16 autocast on CUDA, float32 on CPU; ``bf16`` also
    on a CPU with native bf16 (avx512_bf16/AMX), float32 with a warning elsewhere."""

    steps: int = field(default=0, metadata=_min(0))
    epochs: int = field(default=0, metadata=_min(0))
    seed: int = 0
    ema: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16"))
    log_every: int = field(default=10, metadata=_min(1))


@dataclass(frozen=True)
class ValidSection:
    """Validation every ``every`` steps (0: only at the end) on at most ``items`` held-out
    segments of ``segment_s`` seconds; ``examples`` of them are written as audio and
    spectrogram PNGs. Diffusion models sample with ``sampler`` (their DDIM) in ``steps``
    steps (0: the model's configured sampler and steps)."""

    every: int = field(default=1000, metadata=_min(0))
    items: int = field(default=8, metadata=_min(1))
    segment_s: float = field(default=4.0, metadata=_min(0, strict=True))
    examples: int = field(default=2, metadata=_min(0))
    steps: int = field(default=8, metadata=_min(0))


@dataclass(frozen=True)
class CheckpointSection:
    """``latest`` every ``every`` steps (0: only at the end); ``best`` by ``metric``."""

    every: int = field(default=1000, metadata=_min(0))
    metric: str = field(default="lsd", metadata=_choices("lsd", "lsd_hf", "si_snr"))


@dataclass(frozen=True)
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    degrade: DegradeSection = field(default_factory=DegradeSection)
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    losses: dict[str, float] = field(default_factory=dict)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    valid: ValidSection = field(default_factory=ValidSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    name: str = ""  # the recipe's file stem, used to name run folders

    def degrade_spec(self) -> tp.Any:
        """The :class:`~upsr.data.spec.DegradeSpec` of ``[degrade]``."""
        from upsr.data.spec import DegradeSpec

        d = {k: v for k, v in dataclasses.asdict(self.degrade).items() if v}
        return DegradeSpec.from_dict(d)


# ------------------------------------------------------------------------------- validation


def _type_name(tp_: tp.Any) -> str:
    return getattr(tp_, "__name__", str(tp_))


def _coerce(value: tp.Any, f: dataclasses.Field, where: str) -> tp.Any:
    """Check ``value`` against field ``f`` (type, choices, bounds); return the clean value."""
    hint = f.type if not isinstance(f.type, str) else _HINTS[f.type]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"recipe {where}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"recipe {where}: must be finite, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"recipe {where}: must be a whole number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise UsageError(f"recipe {where}: must be a string, got {value!r}")
    elif hint == tuple[float, float]:
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in value)):
            raise UsageError(f"recipe {where}: must be two numbers [a, b], got {value!r}")
        value = (float(value[0]), float(value[1]))
        if not all(0.0 <= v < 1.0 for v in value):
            raise UsageError(f"recipe {where}: betas must lie in [0, 1), got {value!r}")
    elif hint == dict[str, tp.Any]:
        if not isinstance(value, dict):
            raise UsageError(f"recipe {where}: must be a table, got {value!r}")
        value = dict(value)
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise UsageError(f"recipe {where}: {value!r} is not one of "
                         f"{', '.join(meta['choices'])}")
    if "min" in meta:
        lo = meta["min"]
        if value < lo or (meta.get("strict") and value == lo):
            op = ">" if meta.get("strict") else ">="
            raise UsageError(f"recipe {where}: must be {op} {lo:g}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise UsageError(f"recipe {where}: must be <= {meta['max']:g}, got {value!r}")
    return value


def _section(cls: type, table: tp.Any, where: str) -> tp.Any:
    """Build section dataclass ``cls`` from a TOML table; errors name ``where.key``."""
    if not isinstance(table, dict):
        raise UsageError(f"recipe [{where}]: must be a table, got {table!r}")
    skip = ("name", "losses") if cls is Recipe else ()  # set by from_dict, not by the TOML
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        full = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UsageError(f"recipe {full}: unknown key (allowed: {', '.join(sorted(fields))})")
    values = {}
    for key, value in table.items():
        f = fields[key]
        full = f"{where}.{key}" if where else key
        sub = _SECTIONS.get(f.type if isinstance(f.type, str) else _type_name(f.type))
        if sub is not None:
            values[key] = _section(sub, value, full)
        else:
            values[key] = _coerce(value, f, full)
    return cls(**values)


def _losses(table: tp.Any) -> dict[str, float]:
    if not isinstance(table, dict):
        raise UsageError(f"recipe [losses]: must be a table of name = weight, got {table!r}")
    out = {}
    for name, weight in table.items():
        if name not in LOSS_NAMES:
            raise UsageError(f"recipe losses.{name}: unknown loss (allowed: "
                             f"{', '.join(LOSS_NAMES)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0 \
                or not math.isfinite(weight):
            raise UsageError(f"recipe losses.{name}: weight must be a number >= 0, "
                             f"got {weight!r}")
        out[name] = float(weight)
    return out


_SECTIONS: dict[str, type] = {
    "ModelSection": ModelSection, "DataSection": DataSection,
    "DegradeSection": DegradeSection, "DiscriminatorSection": DiscriminatorSection,
    "OptimSection": OptimSection, "OptimizerSection": OptimizerSection,
    "ScheduleSection": ScheduleSection, "TrainSection": TrainSection,
    "ValidSection": ValidSection, "CheckpointSection": CheckpointSection,
}
_HINTS: dict[str, tp.Any] = {
    "str": str, "int": int, "float": float, "tuple[float, float]": tuple[float, float],
    "dict[str, tp.Any]": dict[str, tp.Any], "dict[str, float]": dict[str, float],
}


def from_dict(d: tp.Mapping[str, tp.Any], name: str = "") -> Recipe:
    """Validate a parsed TOML document into a :class:`Recipe` (the model config too)."""
    d = dict(d)
    losses = _losses(d.pop("losses", {}))
    recipe: Recipe = _section(Recipe, d, "")
    recipe = dataclasses.replace(recipe, losses=losses, name=name)
    _check(recipe)
    return recipe


def _check(r: Recipe) -> None:
    """Cross-field checks: the model and its config, data set, degradation, a stopping rule."""
    from upsr import models
    from upsr.models.base import make_config

    if not r.model.name:
        raise UsageError(f"recipe model.name: missing (one of "
                         f"{', '.join(n for n in models.names() if n != 'sbr')})")
    if models.canonical(r.model.name) == "sbr":
        raise UsageError("recipe model.name: 'sbr' is DSP and has nothing to train")
    spec = models.spec(r.model.name)
    make_config(spec.cls.config_cls, dict(r.model.config), what="recipe model.config")
    stage = r.model.config.get("stage", "diffusion") if spec.name == "audiosr" else "diffusion"
    if not r.data.train:
        raise UsageError("recipe data.train: missing (a folder of clean audio or a "
                         "'upsr degrade' output folder)")
    r.degrade_spec()  # grammar errors name the degrade key
    if r.train.steps == 0 and r.train.epochs == 0:
        raise UsageError("recipe train.steps / train.epochs: give at least one (> 0)")
    if stage != "diffusion":
        from upsr.train.audiosr_stages import check_recipe

        check_recipe(r, stage)
        return
    if r.discriminator.kind == "patch" or r.losses.keys() & {"reconstruction", "kl", "mel_log"}:
        raise UsageError("recipe: discriminator.kind 'patch' and losses reconstruction, kl, "
                         "mel_log belong to AudioSR's vae/vocoder stages (model.config.stage)")
    if not r.losses:
        raise UsageError(f"recipe [losses]: give at least one weight (names: "
                         f"{', '.join(LOSS_NAMES)})")
    if all(w == 0 for k, w in r.losses.items() if k not in ("adversarial",
                                                             "feature_matching")):
        raise UsageError("recipe [losses]: needs a reconstruction loss with a weight > 0")
    used = {k for k, w in r.losses.items() if w > 0}
    if getattr(spec.cls, "diffusion", False) and used != {"diffusion"}:
        raise UsageError(f"recipe [losses]: {spec.name} is a diffusion model; it trains with "
                         f"'diffusion = 1.0' alone (got {', '.join(sorted(used))})")
    if not getattr(spec.cls, "diffusion", False) and "diffusion" in used:
        raise UsageError(f"recipe losses.diffusion: {spec.name} is not a diffusion model")


# ------------------------------------------------------------------------------ I/O, --set


def parse_value(text: str) -> tp.Any:
    """A ``--set`` value: TOML syntax (``3``, ``1e-4``, ``true``, ``[0.5, 0.99]``,
    ``"x"``), anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, tp.Any], overrides: tp.Sequence[str]) -> dict[str, tp.Any]:
    """Apply ``section.key=value`` strings to a parsed recipe (a new nested dict)."""
    import copy

    out = copy.deepcopy(d)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise UsageError(f"--set {item!r}: must be section.key=value "
                             f"(e.g. train.steps=100)")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise UsageError(f"--set {item!r}: {p!r} is not a table")
            node = nxt
        node[parts[-1]] = parse_value(value.strip())
    return out


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such recipe file")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read the recipe ({exc})") from None


def loads(text: str, overrides: tp.Sequence[str] = (), name: str = "",
          base_dir: Path | None = None) -> Recipe:
    """Parse TOML text, apply ``--set`` overrides, validate. Relative data paths are taken
    relative to ``base_dir`` when given (the recipe file's folder)."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {name or ''}: not valid TOML ({exc})") from None
    d = apply_overrides(d, overrides)
    recipe = from_dict(d, name=name)
    if base_dir is not None:
        data = recipe.data
        data = dataclasses.replace(data, train=_resolve(data.train, base_dir),
                                   valid=_resolve(data.valid, base_dir))
        model = dataclasses.replace(recipe.model, init=_resolve(recipe.model.init, base_dir))
        recipe = dataclasses.replace(recipe, data=data, model=model)
    return recipe


def _resolve(p: str, base: Path) -> str:
    if p.startswith("builtin:"):
        return p
    if not p or Path(p).expanduser().is_absolute():
        return str(Path(p).expanduser()) if p else p
    return str((base / p).resolve())


def load(path: str | Path, overrides: tp.Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe file; data paths relative to the current directory."""
    p = Path(path)
    return loads(read_text(p), overrides, name=p.stem, base_dir=Path.cwd())


# ---------------------------------------------------------------------------------- resume

#: Keys a ``--resume`` may change: how long to train and how often to log, validate, write
#: checkpoints, and the loader's worker count; none of them changes a training step.
RESUME_MAY_CHANGE = ("train.steps", "train.epochs", "train.log_every", "valid.every",
                     "valid.examples", "checkpoint.every", "data.num_workers")


def _flat(d: tp.Mapping[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    out: dict[str, tp.Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def differences(a: Recipe, b: Recipe) -> list[str]:
    """The dotted keys whose values differ between two recipes (sorted)."""
    fa, fb = _flat(to_dict(a)), _flat(to_dict(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, _MISSING) != fb.get(k, _MISSING))


_MISSING = object()


def check_resume(saved_text: str, recipe: Recipe, where: str) -> None:
    """UsageError naming the keys when ``recipe`` differs from the run's saved recipe in
    anything but :data:`RESUME_MAY_CHANGE`."""
    saved = loads(saved_text, name=recipe.name)
    bad = [k for k in differences(saved, recipe) if k not in RESUME_MAY_CHANGE]
    if bad:
        shown = ", ".join(bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
        raise UsageError(f"--resume: the recipe differs from the run's own ({where}) in "
                         f"{shown}; resume with the same recipe and --set values (only "
                         f"{', '.join(RESUME_MAY_CHANGE)} may change)")


# --------------------------------------------------------------------------------- dumping


def to_dict(r: Recipe) -> dict[str, tp.Any]:
    d = dataclasses.asdict(r)
    d.pop("name")
    return d


def _toml_value(v: tp.Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else
                                                 ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def _dump_table(d: dict[str, tp.Any], prefix: str, lines: list[str]) -> None:
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in d.items() if k not in tables}
    if prefix and (scalars or not tables):
        lines.append(f"\n[{prefix}]")
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in tables.items():
        _dump_table(v, f"{prefix}.{_key(k)}" if prefix else _key(k), lines)


def dump(r: Recipe) -> str:
    """The resolved recipe as TOML text; ``loads(dump(r)) == r`` (name aside)."""
    lines = [f"# resolved upsr recipe{f' {r.name!r}' if r.name else ''}"]
    _dump_table(to_dict(r), "", lines)
    return "\n".join(lines).strip() + "\n"
