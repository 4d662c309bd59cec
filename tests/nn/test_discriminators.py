"""Discriminators: exact parameter counts, output format, what each sub-discriminator sees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from upsr.nn.discriminators import (
    MelGANMultiScaleDiscriminator,
    MultiFrequencyDiscriminator,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    PeriodDiscriminator,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "cls,expected,reference_m",
    [
        # counted in official-implementations.md §1.2 / §4.2 (exact figures)
        (MelGANMultiScaleDiscriminator, 16_924_086, 16.9),
        (MultiFrequencyDiscriminator, 2_771_503, 2.8),
        # §5.2 gives "41.1 M" / "29.6 M": these are the exact counts of HiFi-GAN V1's MPD/MSD
        # with weight-norm gains (Wave-U-Mamba's modules/discriminator.py at 79c38f7).
        (MultiPeriodDiscriminator, 41_105_770, 41.1),
        (MultiScaleDiscriminator, 29_618_821, 29.6),
    ],
)
def test_default_parameter_counts(cls, expected, reference_m):
    # Built on CPU: faster than the meta device here, whose decomposed spectral-norm power
    # iterations run in Python.
    model = cls()
    assert _count(model) == expected
    assert round(expected / 1e6, 1) == reference_m


SMALL = {
    "mpd": (lambda: MultiPeriodDiscriminator(channels=(4, 8, 16, 32, 32)), 1, 5, 5),
    "msd": (lambda: MultiScaleDiscriminator(width=16), 1, 3, 7),
    "melgan": (lambda: MelGANMultiScaleDiscriminator(ndf=4, n_layers=3), 1, 3, 5),
    "apollo": (lambda: MultiFrequencyDiscriminator(windows=(32, 64, 256), hidden_channels=2),
               2, 3, 6),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_output_format_and_gradients(name):
    torch.manual_seed(0)
    make, channels, n_sub, n_feats = SMALL[name]
    disc = make()
    x = (0.1 * torch.randn(2, channels, 1999)).requires_grad_(True)
    logits, feats = disc(x)
    assert len(logits) == n_sub and len(feats) == n_sub
    for logit, fmap in zip(logits, feats):
        assert logit.shape[:2] == (2, 1)
        assert len(fmap) == n_feats
        assert all(f.shape[0] == 2 and torch.isfinite(f).all() for f in fmap)
        assert not any(f is logit for f in fmap)  # logits are not among the features
    loss = sum(lg.mean() for lg in logits) + sum(f.abs().mean() for fm in feats for f in fm)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(SMALL))
def test_rejects_wrong_channel_count(name):
    make, channels, _, _ = SMALL[name]
    with pytest.raises(ValueError, match="expects a waveform batch"):
        make()(torch.zeros(1, channels + 1, 512))


def test_full_size_apollo_discriminator_on_a_short_input():
    # (The other defaults are large; their structure is checked by the counts and layout tests.)
    torch.manual_seed(1)
    disc = MultiFrequencyDiscriminator()
    with torch.no_grad():
        logits, feats = disc(torch.randn(1, 2, 2048))
    assert len(logits) == 7 and all(torch.isfinite(lg).all() for lg in logits)
    # 32-sample window: 17 bins × 129 frames, three stride-2 convs → 3 × 17 logits.
    assert logits[0].shape == (1, 1, 3, 17)
    assert [f.shape[1] for f in feats[0]] == [8, 16, 32, 64, 128, 256]


def test_period_discriminator_sees_one_phase_per_column():
    # Folding [T] into [T/p, p] means column j only ever sees samples t with t % p == j.
    torch.manual_seed(2)
    d = PeriodDiscriminator(3, channels=(4, 4, 4, 4, 4))
    x = torch.randn(1, 1, 300)
    y = x.clone()
    y[..., 151] += 1.0  # 151 % 3 == 1
    _, fa = d(x)
    _, fb = d(y)
    diff = (fa[0] - fb[0]).abs().sum(dim=(0, 1, 2))
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0


def test_period_discriminator_reflect_pads_to_a_multiple():
    torch.manual_seed(3)
    d = PeriodDiscriminator(7, channels=(2, 2, 2, 2, 2))
    x = torch.randn(1, 1, 100)  # 100 = 14·7 + 2 → padded by 5, reflected
    padded = F.pad(x, (0, 5), mode="reflect")
    torch.testing.assert_close(d(x)[0], d(padded)[0])


def test_msd_feeds_pooled_signals_to_later_scales():
    torch.manual_seed(4)
    msd = MultiScaleDiscriminator(width=16).eval()
    x = torch.randn(1, 1, 1024)
    logits, _ = msd(x)
    once = F.avg_pool1d(x, 4, 2, padding=2)
    twice = F.avg_pool1d(once, 4, 2, padding=2)
    torch.testing.assert_close(logits[1], msd.discriminators[1](once)[0])
    torch.testing.assert_close(logits[2], msd.discriminators[2](twice)[0])


def test_melgan_pooling_excludes_padding():
    # count_include_pad=False: a constant signal stays constant at every scale, edges included.
    torch.manual_seed(5)
    disc = MelGANMultiScaleDiscriminator(ndf=4, n_layers=2)
    x = torch.full((1, 1, 256), 0.5)
    logits, _ = disc(x)
    pooled = disc.downsample(x)
    torch.testing.assert_close(pooled, torch.full_like(pooled, 0.5))
    torch.testing.assert_close(logits[1], disc.model["disc_1"](pooled)[0])


def test_melgan_block_layout_matches_aero():
    d = MelGANMultiScaleDiscriminator().model["disc_0"].model
    convs = [layer[1] if i == 0 else (layer[0] if isinstance(layer, torch.nn.Sequential)
                                       else layer) for i, layer in enumerate(d.values())]
    assert [c.out_channels for c in convs] == [16, 64, 256, 1024, 1024, 1024, 1]
    assert [c.groups for c in convs] == [1, 4, 16, 64, 256, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [15, 41, 41, 41, 41, 5, 3]


def test_apollo_is_invariant_to_input_gain():
    # Every example is power-normalised before the STFTs.
    torch.manual_seed(6)
    disc = MultiFrequencyDiscriminator(windows=(64, 128), hidden_channels=2).eval()
    x = torch.randn(2, 2, 2048, dtype=torch.float64)
    disc = disc.double()
    a, _ = disc(x)
    b, _ = disc(x * torch.tensor([3.0, 0.01], dtype=torch.float64).view(2, 1, 1))
    for la, lb in zip(a, b):
        torch.testing.assert_close(la, lb)


def test_apollo_stacks_real_and_imaginary_per_channel():
    torch.manual_seed(7)
    disc = MultiFrequencyDiscriminator(windows=(64,), hidden_channels=2).double().eval()
    x = torch.randn(1, 2, 1024, dtype=torch.float64)
    xn = x / x.pow(2).sum().sqrt()
    planes = []
    for ch in range(2):
        spec = torch.stft(xn[0, ch], 64, 32, window=torch.hann_window(64, dtype=torch.float64),
                          return_complex=True)
        planes += [spec.real, spec.imag]
    expected, _ = disc.discriminators[0](torch.stack(planes)[None])
    torch.testing.assert_close(disc(x)[0][0], expected)
