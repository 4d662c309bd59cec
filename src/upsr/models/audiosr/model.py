"""``audiosr``: AudioSR (Liu et al., 2023) as a upsr restorer: any input rate → 48 kHz.

Per row ``x [T]`` at 48 kHz (the engine resamples, chunks and splices the low band back):

1. remove DC and scale to peak 0.5 (the official normalisation); the gain is undone at the
   end, so chunks keep the input's level (the official chunked mode re-normalises every
   chunk, which makes level jumps);
2. zero-pad to a multiple of 5.12 s; 48 kHz log-mel (:mod:`pipeline`);
3. the condition: the order-8 pre-filter (type drawn from ``numpy.random.RandomState(seed)``,
   the official draw after ``seed_everything``) at the cut-off — the file's cut-off from the
   engine when it gives one (the same for every chunk and channel), else the official 0.985
   rule on this chunk — its log-mel, VAE-encoded with a posterior *sample* × ``scale_factor``;
   the unconditional branch is the constant −11.4981;
4. sampling from noise: DDIM with ``eta`` (official, default) or DPM-Solver++(2M), both with
   classifier-free guidance on the v-prediction;
5. VAE decode of ``z / scale_factor``, mel replacement below the condition's cut-off mel bin,
   the 48 kHz HiFi-GAN; optionally the official low-frequency post-processing.

Randomness (``noise``): ``positional`` (default) draws every latent frame's noise (condition
posterior, x_T, each sampler step) from a generator keyed by (seed, draw, absolute latent frame)
(:func:`upsr.nn.diffusion.positional_noise`); the engine starts chunks on latent-frame
boundaries (``align`` = 3840 samples) and passes their offsets, so overlapping chunks see the
same noise where they overlap and a result does not depend on batch size or on the other rows
of a batch. ``official`` gives every row a generator seeded with ``seed`` that draws in the
official order (target posterior — shape only —, condition posterior, x_T, one noise per DDIM
step): the official CLI's draws for one file. Either way the channels of a stereo file get the
*same* noise: the added band follows each channel's condition and invents no panning.
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass, field

import numpy as np
import torch

from upsr.models import register
from upsr.models.audiosr import pipeline as P
from upsr.models.audiosr import sampling
from upsr.models.audiosr.unet import UNet, UNetConfig
from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig
from upsr.models.base import Restorer

POSTPROCESS = ("none", "official")
NOISE = ("positional", "official")
STAGES = ("diffusion", "vae", "vocoder")  # the part `upsr train` trains
FULL_BAND_HZ = 0.98 * P.SR / 2  # a cut-off at or above this leaves nothing to restore


@dataclass(frozen=True)
class AudioSRConfig:
    """The published AudioSR (``audiosr_basic`` / ``_speech``) and its inference options.

    ``vae``/``vocoder``/``unet``: overrides of :class:`VAEConfig`, :class:`VocoderConfig`,
    :class:`UNetConfig` (empty = published). ``scale_factor``: the latent scale (stored in the
    official checkpoint; the importer copies it). ``steps``: DDIM steps (official CLI 50) or
    DPM-Solver++ steps; ``guidance``: CFG scale (3.5); ``eta``: DDIM stochasticity (1.0,
    official); ``sampler``: ``ddim`` | ``dpmpp-2m``; ``postprocess``: ``none`` (upsr's own
    low-band splice in the engine does that job) | ``official`` (AudioSR's STFT replacement
    with the 0.8–1.2 ratio clamp); ``context_s``: real audio each side of a chunk;
    ``segment_s``: inputs are zero-padded to a multiple of this (5.12 s = 512 frames, the
    official value; smaller multiples of the latent stride serve tests and tiny training);
    ``noise``: ``positional`` (chunk-consistent) or ``official`` (the official draw order).
    ``stage``: what ``upsr train`` trains (the rest is frozen): ``diffusion`` (the U-Net),
    ``vae`` or ``vocoder`` (fine-tuning stages, :mod:`upsr.train.audiosr_stages`); inference
    ignores it.
    """

    vae: dict[str, tp.Any] = field(default_factory=dict)
    vocoder: dict[str, tp.Any] = field(default_factory=dict)
    unet: dict[str, tp.Any] = field(default_factory=dict)
    scale_factor: float = 1.0
    timesteps: int = 1000
    cosine_s: float = 0.008
    steps: int = 50
    guidance: float = 3.5
    eta: float = 1.0
    seed: int = 42
    sampler: str = "ddim"
    postprocess: str = "none"
    context_s: float = 0.25
    segment_s: float = P.SEGMENT_S
    noise: str = "positional"
    stage: str = "diffusion"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)} (got {self.stage!r})")
        for name in ("vae", "vocoder", "unet"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a table of {name} config keys")
        if self.sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(sampling.SAMPLERS)} "
                             f"(got {self.sampler!r})")
        if self.noise not in NOISE:
            raise ValueError(f"noise must be one of {', '.join(NOISE)} (got {self.noise!r})")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess must be one of {', '.join(POSTPROCESS)} "
                             f"(got {self.postprocess!r})")
        if not 1 <= int(self.steps) < self.timesteps:
            raise ValueError(f"steps must be in 1..{self.timesteps - 1} (got {self.steps})")
        if self.eta < 0 or self.guidance < 0 or self.scale_factor <= 0 or self.context_s < 0:
            raise ValueError("need eta >= 0, guidance >= 0, scale_factor > 0, context_s >= 0")
        stride = (VAEConfig(**self.vae).downsample * UNetConfig(**self.unet).downsample)
        if self.segment_frames < stride or self.segment_frames % stride or \
                abs(self.segment_frames - self.segment_s * P.FRAMES_PER_S) > 1e-6:
            raise ValueError(f"segment_s must be a multiple of {stride / P.FRAMES_PER_S:g} s "
                             f"(the latent stride of {stride} frames); got {self.segment_s}")

    @property
    def segment_frames(self) -> int:
        return int(round(self.segment_s * P.FRAMES_PER_S))

    @classmethod
    def small(cls, **kw: tp.Any) -> AudioSRConfig:
        """The parity fixtures' widths (tests, CPU experiments)."""
        return cls(vae=VAEConfig.small().as_dict(), vocoder=VocoderConfig.small().as_dict(),
                   unet=UNetConfig.small().as_dict(), **kw)


