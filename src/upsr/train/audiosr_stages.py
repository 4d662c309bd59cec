"""AudioSR's first-stage fine-tuning: the mel VAE or the 48 kHz HiFi-GAN vocoder alone.

A recipe selects the stage with ``[model.config] stage = "vae" | "vocoder"`` (the model's
:meth:`~upsr.models.audiosr.model.AudioSR.freeze_for_training` then freezes everything else),
usually starting from an ``audiosr`` checkpoint (``model.init``); the run writes ordinary
``audiosr`` checkpoints (the whole model, the stage's part fine-tuned) that ``upsr enhance
--model`` and the diffusion recipe's ``model.init`` load. Only the clean side of the data is
used: both stages reconstruct their input (DC removed, peak 0.5, AudioSR's normalisation).

- **vae** (LDM's ``AutoencoderKL`` with ``LPIPSWithDiscriminator``, Rombach et al. 2022, as
  AudioLDM/AudioSR train their mel VAE): ``reconstruction`` × Σ|mel − mel̂| / B (the log-mel
  image; LDM's learned output log-variance is left at its initial 0 and LPIPS, an image
  network, has no mel counterpart) + ``kl`` × Σ KL(q(z|mel) ‖ N(0, I)) / B + after
  ``discriminator.start`` steps ``adversarial`` × λ × (−mean D(mel̂)) with LDM's adaptive λ =
  ‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4) (clamped to [0, 1e4]; L: the decoder's last convolution); the
  patch discriminator (``kind = "patch"``) learns with LDM's hinge loss ½(mean relu(1 − D(real))
  + mean relu(1 + D(fake))). Real and fake go through the discriminator in one batch (one DDP
  forward per backward), so its BatchNorm sees both, where LDM calls it twice.
- **vocoder** (HiFi-GAN, Kong et al. 2020, eqs. 1–6): the log-mel of the input into the
  vocoder; ``mel_log`` × mean|mel(ŷ) − mel(y)| (AudioSR's 48 kHz log-mel, 256 bins, the
  vocoder's own input features) + ``feature_matching`` × Σ mean|D_l(ŷ) − D_l(y)| +
  ``adversarial`` × LSGAN on MPD + MSD (``kind = "hifigan"``), the pieces of
  :mod:`upsr.nn.discriminators` / :mod:`upsr.nn.losses` the GAN systems use.
"""

from __future__ import annotations

import math
import typing as tp

import torch
from torch import nn

from upsr.errors import UsageError
from upsr.nn import losses as L
from upsr.train import recipe as R

STAGE_LOSSES = {"vae": ("reconstruction", "kl", "adversarial"),
                "vocoder": ("mel_log", "feature_matching", "adversarial")}
STAGE_DISCRIMINATOR = {"vae": "patch", "vocoder": "hifigan"}
_MAIN_LOSS = {"vae": "reconstruction", "vocoder": "mel_log"}


def stage_of(model: tp.Any) -> str | None:
    """``"vae"``/``"vocoder"`` for an AudioSR model configured for a first-stage run, else
    None (diffusion stage, other systems)."""
    stage = getattr(getattr(model, "config", None), "stage", None)
    return stage if stage in STAGE_LOSSES else None


def check_recipe(r: R.Recipe, stage: str) -> None:
    """The stage's losses, discriminator and rate (called from the recipe's own checks)."""
    allowed = STAGE_LOSSES[stage]
    for name in r.losses:
        if name not in allowed:
            raise UsageError(f"recipe losses.{name}: not a loss of AudioSR's {stage} stage "
                             f"(allowed: {', '.join(allowed)})")
    main = _MAIN_LOSS[stage]
    if r.losses.get(main, 0.0) <= 0:
        raise UsageError(f"recipe losses.{main}: AudioSR's {stage} stage needs it > 0")
    gan = r.losses.get("adversarial", 0.0) > 0 or r.losses.get("feature_matching", 0.0) > 0
    want = STAGE_DISCRIMINATOR[stage]
    if gan and r.discriminator.kind != want:
        raise UsageError(f"recipe discriminator.kind: AudioSR's {stage} stage trains against "
                         f"{want!r} (got {r.discriminator.kind!r})")
    if r.data.sample_rate != 48000:
        raise UsageError(f"recipe data.sample_rate: AudioSR's {stage} stage works at 48000 Hz "
                         f"(got {r.data.sample_rate})")


