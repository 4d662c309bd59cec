"""Small layers shared by the systems: Snake, RMSNorm, weight/spectral-norm helpers.

Weight and spectral norm use ``torch.nn.utils.parametrizations`` (the old hook-based
``torch.nn.utils.weight_norm`` is deprecated). Official checkpoints were saved with the old
form, whose state-dict keys differ; :func:`legacy_norm_keys_to_parametrized` and
:func:`parametrized_norm_keys_to_legacy` translate between the two exactly:

- weight norm: ``<m>.weight_g`` ↔ ``<m>.parametrizations.weight.original0`` and
  ``<m>.weight_v`` ↔ ``<m>.parametrizations.weight.original1``;
- spectral norm: ``<m>.weight_orig`` ↔ ``<m>.parametrizations.weight.original``,
  ``<m>.weight_u`` ↔ ``<m>.parametrizations.weight.0._u`` and
  ``<m>.weight_v`` ↔ ``<m>.parametrizations.weight.0._v``.

``weight_v`` means different things in the two old norms; a module is taken to be spectral-
normed when its ``weight_orig`` key is present.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

M = tp.TypeVar("M", bound=nn.Module)


class Snake(nn.Module):
    """Snake activation ``x + sin²(αx) / α`` with a learned α per channel.

    Liu Ziyin, Tilman Hartwig, Masahito Ueda, "Neural Networks Fail to Learn Periodic Functions
    and How to Fix It", NeurIPS 2020 (eq. 3); used per channel as in BigVGAN (Lee et al., 2023).
    ``logscale=True`` stores log α (α = exp(param)), like BigVGAN's ``alpha_logscale``.

    Shapes: ``x: [B, C, T]`` → ``[B, C, T]``.
    """

    def __init__(self, channels: int, alpha: float = 1.0, logscale: bool = False,
                 eps: float = 1e-9) -> None:
        super().__init__()
        self.logscale = logscale
        self.eps = eps
        init = torch.full((channels,), float(alpha))
        self.alpha = nn.Parameter(torch.log(init) if logscale else init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp() if self.logscale else self.alpha
        alpha = alpha.view(1, -1, *([1] * (x.dim() - 2)))
        # eps keeps 1/α finite when a learned α crosses zero.
        return x + torch.sin(alpha * x).pow(2) / (alpha + self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm ``x / sqrt(mean(x²) + eps) * weight`` over one axis.

    Biao Zhang, Rico Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019 (eq. 4),
    without the bias term. Statistics are computed in float32 for half-precision inputs.

    Shapes: any ``x`` whose axis ``dim`` has ``num_features`` entries; output has x's shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, dim: int = -1) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(self.dim, keepdim=True) + self.eps)
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return (y * self.weight.float().view(shape)).type_as(x)


def weight_norm(module: M, name: str = "weight", dim: int = 0) -> M:
    """Weight normalisation ``w = g · v / ‖v‖`` (Salimans & Kingma, NeurIPS 2016, eq. 2) as a
    parametrization; ``g`` is ``parametrizations.<name>.original0``, ``v`` is ``original1``."""
    return tp.cast(M, parametrizations.weight_norm(module, name=name, dim=dim))


def spectral_norm(module: M, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12) -> M:
    """Spectral normalisation ``w / σ(w)`` with σ from power iteration (Miyato et al., ICLR
    2018, eq. 8) as a parametrization; the same defaults as the old ``nn.utils.spectral_norm``.

    With the same stored ``u``, ``v`` the two give identical weights in eval mode; in training
    mode torch's parametrization updates ``u`` before ``v`` where the old hook updated ``v``
    first, so σ estimates differ slightly (≈1e-3 relative) for the first steps after loading
    an old-style state, then converge to the same value."""
    return tp.cast(M, parametrizations.spectral_norm(
        module, name=name, n_power_iterations=n_power_iterations, eps=eps))


def remove_norms(model: nn.Module) -> nn.Module:
    """Fold every weight/spectral-norm parametrization of ``model`` into a plain ``weight``
    (for export or inference); returns ``model``, modified in place."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            params: tp.Any = module.parametrizations
            for name in list(params.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


_WN_LEGACY = {"_g": "original0", "_v": "original1"}
_SN_LEGACY = {"_orig": "original", "_u": "0._u", "_v": "0._v"}


def legacy_norm_keys_to_parametrized(state: tp.Mapping[str, tp.Any],
                                     names: tp.Sequence[str] = ("weight",)) -> dict[str, tp.Any]:
    """Rename old hook-style weight/spectral-norm keys to ``parametrizations`` keys.

    Tensors are passed through untouched (same objects); other keys are kept as they are.
    ``names`` lists the parametrized tensor names to look for (``weight`` almost always).
    """
    spectral = {k[: -len("_orig")] for k in state if any(k.endswith(f".{n}_orig") or
                                                          k == f"{n}_orig" for n in names)}
    out: dict[str, tp.Any] = {}
    for key, value in state.items():
        out[_to_parametrized(key, names, spectral)] = value
    return out


def _to_parametrized(key: str, names: tp.Sequence[str], spectral: set[str]) -> str:
    prefix, _, leaf = key.rpartition(".")
    for name in names:
        for suffix in ("_orig", "_u", "_v", "_g"):
            if leaf != name + suffix:
                continue
            base = f"{prefix}.{name}" if prefix else name
            is_spectral = base in spectral
            table = _SN_LEGACY if is_spectral else _WN_LEGACY
            if suffix not in table:
                return key
            head = f"{prefix}." if prefix else ""
            return f"{head}parametrizations.{name}.{table[suffix]}"
    return key


def parametrized_norm_keys_to_legacy(state: tp.Mapping[str, tp.Any]) -> dict[str, tp.Any]:
    """Inverse of :func:`legacy_norm_keys_to_parametrized` (for writing official-style files)."""
    inverse_wn = {v: k for k, v in _WN_LEGACY.items()}
    inverse_sn = {v: k for k, v in _SN_LEGACY.items()}
    out: dict[str, tp.Any] = {}
    marker = "parametrizations."
    for key, value in state.items():
        pos = key.rfind(marker)
        if pos < 0 or (pos > 0 and key[pos - 1] != "."):
            out[key] = value
            continue
        head = key[:pos]
        name, _, leaf = key[pos + len(marker):].partition(".")
        spectral = f"{head}{marker}{name}.original" in state
        table = inverse_sn if spectral else inverse_wn
        out[f"{head}{name}{table[leaf]}" if leaf in table else key] = value
    return out