def _convert_official(obj: tp.Any) -> tuple[dict[str, tp.Any], dict[str, tp.Any]]:
    from upsr.models.audiosr.importer import convert_official

    return convert_official(obj)


@register("audiosr", "AudioSR (Liu et al., 2023)", importer=_convert_official)
class AudioSR(Restorer):
    """Latent-diffusion super-resolution to 48 kHz: ``restore(x [B, T] at 48 kHz)``."""

    config_cls = AudioSRConfig
    in_rate = None
    out_rate = 48000
    uses_cutoff = True
    channels = "mono"
    diffusion = True  # upsr train: the diffusion trainer calls training_loss (stage diffusion)
    uses_offsets = True  # the engine passes each row's start (positional noise)

    def __init__(self, config: AudioSRConfig) -> None:
        super().__init__(config)
        self.vae = AutoencoderKL(VAEConfig(**config.vae))
        self.vocoder = Vocoder(VocoderConfig(**config.vocoder))
        self.unet = UNet(UNetConfig(**config.unet))
        sched = P.schedule_buffers(P.cosine_betas(config.timesteps, config.cosine_s))
        for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
            self.register_buffer(name, sched[name], persistent=False)
        self.freeze_for_training()

    @property
    def context_s(self) -> float:  # type: ignore[override]
        return float(self.config.context_s)

    @property
    def align(self) -> int:  # type: ignore[override]
        """Chunks start on latent-frame boundaries: 480 × the VAE's stride (3840 samples)."""
        return P.HOP * VAEConfig(**self.config.vae).downsample

    @property
    def native_s(self) -> float:
        """Inputs are padded to multiples of this: the engine sizes chunks to fill them."""
        return float(self.config.segment_s)

    def schedule(self) -> dict[str, torch.Tensor]:
        return {k: tp.cast(torch.Tensor, getattr(self, k)).cpu() for k in
                ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")}

    # ------------------------------------------------------------------------ pieces

    def condition(self, lowpass_mel: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``lowpass_mel [B, T, 256]`` → ``scale_factor`` × posterior sample ``[B, 16, T/8, 32]``
        (``noise`` of that shape)."""
        posterior = self.vae.encode(lowpass_mel.unsqueeze(1))
        return self.config.scale_factor * posterior.sample(noise=noise)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Guided v-prediction: one U-Net call on the conditional and unconditional halves."""
        g = float(self.config.guidance)
        if g == 1.0:
            return self.unet(torch.cat([x, cond], dim=1), t)
        uncond = torch.full_like(cond, P.UNCOND_VALUE)
        both = self.unet(torch.cat([torch.cat([x, cond], 1), torch.cat([x, uncond], 1)], 0),
                         torch.cat([t, t]))
        v_c, v_u = both.chunk(2)
        return P.guided(v_c, v_u, g)

    def noise_source(self, rows: int, shape: tuple[int, int, int],
                     offsets: tp.Sequence[int] | None) -> tp.Callable[[int], torch.Tensor]:
        """``draw(d) -> [rows, *shape]`` float32 CPU noise; draws are made in the order
        d = 0, 1, 2, … (0: the condition's posterior, 1: x_T, 2 + i: sampler step i).

        ``positional``: latent frame f of a row starting at sample ``offsets[b]`` is keyed by
        its absolute frame ``offsets[b] // align + f``; ``official``: one generator per row
        seeded with ``seed`` (with the official extra draw for the target posterior first)."""
        seed = int(self.config.seed)
        if self.config.noise == "official":
            gens = [torch.Generator().manual_seed(seed) for _ in range(rows)]
            for g in gens:  # the target mel's posterior sample: drawn, only its shape is used
                torch.randn(shape, generator=g)
            return lambda _d: torch.stack([torch.randn(shape, generator=g) for g in gens])
        from upsr.nn.diffusion import positional_noise

        ch, frames, bins = shape
        per = ch * bins
        starts = [int(o) // self.align * per for o in (offsets or [0] * rows)]

        def draw(d: int) -> torch.Tensor:
            flat = positional_noise(seed, starts, frames * per, draw=d, block=per)
            return flat.view(rows, frames, ch, bins).permute(0, 2, 1, 3).contiguous()

        return draw

    def sample_latent(self, cond: torch.Tensor, draw: tp.Callable[[int], torch.Tensor],
                      sampler: str, steps: int) -> torch.Tensor:
        """Noise → latent ``[B, 16, T/8, 32]`` with ``sampler`` (``ddim``/``dpmpp-2m``);
        ``draw`` as :meth:`noise_source` gives (x_T is draw 1)."""
        c = self.config
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} ({', '.join(sampling.SAMPLERS)})")
        dev = cond.device
        x_T = draw(1).to(dev, cond.dtype)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.velocity(x, t, cond).to(x.dtype)

        if sampler == "dpmpp-2m":
            return sampling.dpmpp_2m_sample(denoise, x_T, self.schedule()["alphas_cumprod"],
                                            steps)

        def noise(i: int) -> torch.Tensor:
            return draw(2 + i).to(dev, x_T.dtype)

        x0, _ = P.ddim_sample(denoise, x_T, self.schedule(), steps, float(c.eta), noise=noise)
        return x0

    def decode(self, z: torch.Tensor, lowpass_mel: torch.Tensor) -> torch.Tensor:
        """Latent → mel (replaced below the condition's cut-off) → waveform ``[B, 1, N]``."""
        mel = self.vae.decode(z / self.config.scale_factor)
        mel = P.mel_replace(mel, lowpass_mel.to(mel.dtype))
        return self.vocoder(mel[:, 0].transpose(1, 2))

    # ------------------------------------------------------------------------ training

    @property
    def stage(self) -> str:
        return str(self.config.stage)

    def frozen_parts(self) -> list[torch.nn.Module]:
        """The parts ``config.stage`` does not train."""
        trained = {"diffusion": self.unet, "vae": self.vae, "vocoder": self.vocoder}[self.stage]
        return [p for p in (self.vae, self.vocoder, self.unet) if p is not trained]

    def freeze_for_training(self) -> None:
        """Only the stage's part trains: the diffusion stage the U-Net (the VAE and vocoder,
        imported or stage-trained before, frozen), the ``vae``/``vocoder`` stages their part.
        Frozen parts get no gradient and stay in eval mode (no VAE dropout) whatever
        ``train()`` says. Called at construction."""
        self._frozen = True
        for part in self.frozen_parts():
            part.requires_grad_(False)
            part.eval()

    def train(self, mode: bool = True) -> AudioSR:
        super().train(mode)
        if getattr(self, "_frozen", False):
            for part in self.frozen_parts():
                part.eval()
        return self

    def training_loss(self, hr: torch.Tensor, lr: torch.Tensor,
                      generator: torch.Generator | None = None,
                      cond_dropout: float = 0.1) -> torch.Tensor:
        """The latent-diffusion stage's loss (Liu et al., 2023, §3; LDM with v-prediction,
        Salimans & Ho 2022): ``hr``/``lr`` ``[B, T]`` or ``[B, C, T]`` at 48 kHz (``lr``: the
        simulated band-limited input). Both get ``hr``'s DC removal and peak-0.5 gain; the
        frozen VAE encodes their mels (posterior samples × ``scale_factor``); with probability
        ``cond_dropout`` an item's condition is the unconditional constant (for guidance);
        t ~ U{0..T−1}; MSE between the U-Net's v and the true v. Gradients reach the U-Net
        only (the VAE and vocoder are frozen, as in AudioSR's diffusion training)."""
        from upsr.nn import diffusion as Dn

        hr = hr.reshape(-1, hr.shape[-1])  # [B, C, T] from the trainer: channels → batch
        lr = lr.reshape(-1, lr.shape[-1])
        dev = hr.device
        mean = hr.mean(dim=-1, keepdim=True)
        gain = 0.5 / ((hr - mean).abs().amax(dim=-1, keepdim=True) + 1e-8)
        seg = self.config.segment_frames * P.HOP
        n = -(-hr.shape[-1] // seg) * seg
        pad = (0, n - hr.shape[-1])
        hr_n = torch.nn.functional.pad((hr - mean) * gain, pad)
        lr_n = torch.nn.functional.pad((lr - lr.mean(dim=-1, keepdim=True)) * gain, pad)
        frames = n // P.HOP
        with torch.no_grad():
            mels = P.features(torch.cat([hr_n, lr_n]).float(), frames)[0].unsqueeze(1)
            post = self.vae.encode(mels.to(next(self.vae.parameters()).dtype))
            eps_post = torch.randn(post.mean.shape, generator=generator, device="cpu")
            z = self.config.scale_factor * post.sample(noise=eps_post)
            z0, cond = z.chunk(2)
            drop = torch.rand(z0.shape[0], generator=generator, device="cpu") < cond_dropout
            cond = torch.where(drop.to(dev).view(-1, 1, 1, 1),
                               torch.full_like(cond, P.UNCOND_VALUE), cond)
        t = torch.randint(0, self.config.timesteps, (z0.shape[0],), generator=generator).to(dev)
        noise = torch.randn(z0.shape, generator=generator, device="cpu").to(dev, z0.dtype)
        a = self.schedule()["alphas_cumprod"].to(dev)[t].view(-1, 1, 1, 1).to(z0.dtype)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        v = Dn.target("v", z0, noise, a)
        pred = self.unet(torch.cat([x_t, cond], dim=1), t)
        return torch.mean((pred - v) ** 2)

    # ------------------------------------------------------------------------ restore

    def sample(self, x: torch.Tensor, sampler: str = "ddim", steps: int = 8) -> torch.Tensor:
        """``restore`` with another sampler / step count (the trainer's validation)."""
        return self.restore(x, sampler=sampler, steps=steps)

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None, offsets: tp.Sequence[int] | None = None, *,
                sampler: str | None = None, steps: int | None = None) -> torch.Tensor:
        """``x [B, T]`` at 48 kHz → ``[B, T]`` at 48 kHz. ``cutoff_hz [B]``: the input's cut-off
        (the engine's per-file value); None detects it per row with the official rule.
        ``offsets [B]``: each row's first sample in its file (positional noise; None: 0)."""
        if sample_rate not in (None, P.SR):
            raise ValueError(f"audiosr runs at 48 kHz (got {sample_rate})")
        B, T = x.shape
        out = x.clone()
        if T == 0:
            return out
        xs = x.detach().float().cpu().numpy()
        mean = xs.mean(axis=-1, keepdims=True)
        peak = np.max(np.abs(xs - mean), axis=-1, keepdims=True)
        frames = -(-T // (self.config.segment_frames * P.HOP)) * self.config.segment_frames
        samples = frames * P.HOP
        padded = np.zeros((B, samples), np.float32)
        padded[:, :T] = (xs - mean) / (peak + 1e-8) * 0.5
        _, stft = P.features(torch.from_numpy(padded), frames)
        cut = [float(cutoff_hz[b]) if cutoff_hz is not None else P.cutoff_hz_from_stft(stft[b])
               for b in range(B)]
        rows = [b for b in range(B) if peak[b, 0] > 0 and cut[b] < FULL_BAND_HZ]
        if not rows:
            return out
        kind = P.draw_filter_type(np.random.RandomState(self.config.seed))
        low = np.stack([P.lowpass(padded[b], cut[b], kind) for b in rows]).astype(np.float32)
        lowpass_mel, _ = P.features(torch.from_numpy(low), frames)
        dev = next(self.unet.parameters()).device
        dtype = next(self.unet.parameters()).dtype
        down = VAEConfig(**self.config.vae).downsample
        lat = (self.vae.cfg.embed_dim, frames // down, P.N_MELS // down)
        draw = self.noise_source(len(rows), lat,
                                 None if offsets is None else [offsets[b] for b in rows])
        lm = lowpass_mel.to(dev, dtype)
        cond = self.condition(lm, draw(0).to(dev, dtype))
        z = self.sample_latent(cond, draw, sampler or self.config.sampler,
                               int(steps or self.config.steps))
        wav = self.decode(z, lm)[:, 0].float().cpu()
        if self.config.postprocess == "official":
            wav = torch.from_numpy(P.postprocess(wav[:, None].numpy(), low[:, None]))[:, 0]
        kept = wav[:, :T].numpy()
        for i, b in enumerate(rows):
            y = kept[i] * ((peak[b, 0] + 1e-8) / 0.5) + mean[b, 0]
            out[b] = torch.from_numpy(y.astype(np.float32)).to(out.device, out.dtype)
        return out