class StageForward(nn.Module):
    """``forward(hr [N, T]) -> (fake, real, kl [N])`` for the model's stage: mel images
    ``[N, 1, frames, 256]`` (vae; ``kl`` per item) or waveforms ``[N, 1, T']`` (vocoder; ``kl``
    empty). ``T`` is cut to whole frames (vae: whole latent frames). A module so that DDP
    wraps the trained part's real entry point."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from upsr.models.audiosr import pipeline as P

        m = tp.cast(tp.Any, self.model)
        stage = stage_of(m)
        hop = P.HOP * (m.vae.cfg.downsample if stage == "vae" else 1)
        n = hr.shape[-1] // hop * hop
        if n == 0:
            raise UsageError(f"AudioSR's {stage} stage needs segments of at least {hop} "
                             f"samples (data.segment_s)")
        y = hr[..., :n].float()
        y = y - y.mean(dim=-1, keepdim=True)
        y = y * (0.5 / (y.abs().amax(dim=-1, keepdim=True) + 1e-8))
        with torch.no_grad():
            mel, _ = P.mel_spectrogram(y)  # [N, 256, frames]
        if stage == "vae":
            image = mel.transpose(1, 2).unsqueeze(1)  # [N, 1, frames, 256]
            rec, posterior = m.vae(image.to(next(m.vae.parameters()).dtype))
            return rec.float(), image, posterior.kl().float()
        wav = m.vocoder(mel.to(next(m.vocoder.parameters()).dtype))
        return wav.float()[..., :n], y.unsqueeze(1), y.new_zeros(0)


def _grad_norm(loss: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, param, retain_graph=True)
    return g.norm()


def train_step(run: tp.Any, hr: torch.Tensor) -> dict[str, float]:
    """One discriminator step (once ``discriminator.start`` steps are done) and one step of
    the stage's part on the clean batch ``hr [B, C, T]`` (channels folded into the batch).
    ``run`` is a :class:`upsr.train.loop.Run`."""
    from upsr.train import loop
    from upsr.train import systems as S

    rc, st = run.recipe, run.state
    stage = stage_of(st.generator)
    dev = run.dist.device
    hr = hr.to(dev, non_blocking=True).reshape(-1, hr.shape[-1])
    w = rc.losses
    w_adv, w_fm = w.get("adversarial", 0.0), w.get("feature_matching", 0.0)
    use_d = (w_adv > 0 or w_fm > 0) and st.step >= rc.discriminator.start
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=run.autocast)
    with amp:
        fake, real, kl = run.g_train(hr)
    out: dict[str, float] = {}
    disc = st.discriminator
    d_loss_fn, g_loss_fn, fm_fn = S.adversarial_losses(rc.discriminator)
    if use_d:
        assert disc is not None and st.opt_d is not None and run.d_train is not None
        for p in disc.parameters():
            p.requires_grad_(True)
        with amp:
            logits, _ = run.d_train(torch.cat([real, fake.detach()]))
        r_l = [x[:real.shape[0]].float() for x in logits]
        f_l = [x[real.shape[0]:].float() for x in logits]
        if stage == "vae":  # LDM's hinge_d_loss: ½ (mean relu(1 − real) + mean relu(1 + fake))
            d_loss = 0.5 * L.hinge_d_loss(r_l, f_l, "mean")
        else:
            d_loss = d_loss_fn(r_l, f_l)
        st.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        out["grad_norm_d"] = loop._clip(disc.parameters(), rc.optim.discriminator.grad_clip)
        st.opt_d.step()
        out["loss_d"] = float(d_loss.detach())
        for p in disc.parameters():
            p.requires_grad_(False)

    B = real.shape[0]
    if stage == "vae":
        rec = (fake - real).abs().sum() / B
        kl_term = kl.sum() / B
        total = w.get("reconstruction", 0.0) * rec + w.get("kl", 0.0) * kl_term
        out["reconstruction"], out["kl"] = float(rec.detach()), float(kl_term.detach())
    else:
        from upsr.models.audiosr import pipeline as P

        mel_fake, _ = P.mel_spectrogram(fake[:, 0])
        mel_real, _ = P.mel_spectrogram(real[:, 0])
        rec = (mel_fake - mel_real).abs().mean()
        total = w.get("mel_log", 0.0) * rec
        out["mel_log"] = float(rec.detach())
    if use_d:
        assert disc is not None
        with amp:
            logits, feats = disc(torch.cat([real, fake]))
        f_l = [x[B:].float() for x in logits]
        if stage == "vae":  # LDM: −mean D(fake), weighted adaptively at the decoder's output
            adv = -torch.stack([x.mean() for x in f_l]).sum()
            last = st.generator.vae.decoder.conv_out.weight
            lam = (_grad_norm(rec, last) / (_grad_norm(adv, last) + 1e-4)).clamp(0, 1e4)
            total = total + w_adv * lam.detach() * adv
            out["adversarial"], out["adaptive_weight"] = float(adv.detach()), float(lam)
        else:
            if w_adv > 0:
                adv = g_loss_fn(f_l)
                total = total + w_adv * adv
                out["adversarial"] = float(adv.detach())
            if w_fm > 0:
                f_f = [[f[B:].float() for f in fs] for fs in feats]
                r_f = [[f[:B].float() for f in fs] for fs in feats]
                fm = fm_fn(f_f, r_f)
                total = total + w_fm * fm
                out["feature_matching"] = float(fm.detach())
    st.opt_g.zero_grad(set_to_none=True)
    total.backward()
    out["grad_norm_g"] = loop._clip(st.generator.parameters(), rc.optim.generator.grad_clip)
    st.opt_g.step()
    if st.ema is not None:
        loop._ema_update(st.ema, st.generator, rc.train.ema)
    out["loss_g"] = float(total.detach())
    if not math.isfinite(out["loss_g"]):
        raise UsageError(f"step {st.step + 1}: the {stage} stage's loss is not finite; lower "
                         f"the learning rate or check the data")
    return out
