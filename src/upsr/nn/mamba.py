"""Mamba v1 blocks in plain PyTorch, state-dict compatible with ``mamba_ssm``.

:class:`Mamba` is the selective-SSM block of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces" (arXiv:2312.00752), Fig. 3 / Algorithm 2, with exactly the parameter
names, shapes, defaults, initialisation and RNG order of ``mamba_ssm.modules.mamba_simple.Mamba``
(state-spaces/mamba), so a state dict moves both ways unchanged.

:class:`BiMamba` is the bidirectional "bimamba v2" variant of Vision Mamba (Zhu et al.,
arXiv:2401.09417, Algorithm 1) as vendored by MambaWave: shared ``in_proj``/``out_proj``, a
second SSM branch (``A_b_log, conv1d_b, x_proj_b, dt_proj_b, D_b``) that runs on the
time-reversed sequence, and ``out_proj(y_fwd + flip(y_bwd))`` (no averaging).

The scan itself is :func:`upsr.nn.scan.selective_scan`; ``backend`` picks its implementation
(``auto``/``cuda``/``cpu``/``ref``). With the ``cuda`` backend the causal convolution also uses
``causal_conv1d`` where that package imports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upsr.errors import UsageError
from upsr.nn.scan import BACKENDS, resolve_backend, selective_scan
from upsr.nn.small_scan import MAX_STATE, mamba_forward_small

__all__ = ["Mamba", "BiMamba", "selective_scan"]


@functools.cache
def _causal_conv1d_fn() -> Callable[..., Any] | None:
    """``causal_conv1d.causal_conv1d_fn`` where it imports, else None (lazy, cached)."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # noqa: BLE001 - a broken CUDA build raises more than ImportError
        return None
    return causal_conv1d_fn  # type: ignore[no-any-return]


