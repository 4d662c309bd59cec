"""MambaWave's channels-first entry to its BiMamba blocks against the block's general path."""

from __future__ import annotations

import torch

from tests.conftest import rel_l2
from upsr.models import mambawave as mw
from upsr.nn.mamba import BiMamba


def test_bimamba_channels_first_equals_the_transposed_block_in_float64():
    """At inference (float32, CPU scan) ``BiMamba(yᵀ)ᵀ`` computed channels first (``in_proj``
    on the transposed view, both directions' kernels, ``out_proj`` writing ``[N, D, T]``)
    equals the block's general path in float64 to float32 rounding (odd length, 3 rows);
    under autocast it falls back to the block itself."""
    torch.manual_seed(0)
    m = BiMamba(8, d_state=4).eval()
    y = torch.randn(3, 8, 257, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = mw._bimamba_channels_first(m, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = mw._bimamba_channels_first(m, y)
    with torch.no_grad():
        ref = m.double()(y.double().transpose(1, 2)).transpose(1, 2)
    assert got.dtype == torch.float32 and got.shape == y.shape and got.is_contiguous()
    assert rel_l2(got, ref) < 1e-5
    assert 0 < rel_l2(low.float(), ref) < 5e-2
