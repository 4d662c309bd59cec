"""upsr checkpoints: one ``.safetensors`` file per model, weights plus self-describing metadata.

Metadata (all strings): ``upsr`` (format version), ``model`` (registry name), ``config`` (JSON),
``recipe`` (the TOML text that trained it, or empty), ``step``, ``metrics`` (JSON), ``variant``
(JSON: the degradation the weights were trained for, if specific), ``source`` (JSON, for
converted official weights: where the original came from — ``source``, ``repo``, ``file``,
``revision``, ``sha256`` of the original file, ``licence``, ``date``; ``{}`` for weights upsr
trained). Loading never unpickles; a missing or unexpected key is an error naming the key.
"""

from __future__ import annotations

import json
import typing as tp
from pathlib import Path

import torch

from upsr.errors import CheckpointError
from upsr.fsutil import atomic_path

if tp.TYPE_CHECKING:
    from upsr.models.base import Restorer

FORMAT_VERSION = "1"


def save(path: str | Path, model: Restorer, *, recipe: str = "", step: int | None = None,
         metrics: dict[str, float] | None = None,
         state: dict[str, torch.Tensor] | None = None,
         variant: dict[str, float] | None = None,
         source: dict[str, str] | None = None) -> Path:
    """Write ``model`` (or an explicit ``state``) with its config, atomically.

    ``variant`` describes what degradation the weights were trained for (e.g.
    ``{"bitrate_kbps": 64}`` or ``{"cutoff_hz": 8000}``); ``enhance --bitrate-auto`` picks the
    installed variant of a family nearest to each file's detected bitrate or cutoff.
    ``source`` records where converted official weights came from (see the module docstring).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in (state if state is not None else model.state_dict()).items()}
    meta = {
        "upsr": FORMAT_VERSION,
        "model": model.name,
        "config": json.dumps(model.config_dict(), sort_keys=True),
        "recipe": recipe,
        "step": "" if step is None else str(int(step)),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "variant": json.dumps(variant or {}, sort_keys=True),
        "source": json.dumps(source or {}, sort_keys=True),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an upsr checkpoint; a clear error for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if "upsr" not in meta or "model" not in meta:
        raise CheckpointError(f"{path}: not an upsr checkpoint (no upsr metadata); official "
                              f"weights must be converted with 'upsr models import'")
    if meta["upsr"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['upsr']!r} is not supported "
                              f"by this upsr (expects {FORMAT_VERSION})")
    return meta


def json_field(meta: tp.Mapping[str, str], key: str) -> dict[str, tp.Any]:
    """A JSON metadata field as a dict; ``{}`` when absent, empty or not a JSON object (older
    checkpoints lack ``source``)."""
    try:
        value = json.loads(meta.get(key) or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def check_keys(state: tp.Mapping[str, torch.Tensor], expected: tp.Mapping[str, torch.Tensor],
               where: str, name: tp.Callable[[str], str] = str) -> None:
    """Raise a CheckpointError naming the first missing, misshapen or unexpected key.

    ``name`` maps our key to the one the user's file uses (for importers whose official
    layout differs), so the message names what is actually in their file.
    """
    for k, ref in expected.items():
        if k not in state:
            raise CheckpointError(f"{where}: missing key {name(k)!r}")
        if tuple(state[k].shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: key {name(k)!r} has shape {tuple(state[k].shape)}, "
                                  f"expected {tuple(ref.shape)}")
    for k in state:
        if k not in expected:
            raise CheckpointError(f"{where}: unexpected key {name(k)!r}")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with errors that name the first bad key."""
    check_keys(state, model.state_dict(), where)
    model.load_state_dict(state, strict=True)


def load(path: str | Path, expect: str | None = None, **overrides: tp.Any) -> Restorer:
    """Build the model a checkpoint describes and load its weights (eval mode).

    ``expect`` names the system the caller needs; another system is an error. ``overrides``
    change inference-only config fields (e.g. diffusion steps).
    """
    from safetensors.torch import load_file

    from upsr import models
    from upsr.models.base import make_config

    path = Path(path)
    meta = read_metadata(path)
    name = models.canonical(meta["model"])
    if expect is not None and models.canonical(expect) != name:
        raise CheckpointError(f"{path}: holds a {name!r} model, not {models.canonical(expect)!r}")
    s = models.spec(name)
    try:
        values = json.loads(meta.get("config") or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: config metadata is not valid JSON") from None
    values.update(overrides)
    cls: tp.Any = s.cls
    model = cls(make_config(cls.config_cls, values, what=f"{path}"))
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt tensor data ({exc})") from None
    load_state_strict(model, state, str(path))
    return model.eval()
