"""upsr: restore band-limited and MP3-damaged audio.

Library entry points mirror the commands (heavy modules are imported on first use, so that
``import upsr`` and ``upsr --help`` stay fast):

- ``upsr.load_model(name_or_path)``: a trained or imported checkpoint, or a registry name.
- ``upsr.models.build(name, **overrides)``: a fresh model in its published configuration.
- ``upsr.enhance_array(x, sr, model)``: restore an array ``[channels, frames]``.
- ``upsr.degrade_array(x, sr, spec, seed)``: make a degraded training input.
- ``upsr.metrics.lsd(ref, est)`` and friends.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("upsr.models", "load_model"),
    "enhance_array": ("upsr.infer.engine", "enhance_array"),
    "degrade_array": ("upsr.data.degrade", "degrade_array"),
    "metrics": ("upsr.eval.metrics", None),
    "models": ("upsr.models", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'upsr' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
