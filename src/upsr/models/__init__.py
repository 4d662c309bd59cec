"""The model registry: one name per system, ``build`` for fresh models, ``load_model`` for
checkpoints.

Names are case-insensitive and ``_``/``-`` are interchangeable (``wave_u_mamba`` ==
``wave-u-mamba``). Model modules are imported only when their name is used.
"""

from __future__ import annotations

import importlib
import os
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from upsr.errors import CheckpointError, UsageError

if tp.TYPE_CHECKING:
    from upsr.models.base import Restorer

# registry name -> module that defines and registers it
_MODULES: dict[str, str] = {
    "sbr": "upsr.models.sbr",
    "apollo": "upsr.models.apollo",
    "wave-u-mamba": "upsr.models.wave_u_mamba",
    "aeromamba": "upsr.models.aeromamba",
    "audiosr": "upsr.models.audiosr.model",
    "mambawave": "upsr.models.mambawave",
}


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one system."""

    name: str
    cls: tp.Any  # a Restorer subclass
    system: str  # human name, e.g. "Apollo (Li et al., 2024)"
    importer: tp.Callable[[tp.Any], tuple[dict[str, tp.Any], dict[str, tp.Any]]] | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register(name: str, system: str,
             importer: tp.Callable | None = None) -> tp.Callable[[type], type]:
    """Class decorator: ``@register("apollo", "Apollo (ICASSP 2025)")``."""

    def deco(cls: type) -> type:
        key = canonical(name)
        cls.name = key  # type: ignore[attr-defined]
        _REGISTRY[key] = ModelSpec(key, cls, system, importer)
        return cls

    return deco


def names() -> list[str]:
    """Every registered system name (whether or not its module has been imported yet)."""
    return sorted(_MODULES)


def spec(name: str) -> ModelSpec:
    key = canonical(name)
    if key not in _MODULES:
        raise UsageError(f"unknown model {name!r} (known: {', '.join(names())})")
    if key not in _REGISTRY:
        importlib.import_module(_MODULES[key])
    return _REGISTRY[key]


def build(name: str, **overrides: tp.Any) -> Restorer:
    """A fresh model; no overrides = the published configuration."""
    from upsr.models.base import make_config

    s = spec(name)
    config = make_config(s.cls.config_cls, overrides, what=s.name)
    return s.cls(config)


def model_dirs() -> list[Path]:
    """Where names are looked up, in order: $UPSR_MODEL_DIR, the user cache, shipped weights."""
    dirs = []
    if os.environ.get("UPSR_MODEL_DIR"):
        dirs.append(Path(os.environ["UPSR_MODEL_DIR"]))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "upsr" / "models"
    dirs.append(cache)
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    return dirs


def looks_like_path(name: str) -> bool:
    """A model argument names a file when it ends in ``.safetensors`` or contains a path
    separator; anything else is a registry or installed name (a folder called ``sbr`` in the
    working directory does not shadow the system)."""
    return name.endswith(".safetensors") or "/" in name or os.sep in name or (
        os.altsep is not None and os.altsep in name)


def find_checkpoint(name: str) -> Path | None:
    """A checkpoint file for ``name``: a path (see :func:`looks_like_path`), or
    ``<name>.safetensors`` in the model dirs; ``None`` for a name with no installed file."""
    if looks_like_path(name):
        p = Path(name).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{name}: no such checkpoint file")
        return p
    for d in model_dirs():
        for candidate in (d / f"{name}.safetensors", d / f"{canonical(name)}.safetensors"):
            if candidate.is_file():
                return candidate
    return None


def load_model(name_or_path: str, *, pull: bool = True, **overrides: tp.Any) -> Restorer:
    """A ready-to-run model in eval mode: a checkpoint path, an installed checkpoint name, or a
    registry name with no weights needed (``sbr``).

    A system whose published weights are not installed but can be downloaded (``apollo``) is
    pulled first, with one notice on stderr (:func:`upsr.models.hub.ensure`); ``pull=False``,
    ``UPSR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid that and make it an error that says what
    to run on a machine with a network and where to copy the file.
    """
    from upsr import checkpoint
    from upsr.models import hub

    path = find_checkpoint(name_or_path)
    if path is None:
        source = hub.source(name_or_path)
        if source is not None and source.system in _MODULES:
            path = find_checkpoint(source.name) or hub.ensure(source, allow=pull)
    if path is not None:
        model = checkpoint.load(path, **overrides)
    else:
        key = canonical(name_or_path)
        if key not in _MODULES:
            raise UsageError(f"unknown model {name_or_path!r} (known: {', '.join(names())}, "
                             f"or a .safetensors file)")
        model = build(key, **overrides)
        if getattr(model, "needs_weights", True) and sum(1 for _ in model.parameters()):
            raise CheckpointError(
                f"no weights installed for {key!r}: pass a checkpoint file, put "
                f"{key}.safetensors in $UPSR_MODEL_DIR, or import official weights with "
                f"'upsr models import {key} OFFICIAL_FILE OUT.safetensors'")
    return model.eval()