def causal_depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Causal depthwise convolution: ``y[b, d, t] = bias[d] + Σ_k w[d, 0, k]·x[b, d, t-K+1+k]``.

    ``x: [B, Di, L]``, ``weight: [Di, 1, K]`` (nn.Conv1d's layout), ``bias: [Di]`` → ``[B, Di, L]``.
    Equals ``nn.Conv1d(Di, Di, K, groups=Di, padding=K-1)(x)[..., :L]`` (mamba_ssm's reference
    path) but runs as K shifted multiply-adds: torch's CPU backward for depthwise convolution
    took over half of a Mamba block's training step; these elementwise ops are ~100× cheaper.
    """
    k = weight.shape[-1]
    length = x.shape[-1]
    xp = F.pad(x, (k - 1, 0))
    w = weight[:, 0, :, None]  # [Di, K, 1]
    y = xp[..., :length] * w[:, 0]
    for j in range(1, k):
        y = y + xp[..., j : j + length] * w[:, j]
    return y if bias is None else y + bias[:, None]


def _dt_init_(
    dt_proj: nn.Linear, dt_rank: int, d_inner: int, dt_min: float, dt_max: float,
    dt_init: str, dt_scale: float, dt_init_floor: float,
) -> None:
    """mamba_ssm's Δ initialisation (paper §3.6 / appendix: Δ log-uniform in [dt_min, dt_max]).

    ``dt_proj.weight ~ U(-s, s)`` (or ``= s`` for "constant") with ``s = dt_rank**-0.5·dt_scale``;
    ``dt_proj.bias = softplus⁻¹(dt)`` so that ``softplus(bias)`` starts at ``dt``.
    """
    std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    elif dt_init == "random":
        nn.init.uniform_(dt_proj.weight, -std, std)
    else:
        raise UsageError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
    dt = torch.exp(
        torch.rand(d_inner, device=dt_proj.bias.device, dtype=dt_proj.bias.dtype)
        * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(dt), stable for small dt
    with torch.no_grad():
        dt_proj.bias.copy_(inv_dt)
    dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]  # mamba_ssm's flag


def _s4d_real_log(d_inner: int, d_state: int, device: Any) -> nn.Parameter:
    """``A_log`` for the S4D-real init ``A[d, n] = -(n+1)`` (kept in float32, no weight decay)."""
    a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
    p = nn.Parameter(torch.log(a))
    p._no_weight_decay = True  # type: ignore[attr-defined]
    return p


def _ones_skip(d_inner: int, device: Any) -> nn.Parameter:
    p = nn.Parameter(torch.ones(d_inner, device=device))
    p._no_weight_decay = True  # type: ignore[attr-defined]
    return p


class Mamba(nn.Module):
    """Mamba v1 block: ``x [B, L, d_model] -> [B, L, d_model]``.

    ``d_inner = expand·d_model``; ``dt_rank = ceil(d_model/16)`` for "auto". Parameters (official
    names): ``A_log [Di, N]``, ``D [Di]``, ``in_proj [2·Di, d_model]``, ``conv1d [Di, 1, K]``
    (+bias), ``x_proj [R+2N, Di]``, ``dt_proj [Di, R]`` (+bias), ``out_proj [d_model, Di]``.
    Forward (paper Algorithm 2): ``x, z = in_proj(h)``; ``x = SiLU(causal depthwise conv(x))``;
    ``(dt, B, C) = x_proj(x)``; ``y = scan(x, dt_proj.weight·dt, -exp(A_log), B, C, D, z,
    delta_bias=dt_proj.bias, softplus)``; ``out_proj(y)``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise UsageError(f"Mamba: unknown backend {backend!r}; choose one of "
                             f"{', '.join(BACKENDS)}")
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        # Registration order = mamba_ssm's, so the same seed draws the same initial weights.
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **fk)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        _dt_init_(self.dt_proj, self.dt_rank, self.d_inner, dt_min, dt_max, dt_init, dt_scale,
                  dt_init_floor)
        self.A_log = _s4d_real_log(self.d_inner, d_state, device)
        self.D = _ones_skip(self.d_inner, device)
        self._init_extra(fk)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    def _init_extra(self, fk: dict[str, Any]) -> None:
        """Hook for subclasses that add parameters between ``D`` and ``out_proj``."""

    # -- the SSM branch ------------------------------------------------------------------------

    def _ssm(
        self, x: torch.Tensor, z: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear,
        dt_proj: nn.Linear, A_log: torch.Tensor, D: torch.Tensor, backend: str,
    ) -> torch.Tensor:
        """Conv, projections and gated scan of one direction: ``x, z [B, Di, L] -> [B, Di, L]``."""
        conv_fn = _causal_conv1d_fn() if backend == "cuda" else None
        if conv_fn is not None:
            x = conv_fn(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu")
        else:
            x = F.silu(causal_depthwise_conv1d(x, conv1d.weight, conv1d.bias))
        x_dbl = x_proj(x.transpose(1, 2))  # [B, L, R+2N]
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # [B, Di, L], bias inside scan
        A = -torch.exp(A_log.float())
        y = selective_scan(
            x, delta, A, Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(),
            D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
            backend=backend,
        )
        assert isinstance(y, torch.Tensor)
        return y

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states [B, L, d_model] -> [B, L, d_model]`` (the parallel scan)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise UsageError(f"Mamba: input must be [B, L, {self.d_model}], got "
                             f"{list(hidden_states.shape)}")
        if self._use_small_torch(hidden_states):
            return mamba_forward_small(self, hidden_states)
        backend = resolve_backend(self.backend, hidden_states.device)
        if self._use_channel_last(hidden_states, backend):
            return self._forward_channel_last(hidden_states)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2·Di, L]
        x, z = xz.chunk(2, dim=1)
        y = self._ssm(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, backend)
        return self.out_proj(y.transpose(1, 2))

    def _needs_grad(self, hidden_states: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())

    def _use_small_torch(self, hidden_states: torch.Tensor) -> bool:
        """float32 inference on CPU (backend ``auto``, no autocast) of a block whose state per
        row is tiny (``d_inner·d_state <= MAX_STATE``) runs in plain torch
        (:mod:`upsr.nn.small_scan`): numba would cost more to load than to run."""
        return (self.backend == "auto" and self.d_inner * self.d_state <= MAX_STATE
                and hidden_states.device.type == "cpu" and hidden_states.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not self._needs_grad(hidden_states))

    def _use_channel_last(self, hidden_states: torch.Tensor, backend: str) -> bool:
        """Inference on CPU in float32/bf16 takes the channel-last numba path."""
        return (backend == "cpu" and hidden_states.dtype != torch.float64
                and not self._needs_grad(hidden_states))

    def _branch_channel_last(
        self, xz: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
        A_log: torch.Tensor, D: torch.Tensor, reverse: bool, out: torch.Tensor | None,
    ) -> torch.Tensor:
        """One direction of the SSM branch on in_proj's float32 output ``xz: [B, L, 2·Di]``
        (read in place: x is its first Di channels, z the rest): the conv+SiLU kernel, x_proj
        (a torch GEMM), then one numba pass for dt_proj, softplus, the scan, D skip and the
        SiLU(z) gate (:func:`upsr.nn._scan_numba.mamba_scan_channel_last`). ``reverse`` runs
        the branch on the time-reversed sequence and returns its output in the original order
        (no flips are made); ``out`` is added to when given. Returns ``[B, L, Di]`` float32."""
        from upsr.nn._scan_numba import conv_silu_channel_last, mamba_scan_channel_last

        x = conv_silu_channel_last(xz, conv1d.weight, conv1d.bias, self.d_inner, reverse)
        x_dbl = F.linear(x, x_proj.weight.float())  # [B, L, R+2N]
        A = -torch.exp(A_log.float())
        y, _ = mamba_scan_channel_last(x, x_dbl, dt_proj.weight, dt_proj.bias, A, D, xz,
                                       self.d_inner, reverse=reverse, out=out)
        return y

    def _forward_channel_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Inference on CPU without a single transpose: the causal conv + SiLU (one numba pass)
        reads in_proj's output ``[B, L, 2·Di]`` in place, x_proj works on ``[B, L, ·]``, one
        numba pass computes Δ (dt_proj, softplus), the scan, D skip and SiLU(z) gate (z read
        from the same in_proj output), and its output goes straight into out_proj. Same math as
        :meth:`forward`'s general path; the scan state and everything inside the kernels run in
        float32 also under bf16 autocast (the projections follow autocast). float64 inputs and
        autograd take the general path."""
        xz = self.in_proj(hidden_states)  # [B, L, 2·Di]
        xzf = xz.float().contiguous()
        y = self._branch_channel_last(xzf, self.conv1d, self.x_proj, self.dt_proj, self.A_log,
                                      self.D, reverse=False, out=None)
        return self.out_proj(y.to(xz.dtype))

    # -- recurrent (streaming) mode ------------------------------------------------------------

    def allocate_inference_cache(
        self, batch_size: int, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states for :meth:`step`: ``conv_state [B, Di, K]``, ``ssm_state [B, Di, N]``."""
        w = self.conv1d.weight
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=w.device,
                                 dtype=dtype or w.dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=w.device,
                                dtype=dtype or self.dt_proj.weight.dtype)
        return conv_state, ssm_state

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One time step: ``hidden_states [B, 1, d_model]`` → ``out [B, 1, d_model]``.

        ``conv_state [B, Di, K]`` (the last K conv inputs) and ``ssm_state [B, Di, N]`` are
        updated in place and returned, as in mamba_ssm's ``Mamba.step``. Stepping through a
        sequence from zero states equals :meth:`forward` on it.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise UsageError(f"Mamba.step: input must be [B, 1, {self.d_model}], got "
                             f"{list(hidden_states.shape)}")
        dtype = hidden_states.dtype
        xz = self.in_proj(hidden_states[:, 0])  # [B, 2·Di]
        x, z = xz.chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x).to(dtype)
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state],
                                 dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias.to(dt.dtype))
        A = -torch.exp(self.A_log.float())
        dA = torch.exp(dt[:, :, None] * A)  # [B, Di, N]
        ssm_state.copy_(ssm_state * dA + (dt * x)[:, :, None] * Bm[:, None, :])
        y = (ssm_state.to(dtype) * Cm[:, None, :]).sum(-1) + self.D.to(dtype) * x
        y = y * F.silu(z)
        out = self.out_proj(y)
        return out[:, None], conv_state, ssm_state


