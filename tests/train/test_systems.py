"""Per-system parts: discriminator options, weighted losses, schedules."""

from __future__ import annotations

import pytest
import torch

from upsr.errors import UsageError
from upsr.nn import losses as L
from upsr.train import recipe as R
from upsr.train import systems as S


def test_schedule_factor_closed_forms():
    step = R.ScheduleSection(kind="step", step_size=2, gamma=0.98)
    assert [S.lr_factor(step, u) for u in range(5)] == [1, 1, 0.98, 0.98, 0.98 ** 2]
    warm = R.ScheduleSection(kind="exponential", gamma=0.999, warmup=5)
    assert [S.lr_factor(warm, u) for u in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert S.lr_factor(warm, 5 + 10) == pytest.approx(0.999 ** 10)
    assert S.lr_factor(R.ScheduleSection(), 1000) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = S.build_scheduler(opt, warm)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2 * f for f in (0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.999)])


def test_discriminators_follow_the_recipe_and_reject_unknown_options():
    mfd = S.build_discriminator(R.DiscriminatorSection(kind="multi_frequency",
                                                       options={"windows": [64, 128]}), 2)
    assert len(mfd.discriminators) == 2 and mfd.channels == 2
    x = torch.randn(3, 2, 2048)
    assert S.disc_input(mfd, x).shape == (3, 2, 2048)  # stereo discriminator: channels kept
    hifi = S.build_discriminator(R.DiscriminatorSection(
        kind="hifigan", options={"periods": [2, 3], "num_scales": 1, "width": 16,
                                 "channels": [4, 8, 8, 8, 8]}), 2)
    assert S.disc_input(hifi, x).shape == (6, 1, 2048)  # mono: channels folded into batch
    logits, feats = hifi(S.disc_input(hifi, x))
    assert len(logits) == len(feats) == 3  # 2 periods + 1 scale
    with pytest.raises(UsageError, match="options.ndf: unknown option for 'hifigan'"):
        S.build_discriminator(R.DiscriminatorSection(kind="hifigan", options={"ndf": 4}), 1)
    with pytest.raises(UsageError, match="differs from data.channels 1"):
        S.build_discriminator(R.DiscriminatorSection(kind="multi_frequency",
                                                     options={"channels": 2}), 1)


def test_generator_loss_is_the_weighted_sum_of_the_named_terms():
    torch.manual_seed(0)
    est = torch.randn(2, 1, 4800, requires_grad=True)
    ref = torch.randn(2, 1, 4800)
    loss = S.GeneratorLoss({"freq_mae": 2.0, "l1": 0.5, "adversarial": 1.0})
    out = loss(est, ref)
    assert set(out) == {"freq_mae", "l1", "total"}
    expect = 2.0 * L.freq_mae(est, ref) + 0.5 * (est - ref).abs().mean()
    torch.testing.assert_close(out["total"], expect)


def test_wave_u_mamba_mel_term_carries_gradients():
    """The official code's 45 x mel L1 was computed on detached arrays; ours must not be."""
    est = torch.randn(1, 1, 4800, requires_grad=True)
    out = S.GeneratorLoss({"mel": 45.0})(est, torch.randn(1, 1, 4800))
    out["total"].backward()
    assert est.grad is not None and float(est.grad.abs().sum()) > 0
