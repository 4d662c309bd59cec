"""Which arithmetic a model runs in: float32, or bfloat16 autocast where it pays and is safe.

``--precision auto|fp32|bf16`` (``upsr enhance``) and ``train.precision`` (recipes):

- ``fp32``: float32 everywhere;
- ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` around the model (matmuls, convolutions
  and linear layers run in bf16; the Mamba selective scan casts its inputs back and keeps its
  state in float32, :mod:`upsr.nn.scan`). On a CPU without native bf16 instructions this only
  costs time, so it falls back to float32 with a warning;
- ``auto``: bf16 where the device has native bf16 (CUDA; a CPU with ``avx512_bf16`` or AMX) *and*
  the model's measured bf16 error is within bounds (``BF16_ERRORS``: bf16 moves the model's LSD
  against the true full-band audio by less than ``LSD_BOUND``, and its output differs from
  float32's by less than ``REL_L2_BOUND`` relative L2); float32 elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import typing as tp
from dataclasses import dataclass

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
LSD_BOUND = 0.01   # how far bf16 may move a model's LSD against the true audio (auto)
REL_L2_BOUND = 0.02   # and the most its output may differ from float32's, relative L2
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: ``auto`` keeps models with fewer parameters in float32. Measured (``upsr enhance``, 1 min
#: stereo, 1 thread, this CPU with avx512_bf16, two runs each on a loaded machine): the
#: 11 k-parameter AEROMamba of ``benchmarks/enhance.py`` took 9.1-10.5 CPU s in bf16 against
#: 5.9-7.3 in float32, peak RSS 611-642 MiB against 567-568; the published configurations
#: that bf16 speeds up have 4.2 M (Wave-U-Mamba) to 21 M (AEROMamba) parameters.
BF16_MIN_PARAMS = 1_000_000


@dataclass(frozen=True)
class Bf16Error:
    """bf16-vs-float32 difference of one model's output (``benchmarks/bf16_error.py``)."""

    lsd: float      # |LSD(ref, y_bf16) - LSD(ref, y_fp32)|, log10 power (upsr eval's LSD)
    rel_l2: float   # ||y_bf16 - y_fp32|| / ||y_fp32||


# Measured with benchmarks/bf16_error.py on real music (hyperrogue's hr3-caves.ogg, a Debian
# package: a 10 s excerpt, mono, resampled to each model's input rate and low-passed as its
# recipe degrades), published configurations with seeded random weights, torch 2.13 CPU
# (avx512_bf16). Trained weights may differ; rerun the script on a checkpoint to check it.
BF16_ERRORS: dict[str, Bf16Error] = {
    # AEROMamba's own bf16 path (decoder convs and the first two encoder layers' products in
    # bf16; Mamba, DConv, GroupNorm'd encoder layers, statistics, last layer, STFTs in float32;
    # upsr.models.aeromamba): paper mode dLSD 0.0037 / rel 2.52e-3, released forward (Mamba
    # skipped) 0.0037 / 2.49e-3. Plain per-op autocast measured 0.0062-0.0064 / 3.4e-3.
    "aeromamba": Bf16Error(lsd=0.0037, rel_l2=2.5e-3),
    # 4 s excerpt (a 10 s one takes too long on the shared machine); Apollo's own bf16 path
    # (BSNets in bf16, embedding/head/STFT in float32; upsr.models.apollo). Plain per-op
    # autocast measured 0.0002 / 1.09e-2 on the same excerpt.
    "apollo": Bf16Error(lsd=0.0001, rel_l2=1.28e-2),
    # bf16 in the down-path, bottleneck and ResBlock convs and the Mamba blocks' in_proj/
    # out_proj; transposed convs, output conv, Mamba scan/conv/x_proj/LayerNorms float32
    # (10 s, 2 threads). All layers in bf16: 0.0206 / 4.35e-3; only ups + conv_post in
    # float32: 0.0051 / 2.28e-3; Mamba projections float32 too: 0.0028 / 1.93e-3
    "wave-u-mamba": Bf16Error(lsd=0.0030, rel_l2=1.95e-3),
}


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX): from /proc/cpuinfo, else
    from oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``)."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in CPU_BF16_FLAGS)
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an op missing in this build means "no"
        return False


def device_has_native_bf16(device: str) -> bool:
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        return cpu_has_native_bf16()
    return False


def uses_torch(model: tp.Any) -> bool:
    """Models without torch parameters (``sbr``) have nothing to autocast."""
    params = getattr(model, "parameters", None)
    return callable(params) and any(True for _ in params())


def parameter_count(model: tp.Any) -> int:
    """Number of parameters of a torch model (0 for models without any)."""
    params = getattr(model, "parameters", None)
    return sum(p.numel() for p in params()) if callable(params) else 0


def resolve(precision: str, model: tp.Any, device: str) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means for ``model`` on ``device``."""
    if precision not in PRECISIONS:
        from upsr.errors import UsageError

        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or not uses_torch(model):
        return "fp32"
    native = device_has_native_bf16(device)
    if precision == "bf16":
        if not native:
            log.warning("bf16: %s has no native bf16 arithmetic; running in float32", device)
            return "fp32"
        return "bf16"
    err = BF16_ERRORS.get(getattr(model, "name", ""))
    ok = err is not None and err.lsd < LSD_BOUND and err.rel_l2 < REL_L2_BOUND
    big = parameter_count(model) >= BF16_MIN_PARAMS
    return "bf16" if native and ok and big else "fp32"


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[tp.Any]:
    """The autocast context for a resolved precision (a no-op for ``fp32``)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


__all__ = ["BF16_ERRORS", "BF16_MIN_PARAMS", "Bf16Error", "LSD_BOUND", "PRECISIONS",
           "REL_L2_BOUND", "autocast",
           "cpu_has_native_bf16", "device_has_native_bf16", "resolve"]
