"""Convert official checkpoints into upsr checkpoints, without executing anything they reference.

Official containers are pickles (Apollo's ``{model_name, state_dict, model_args}``, Wave-U-Mamba's
``{'generator': ...}``, AEROMamba's dict with class references and an OmegaConf config). A pickle
can name any importable callable; loading one with plain ``torch.load(weights_only=False)``
imports and runs it. ``safe_load`` instead lets through only what tensors need (torch's rebuild
functions, storages, dtypes, ``OrderedDict``) and turns every other global into an inert
:class:`Opaque` placeholder that records its name, constructor arguments and state and does
nothing else. Each model module's ``convert_official(obj)`` then maps keys explicitly; where a
file carries no configuration (community checkpoints, Lightning ``.ckpt`` files) it reads the
configuration off the tensor shapes and returns it as :class:`Overrides` that say which fields
were inferred, so ``upsr models import`` can print them.
"""

from __future__ import annotations

import hashlib
import pickle
import types
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch

from upsr.errors import CheckpointError


class Opaque:
    """Inert stand-in for a class or function a pickle references.

    ``name`` is the dotted global, ``args`` what the pickle passed to it, ``state`` what it set
    with BUILD (often a ``__dict__``). Nothing of the original code is imported or run.
    """

    qualname: tp.ClassVar[str] = "?"

    def __init__(self, *args: tp.Any, **kwargs: tp.Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: tp.Any = None

    def __new__(cls, *args: tp.Any, **kwargs: tp.Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state: tp.Any) -> None:
        self.state = state

    # Some pickles append/set items on reconstructed containers.
    def append(self, item: tp.Any) -> None:
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items: tp.Iterable[tp.Any]) -> None:
        self.__dict__.setdefault("items", []).extend(items)

    def __setitem__(self, key: tp.Any, value: tp.Any) -> None:
        self.__dict__.setdefault("mapping", {})[key] = value

    @property
    def name(self) -> str:
        return type(self).qualname

    def __repr__(self) -> str:
        return f"<Opaque {self.name}>"


_BUILTINS_OK = {"set", "frozenset", "slice", "complex", "bytearray", "list", "dict", "tuple",
                "int", "float", "str", "bool"}
_TORCH_UTILS_OK = {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state",
                   "_rebuild_tensor"}


def _opaque(module: str, name: str) -> type:
    return types.new_class(name, (Opaque,), {}, lambda ns: ns.update(qualname=f"{module}.{name}"))


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> tp.Any:
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "builtins" and name in _BUILTINS_OK:
            import builtins

            return getattr(builtins, name)
        if module == "torch._utils" and name in _TORCH_UTILS_OK:
            return getattr(torch._utils, name)
        if module == "torch" and (name.endswith("Storage") or name == "Size"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.storage" and name == "UntypedStorage":
            return torch.UntypedStorage
        return _opaque(module, name)


class _SafePickleModule(types.ModuleType):
    """What ``torch.load(pickle_module=...)`` needs: our Unpickler, the stdlib's load."""

    Unpickler = _SafeUnpickler

    @staticmethod
    def load(file: tp.IO[bytes], **kwargs: tp.Any) -> tp.Any:
        return _SafeUnpickler(file, **kwargs).load()

    # torch reads these names off the module it is given
    __name__ = "upsr_safe_pickle"


def safe_load(path: str | Path) -> tp.Any:
    """Load a torch checkpoint with every non-tensor global replaced by an :class:`Opaque`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False,
                          pickle_module=_SafePickleModule("upsr_safe_pickle"))
    except Exception as exc:  # zip errors, pickle errors, truncated files...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None


def strip_prefix(state: dict[str, tp.Any], prefix: str) -> dict[str, tp.Any]:
    """Remove ``prefix`` from every key that has it (e.g. DDP's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


class Overrides(dict):  # type: ignore[type-arg]
    """Config overrides returned by an importer, plus what it read off tensor shapes.

    ``inferred``: the fields whose values come from tensor shapes rather than from the file's
    own configuration; ``notes``: assumptions the shapes cannot decide (one line each).
    A plain ``dict`` for every other purpose.
    """

    def __init__(self, values: tp.Mapping[str, tp.Any] = (), *,  # type: ignore[assignment]
                 inferred: tp.Iterable[str] = (), notes: tp.Iterable[str] = ()) -> None:
        super().__init__(values)
        self.inferred: tuple[str, ...] = tuple(inferred)
        self.notes: tuple[str, ...] = tuple(notes)


@dataclass(frozen=True)
class Imported:
    """What :func:`import_checkpoint` wrote: the file, the model's full configuration, the
    fields read off tensor shapes (empty when the file carried its configuration), notes."""

    path: Path
    system: str
    config: dict[str, tp.Any]
    inferred: tuple[str, ...]
    notes: tuple[str, ...]
    sha256: str

    def describe(self) -> str:
        """One line: ``apollo: feature_dim=64 layer=2 (inferred from tensor shapes); ...``."""
        shown = {k: self.config[k] for k in self.inferred if k in self.config}
        if not shown:
            return f"{self.system}: configuration read from the file"
        text = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.system}: {text} (inferred from tensor shapes){notes}"


def _fmt(value: tp.Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


VARIANT_KEYS = ("bitrate_kbps", "cutoff_hz")  # what ``enhance --bitrate-auto`` compares


def check_variant(variant: tp.Mapping[str, float]) -> dict[str, float]:
    """Validate checkpoint variant metadata: keys in :data:`VARIANT_KEYS`, positive numbers."""
    out: dict[str, float] = {}
    for key, value in variant.items():
        if key not in VARIANT_KEYS:
            raise CheckpointError(f"unknown variant key {key!r} (known: "
                                  f"{', '.join(VARIANT_KEYS)})")
        if not float(value) > 0:
            raise CheckpointError(f"variant {key}={value!r}: must be a positive number")
        out[key] = float(value)
    return out


def import_checkpoint(kind: str, src: str | Path, out: str | Path, *,
                      variant: tp.Mapping[str, float] | None = None,
                      source: tp.Mapping[str, str] | None = None) -> Imported:
    """Convert an official checkpoint of system ``kind`` into the upsr checkpoint ``out``.

    ``variant`` (e.g. ``{"bitrate_kbps": 128}``) is what ``enhance --bitrate-auto`` matches;
    ``source`` is recorded as the checkpoint's ``source`` metadata (``sha256`` of ``src`` and
    ``file`` are filled in when missing). ``out`` is written atomically: on any error nothing
    is left under its name.
    """
    from upsr import checkpoint, models
    from upsr.models.base import make_config

    s = models.spec(kind)
    if s.importer is None:
        raise CheckpointError(f"{s.name}: has no official checkpoint format to import")
    var = check_variant(variant or {})
    obj = safe_load(src)
    overrides, state = s.importer(obj)
    cls: tp.Any = s.cls
    model = cls(make_config(cls.config_cls, overrides, what=f"{src}"))
    checkpoint.load_state_strict(model, state, str(src))
    digest = sha256_file(src)
    meta = {"file": Path(src).name, "sha256": digest} | dict(source or {})
    path = checkpoint.save(out, model, recipe="", step=None, metrics={}, variant=var,
                           source=meta)
    return Imported(path=Path(path), system=s.name, config=model.config_dict(),
                    inferred=tuple(getattr(overrides, "inferred", ())),
                    notes=tuple(getattr(overrides, "notes", ())), sha256=digest)


def import_official(kind: str, src: str | Path, out: str | Path) -> Path:
    """Convert an official checkpoint of system ``kind`` into the upsr checkpoint ``out``."""
    return import_checkpoint(kind, src, out).path