class BiMamba(Mamba):
    """Vision-Mamba "bimamba v2" block (as in MambaWave): ``[B, L, d_model] -> [B, L, d_model]``.

    Adds ``A_b_log [Di, N]``, ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``D_b [Di]`` to
    :class:`Mamba`'s parameters. ``in_proj`` runs once; the backward branch sees ``x`` and ``z``
    reversed in time, its output is reversed back, and ``out_proj(y_fwd + y_bwd)`` — a sum, not a
    mean. As in Vim, ``dt_proj_b`` keeps nn.Linear's default init (no Δ init), so fresh modules
    match the official RNG draw for draw.
    """

    def _init_extra(self, fk: dict[str, Any]) -> None:
        self.A_b_log = _s4d_real_log(self.d_inner, self.d_state, fk["device"])
        self.conv1d_b = nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner,
                                  padding=self.d_conv - 1, bias=self.conv1d.bias is not None,
                                  **fk)
        self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False,
                                  **fk)
        self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        self.D_b = _ones_skip(self.d_inner, fk["device"])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise UsageError(f"BiMamba: input must be [B, L, {self.d_model}], got "
                             f"{list(hidden_states.shape)}")
        backend = resolve_backend(self.backend, hidden_states.device)
        if self._use_channel_last(hidden_states, backend):
            return self._forward_channel_last(hidden_states)
        xz = self.in_proj(hidden_states).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        y_f = self._ssm(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, backend)
        y_b = self._ssm(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                        self.A_b_log, self.D_b, backend)
        return self.out_proj((y_f + y_b.flip(-1)).transpose(1, 2))

    def _forward_channel_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Inference on CPU as :meth:`Mamba._forward_channel_last`, both directions on the same
        in_proj output: the backward branch runs an anti-causal conv and a scan from the last
        step to the first, adding into the forward branch's output, so ``y_fwd + flip(y_bwd)``
        is made without a flip, transpose or copy."""
        xz = self.in_proj(hidden_states)  # [B, L, 2·Di]
        xzf = xz.float().contiguous()
        y = self._branch_channel_last(xzf, self.conv1d, self.x_proj, self.dt_proj, self.A_log,
                                      self.D, reverse=False, out=None)
        y = self._branch_channel_last(xzf, self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                                      self.A_b_log, self.D_b, reverse=True, out=y)
        return self.out_proj(y.to(xz.dtype))

    def step(self, *args: Any, **kwargs: Any) -> Any:
        raise UsageError("BiMamba has no recurrent step mode: its backward branch needs the "
                         "whole sequence")
