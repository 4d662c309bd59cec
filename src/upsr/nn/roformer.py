"""Roformer pieces: RMSNorm, rotary position embedding (RoPE) and a pre-norm transformer block.

RoPE follows Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding"
(arXiv:2104.09864), eq. (34): feature pairs ``(x[2i], x[2i+1])`` (interleaved, not split in
halves) are rotated by the angle ``pos * theta**(-2i/d)``. RMSNorm is Zhang & Sennrich,
"Root Mean Square Layer Normalization" (NeurIPS 2019), eq. (4), with a weight and no bias.

The block is the one Apollo (Li et al., ICASSP 2025) uses across frequency bands: its weights
keep the official 1×1-``Conv1d`` shapes and names (``input_norm``, ``weight`` = fused QKV,
``output``, ``MLP.0``/``MLP.1``, ``MLP_output``) so official state dicts load unchanged, while
the forward pass works channel-last with ``F.linear`` and ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F
from torch import nn

# dtypes that take the reduced-precision inference paths (statistics kept in float32)
LOW_PRECISION = (torch.bfloat16, torch.float16)


class Workspace:
    """Scratch tensors reused across the blocks of one low-precision inference call.

    ``get(name, shape, like)`` returns a tensor of ``shape`` (dtype and device of ``like``)
    that shares storage with every earlier ``get`` of the same ``name``: the caller must be
    done with the previous contents. Large activations (Apollo at 10 s: 80 000 rows × up to
    2048 channels) are over glibc's 32 MB mmap threshold, so without reuse every block maps
    and zero-fills fresh pages (~10 % of Apollo's bf16 forward on a 2-core CPU).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = 1
        for n in shape:
            numel *= n
        buf = self._buffers.get(name)
        if (buf is None or buf.numel() < numel or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x**2 over the channel axis) + eps) * weight`` (Zhang & Sennrich 2019).

    ``dim`` is the channel axis: 1 for ``[B, C, T]`` (Apollo's convolutional layout), -1 for
    channel-last ``[..., C]``. The statistics are computed in float32 whatever the input
    dtype, then cast back, as Apollo does.
    """

    def __init__(self, channels: int, eps: float = 1e-5, dim: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim in (-1, x.dim() - 1) and x.dtype == torch.float32:
            # the same formula as below, as one fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(self.dim, keepdim=True) + self.eps)).type_as(x)
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return y * self.weight.reshape(shape)


def rope_tables(positions: int, dim: int, theta: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``[positions, dim]`` for interleaved RoPE (RoFormer eq. 34).

    Column ``2i`` and ``2i+1`` both hold the angle ``pos * theta**(-2i/dim)``. The angles are
    formed in float32 exactly as Apollo forms its ``cos_freq``/``sin_freq`` buffers, so the
    tables equal the buffers stored in its checkpoints.
    """
    if dim % 2:
        raise ValueError(f"RoPE needs an even feature size, got {dim}")
    freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # [dim/2]
    angle = torch.arange(positions, dtype=torch.float32).reshape(-1, 1) * freq.reshape(1, -1)
    cos = torch.repeat_interleave(torch.cos(angle), 2, dim=-1)
    sin = torch.repeat_interleave(torch.sin(angle), 2, dim=-1)
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: ``x: [..., L, D]``, ``cos``/``sin``: ``[L, D]`` -> ``[..., L, D]``.

    ``(a, b) -> (a cos - b sin, b cos + a sin)`` for each pair ``(x[2i], x[2i+1])``, computed
    as ``x·cos + swap(x)·(∓sin)`` (the sign folded into the small table: three passes over x).
    """
    sign = torch.tensor([-1.0, 1.0], dtype=sin.dtype, device=sin.device).repeat(sin.shape[-1] // 2)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin * sign)


def rope_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotations of :func:`apply_rope` as matrices: ``R: [L, D, D]`` with
    ``x[..., l, :] @ R[l] == apply_rope(x, cos, sin)[..., l, :]`` (``cos``/``sin``: ``[L, D]``).

    Block-diagonal: pair ``(2i, 2i+1)`` maps ``(a, b) -> (a cos - b sin, b cos + a sin)``.
    """
    length, dim = cos.shape
    i = torch.arange(0, dim, 2, device=cos.device)
    c, s = cos[:, i], sin[:, i]
    rot = torch.zeros(length, dim, dim, dtype=cos.dtype, device=cos.device)
    rot[:, i, i] = c
    rot[:, i + 1, i + 1] = c
    rot[:, i + 1, i] = -s
    rot[:, i, i + 1] = s
    return rot


def apply_rope_batched(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` as one batched GEMM over positions: ``x: [N, H, L, D]``, ``rot`` from
    :func:`rope_matrices` -> ``[N, H, L, D]`` (a position-major view, not contiguous).

    One copy of ``x`` to position-major order plus a ``[L] × (N·H × D) @ (D × D)`` GEMM: in
    bf16 half the time of the three elementwise passes and a flip, and one rounding instead
    of three (the GEMM accumulates in float32).
    """
    n, h, length, dim = x.shape
    y = torch.bmm(x.permute(2, 0, 1, 3).reshape(length, n * h, dim), rot)
    return y.view(length, n, h, dim).permute(1, 2, 0, 3)


def rms_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``x / sqrt(mean(x**2, -1) + eps)`` without a gain, ``x: [..., C]``.

    Callers fold an RMSNorm's gain into the weight of the linear map that follows
    (``W · diag(g)``), which saves a full pass over the activations. For bf16/fp16 ``x`` the
    statistic is accumulated and inverted in float32 and only the per-row scale is rounded to
    ``x``'s dtype (the result keeps ``x``'s dtype).
    """
    if x.dtype in LOW_PRECISION:
        return x * rms_scale(x, eps)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if torch.is_grad_enabled():  # autograd needs the norm as it was: no in-place updates
        return x * (norm.square() / x.shape[-1] + eps).rsqrt()
    ms = norm.square_().div_(x.shape[-1])
    return x * ms.add_(eps).rsqrt_()


def rms_scale(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 / sqrt(mean(x**2, -1) + eps)`` as ``[..., 1]`` in ``x``'s dtype. For bf16/fp16 ``x``
    the norm is accumulated in float32 by the reduction kernel (rounded once to ``x``'s dtype:
    asking for a float32 result instead makes torch copy all of ``x`` to float32 first) and
    inverted in float32."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).float()
    return (norm.square() / x.shape[-1] + eps).rsqrt().to(x.dtype)


class RoformerBlock(nn.Module):
    """Pre-RMSNorm self-attention with RoPE plus a doubly-gated SiLU MLP (Apollo's band net).

    ``forward(x: [N, L, C]) -> [N, L, C]``: ``N`` independent sequences of length ``L``
    (``L <= max_positions``; Apollo: one frame's bands), ``C = dim`` channels.

    - attention: ``y = x + W_o · SDPA(rope(q), rope(k), v)`` with ``q, k, v`` from one fused
      projection ``weight`` whose output channels are grouped per head as ``[q_h, k_h, v_h]``
      (head 0 first), default ``1/sqrt(head_dim)`` scaling;
    - MLP: ``h = SiLU(W_1 · RMSNorm(y))`` (``mlp_ratio·C`` channels), split in halves ``g, z``;
      ``out = y + W_2 · (SiLU(g) · z)``. SiLU is applied to ``g`` twice, as the official code
      does (it is part of the published function, not a slip to fix).
    """

    cos_freq: torch.Tensor
    sin_freq: torch.Tensor

    def __init__(self, dim: int, num_heads: int = 8, hidden: int | None = None,
                 theta: float = 10000.0, max_positions: int = 100, causal: bool = False,
                 mlp_ratio: int = 8) -> None:
        super().__init__()
        hidden = dim if hidden is None else hidden
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        if mlp_ratio % 2:
            raise ValueError(f"mlp_ratio must be even (gate and value halves), got {mlp_ratio}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, hidden // num_heads
        self.theta, self.max_positions, self.causal = theta, max_positions, causal
        self.input_norm = RMSNorm(dim, dim=-1)
        self.weight = nn.Conv1d(dim, 3 * hidden, 1, bias=False)
        self.output = nn.Conv1d(hidden, dim, 1, bias=False)
        self.MLP = nn.Sequential(RMSNorm(dim, dim=-1),
                                 nn.Conv1d(dim, dim * mlp_ratio, 1, bias=False), nn.SiLU())
        self.MLP_output = nn.Conv1d(dim * mlp_ratio // 2, dim, 1, bias=False)
        # Deterministic from (max_positions, head_dim, theta): not saved in checkpoints.
        cos, sin = rope_tables(max_positions, self.head_dim, theta)
        self.register_buffer("cos_freq", cos, persistent=False)
        self.register_buffer("sin_freq", sin, persistent=False)

    def forward(self, x: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
        n, length, _ = x.shape
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} exceeds the RoPE table ({self.max_positions})")
        if x.dtype in LOW_PRECISION and not torch.is_grad_enabled():
            return self._forward_low_precision(x, workspace or Workspace())
        mlp: tp.Any = self.MLP  # [RMSNorm, 1×1 conv, SiLU]; indexed for its weights
        w_qkv = self.weight.weight.squeeze(-1) * self.input_norm.weight  # RMSNorm gain folded
        qkv = F.linear(rms_normalize(x, self.input_norm.eps), w_qkv)  # [N, L, 3·hidden]
        qkv = qkv.view(n, length, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        cos, sin = self.cos_freq[:length], self.sin_freq[:length]
        q, k = apply_rope(qkv[0], cos, sin), apply_rope(qkv[1], cos, sin)
        att = F.scaled_dot_product_attention(q, k, qkv[2], is_causal=self.causal)
        att = att.transpose(1, 2).reshape(n, length, -1)  # [N, L, hidden], head-major channels
        # in-place ops save memory passes at inference; training needs the autograd-safe forms
        train = torch.is_grad_enabled()
        y = F.linear(att, self.output.weight.squeeze(-1))
        y = y + x if train else y.add_(x)
        w_up = mlp[1].weight.squeeze(-1) * mlp[0].weight
        h = F.silu(F.linear(rms_normalize(y, mlp[0].eps), w_up), inplace=not train)
        gate, value = h.chunk(2, dim=-1)
        # the official second SiLU on the gate
        gate = F.silu(gate) * value if train else F.silu(gate, inplace=True).mul_(value)
        out = F.linear(gate, self.MLP_output.weight.squeeze(-1))
        return out + y if train else out.add_(y)

    def _forward_low_precision(self, x: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """Inference in ``x``'s dtype (bf16/fp16), without autocast: the same function with
        the weights cast once per call (norm gains folded in float32 first), the residual
        stream kept in ``x``'s dtype (``x`` itself is not modified) and each residual add
        fused into its GEMM (``addmm``), RoPE as a batched GEMM (:func:`apply_rope_batched`).
        Norm statistics are float32 (:func:`rms_scale`); the attention kernel accumulates its
        softmax in float32. The normalised input, the QKV
        projection and the MLP's hidden layer live in ``ws`` (names ``norm``, ``qkv``,
        ``hidden``)."""
        n, length, c = x.shape
        rows, dt = n * length, x.dtype
        mlp: tp.Any = self.MLP
        x2 = x.reshape(rows, c)
        xn = torch.mul(x2, rms_scale(x2, self.input_norm.eps), out=ws.get("norm", (rows, c), x))
        w_qkv = (self.weight.weight.squeeze(-1) * self.input_norm.weight).to(dt)
        qkv = torch.mm(xn, w_qkv.t(), out=ws.get("qkv", (rows, w_qkv.shape[0]), x))
        qkv = qkv.view(n, length, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        rot = rope_matrices(self.cos_freq[:length], self.sin_freq[:length]).to(dt)
        q, k = apply_rope_batched(qkv[0], rot), apply_rope_batched(qkv[1], rot)
        att = F.scaled_dot_product_attention(q, k, qkv[2], is_causal=self.causal)
        att = att.transpose(1, 2).reshape(rows, -1)  # [N·L, hidden], head-major channels
        y = torch.addmm(x2, att, self.output.weight.squeeze(-1).t().to(dt))
        yn = torch.mul(y, rms_scale(y, mlp[0].eps), out=ws.get("norm", (rows, c), x))
        w_up = (mlp[1].weight.squeeze(-1) * mlp[0].weight).to(dt)
        h = torch.mm(yn, w_up.t(), out=ws.get("hidden", (rows, w_up.shape[0]), x))
        h = F.silu(h, inplace=True)
        gate, value = h.chunk(2, dim=-1)
        gate = F.silu(gate, inplace=True).mul_(value)  # the official second SiLU on the gate
        y.addmm_(gate, self.MLP_output.weight.squeeze(-1).t().to(dt))
        return y.view(n, length, c)
