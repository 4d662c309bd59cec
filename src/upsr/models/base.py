"""The model contract every restorer honours (see DESIGN.md, "The model contract").

A restorer is an ``nn.Module`` built from a frozen config dataclass whose defaults are the
published configuration. The engine needs only these attributes and ``restore``:

- ``in_rate``: the rate its network consumes (None: same as ``out_rate`` after resampling);
- ``out_rate``: the rate it produces;
- ``channels``: ``"mono"`` (the engine feeds each channel separately: ``x [B, T_in]``) or
  ``"stereo"`` (the engine feeds channel pairs: ``x [B, 2, T_in]``; a mono file is
  duplicated into both and the output's two channels averaged back; more than two channels
  go in pairs, an odd last channel duplicated);
- ``context_s``: seconds of real audio the engine must give each side of a chunk so that the
  kept centre equals whole-signal inference (the measured receptive field);
- ``align``: chunks must start at a multiple of this many input samples (the model's STFT
  hop or total downsampling stride), so that frames fall where they fall in the whole signal;
- ``restore(x: [B, T_in], cutoff_hz=None, sample_rate=None) -> [B, T_out]``.

A model whose class sets ``uses_cutoff = True`` is called as
``restore(x, cutoff_hz=[B] float64 Hz, sample_rate=int)``: each item's known band edge (the
engine knows it per file) and the rate ``x`` is at (``sbr`` converts Hz to bins with it);
other models are called with ``x`` only and may ignore both arguments.
A model whose class sets ``uses_offsets = True`` also takes ``restore(x, offsets=[B])``: each
row's first-sample index in the signal at ``in_rate`` (diffusion models draw noise by position
with it, so chunked and whole-signal sampling agree).
:class:`Model` is this contract as a ``typing.Protocol``; the engine is typed against it.
A model whose ``out_rate`` is None keeps the input's rate (raised to ``min_out_rate``).

Training-only parts (discriminators, losses) live outside these modules.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import torch
from torch import nn

from upsr.errors import UsageError


@tp.runtime_checkable
class Model(tp.Protocol):
    """What the inference engine needs of a model (structural: any object with these works)."""

    @property
    def name(self) -> str: ...

    @property
    def in_rate(self) -> int | None: ...

    @property
    def out_rate(self) -> int | None: ...

    @property
    def min_out_rate(self) -> int: ...

    @property
    def channels(self) -> str: ...

    @property
    def uses_cutoff(self) -> bool: ...

    @property
    def context_s(self) -> float: ...

    @property
    def align(self) -> int: ...

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:
        """``x [B, T_in]`` (``[B, 2, T_in]`` for ``channels == "stereo"``) → same with
        ``T_out``."""
        ...


class Restorer(nn.Module):
    """Base class: subclasses set the class attributes and implement ``restore``."""

    name: tp.ClassVar[str] = ""
    config_cls: tp.ClassVar[type] = object
    in_rate: int | None = None
    out_rate: int | None = 48000
    min_out_rate: int = 44100
    uses_cutoff: tp.ClassVar[bool] = False
    uses_offsets: tp.ClassVar[bool] = False
    needs_weights: tp.ClassVar[bool] = True
    channels: str = "mono"

    @property
    def context_s(self) -> float:
        """Seconds of real context each side of a chunk (override: property or class attr)."""
        return 0.0

    @property
    def align(self) -> int:
        """Chunk starts must be multiples of this many input samples."""
        return 1

    def __init__(self, config: tp.Any) -> None:
        super().__init__()
        self.config = config

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:  # pragma: no cover
        """Restore a batch of signals ``x: [B, T_in]`` into ``[B, T_out]`` (the arguments
        after ``x``: see the module docstring)."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, tp.Any]:
        return dataclasses.asdict(self.config)


C = tp.TypeVar("C")


def make_config(cls: type[C], values: dict[str, tp.Any], *, what: str) -> C:
    """Build the frozen config ``cls`` from ``values``; an unknown key or bad type is an error
    that names the key and lists the allowed ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(
            f"{what}: unknown config key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
    clean: dict[str, tp.Any] = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if default is not dataclasses.MISSING and default is not None and value is not None:
            ok = (isinstance(value, type(default))
                  or (isinstance(default, float) and isinstance(value, int)
                      and not isinstance(value, bool)))
            if not ok:
                raise UsageError(f"{what}: config key {key!r} must be "
                                 f"{type(default).__name__}, got {value!r}")
            if isinstance(default, float):
                value = float(value)
        clean[key] = value
    try:
        return cls(**clean)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what}: {exc}") from None
