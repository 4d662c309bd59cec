"""Training losses shared by the GAN systems (AEROMamba, Apollo, Wave-U-Mamba).

Spectral reconstruction losses take ``est`` (generator output) and ``ref`` (clean target)
waveforms of the same shape ``[B, T]`` or ``[B, C, T]`` (channels are folded into the batch)
and return a scalar. Adversarial and feature-matching losses take the ``(logits, features)``
lists that every discriminator in :mod:`upsr.nn.discriminators` returns.

How the official recipes combine them (``d_fake`` = logits/features of the generated batch):

- AEROMamba: G = ``aeromamba_stft_loss()`` + ``hinge_g_loss`` + 100 · (4 / (n_layers + 1)) /
  num_D · ``feature_matching_l1`` (MelGAN MSD); D = ``hinge_d_loss``.
- Apollo: G = ``freq_mae`` + ``lsgan_g_loss(reduction="mean")`` +
  ``feature_matching_relative``; D = ``lsgan_d_loss(reduction="mean")``.
- Wave-U-Mamba: G = ``lsgan_g_loss`` (MPD) + ``lsgan_g_loss`` (MSD) + 45 ·
  ``wave_u_mamba_mel_loss()`` + 10 · ``wave_u_mamba_stft_loss()``; D = ``lsgan_d_loss`` (MPD)
  + ``lsgan_d_loss`` (MSD). (Its feature matching is defined but commented out upstream.)
"""

from __future__ import annotations

import typing as tp

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from upsr.nn.discriminators import APOLLO_WINDOWS
from upsr.nn.mel import MelSpectrogram, mel_filterbank

Tensors = tp.Sequence[torch.Tensor]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[..., T]`` → ``[N, T]``, promoted to float32 when half precision: the STFT has no
    float16/bfloat16 kernels on every device, and losses of bf16-autocast generators are
    better computed in float32 anyway."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.reshape(-1, x.shape[-1])


def _check_pair(est: torch.Tensor, ref: torch.Tensor, who: str) -> None:
    if est.shape != ref.shape:
        raise ValueError(f"{who}: estimate {tuple(est.shape)} and reference "
                         f"{tuple(ref.shape)} differ in shape")


# --------------------------------------------------------------------------------------------
# multi-resolution STFT


def a_weighting_fir(sample_rate: float, num_taps: int = 101) -> np.ndarray:
    """Linear-phase FIR approximating the A-weighting curve, ``[num_taps]`` float64.

    The analog A-weighting filter of IEC 61672 (poles at 20.6, 107.7, 737.9 and 12194 Hz, 0 dB
    at 1 kHz) is discretised with the bilinear transform, its magnitude response is sampled at
    512 frequencies in [0, sr/2), and a ``num_taps`` FIR is fitted to it by least squares
    (``firls`` with consecutive sample pairs as band edges). This is the perceptual pre-filter of
    Wright & Välimäki, "Perceptual loss function for neural modelling of audio systems", ICASSP
    2020, in the form auraloss's ``FIRFilter(filter_type="aw")`` builds it.
    """
    if num_taps % 2 == 0:
        raise ValueError(f"a_weighting_fir: num_taps must be odd (got {num_taps})")
    f1, f2, f3, f4 = 20.598997, 107.65265, 737.86223, 12194.217
    gain_1k_db = 1.9997
    w1, w2, w3, w4 = (2 * np.pi * f for f in (f1, f2, f3, f4))
    num = [w4**2 * 10 ** (gain_1k_db / 20), 0, 0, 0, 0]
    den = np.polymul([1, 2 * w4, w4**2], [1, 2 * w1, w1**2])
    den = np.polymul(np.polymul(den, [1, w3]), [1, w2])
    b, a = scipy.signal.bilinear(num, den, fs=sample_rate)
    freqs, response = scipy.signal.freqz(b, a, worN=512, fs=sample_rate)
    return scipy.signal.firls(num_taps, freqs, np.abs(response), fs=sample_rate)


class STFTLoss(nn.Module):
    """Spectral convergence + log-magnitude loss at one STFT resolution (Arik et al., "Fast
    spectrogram inversion using multi-head CNNs", IEEE SPL 2019, eqs. 6–7; Yamamoto et al.,
    "Parallel WaveGAN", ICASSP 2020, eqs. 2–4).

    With ``S = sqrt(max(|STFT|², power_floor))`` (centred STFT, reflect padding, periodic Hann of
    ``win_length`` zero-padded to ``n_fft``), optionally mapped through a mel filterbank
    ``M = fb @ S`` (``scale="mel"``) and computed on A-weighted signals
    (``perceptual_weighting``):

        sc  = ‖S_ref − S_est‖_F / ‖S_ref‖_F        (Frobenius norms over the whole batch)
        mag = mean |log S_ref − log S_est|

    and the loss is ``sc_weight · sc + mag_weight · mag``. :meth:`terms` returns ``(sc, mag)``.
    ``sc_denominator="estimate"`` divides by ``‖S_est‖_F`` instead: what Wave-U-Mamba's official
    training computes, because it passes (target, estimate) to auraloss in swapped order.
    """

    window: torch.Tensor

    def __init__(
        self,
        n_fft: int,
        hop_length: int,
        win_length: int,
        sc_weight: float = 1.0,
        mag_weight: float = 1.0,
        power_floor: float = 1e-7,
        scale: str | None = None,
        n_mels: int = 128,
        sample_rate: float | None = None,
        perceptual_weighting: bool = False,
        sc_denominator: str = "target",
    ) -> None:
        super().__init__()
        if scale not in (None, "mel"):
            raise ValueError(f"STFTLoss: scale must be None or 'mel' (got {scale!r})")
        if sc_denominator not in ("target", "estimate"):
            raise ValueError("STFTLoss: sc_denominator must be 'target' or 'estimate'")
        if (scale or perceptual_weighting) and sample_rate is None:
            raise ValueError("STFTLoss: sample_rate is needed for mel scale or A-weighting")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.sc_weight, self.mag_weight = sc_weight, mag_weight
        self.power_floor = power_floor
        self.sc_denominator = sc_denominator
        # float64 buffers, cast per call: float64 inputs get an exact float64 computation.
        self.register_buffer("window", torch.hann_window(win_length, dtype=torch.float64),
                             persistent=False)
        self.fb: torch.Tensor | None
        if scale == "mel":
            assert sample_rate is not None
            fb = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, dtype=np.float64))
            self.register_buffer("fb", fb, persistent=False)
        else:
            self.fb = None
        self.fir: torch.Tensor | None
        if perceptual_weighting:
            assert sample_rate is not None
            taps = torch.from_numpy(a_weighting_fir(sample_rate))
            self.register_buffer("fir", taps.view(1, 1, -1), persistent=False)
        else:
            self.fir = None

    def magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [N, T]`` → (mel-)magnitude ``[N, bins, frames]`` after optional A-weighting."""
        if self.fir is not None:
            fir = self.fir.to(x.dtype)
            # Zero padding of half the (symmetric) filter keeps the length, as auraloss does.
            x = F.conv1d(x.unsqueeze(1), fir, padding=fir.shape[-1] // 2).squeeze(1)
        spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length,
                          self.window.to(x.dtype), center=True, pad_mode="reflect",
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mag = power.clamp_min(self.power_floor).sqrt()
        if self.fb is not None:
            mag = torch.matmul(self.fb.to(mag.dtype), mag)
        return mag

    def terms(self, est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(est, ref, "STFTLoss")
        s_est = self.magnitude(_flat(est))
        s_ref = self.magnitude(_flat(ref))
        denom = s_ref if self.sc_denominator == "target" else s_est
        sc = torch.linalg.vector_norm(s_ref - s_est) / torch.linalg.vector_norm(denom)
        mag = (torch.log(s_ref) - torch.log(s_est)).abs().mean()
        return sc, mag

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        sc, mag = self.terms(est, ref)
        return self.sc_weight * sc + self.mag_weight * mag


class MultiResolutionSTFTLoss(nn.Module):
    """Mean of :class:`STFTLoss` over several (n_fft, hop, window) resolutions (Yamamoto et al.,
    "Parallel WaveGAN", ICASSP 2020, eq. 5). Keyword arguments go to every :class:`STFTLoss`.

    ``est, ref: [B, T]`` or ``[B, C, T]`` → scalar; :meth:`terms` gives the mean ``(sc, mag)``.
    """

    def __init__(self, fft_sizes: tp.Sequence[int], hop_sizes: tp.Sequence[int],
                 win_lengths: tp.Sequence[int], **kwargs: tp.Any) -> None:
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0:
            raise ValueError("MultiResolutionSTFTLoss: fft_sizes, hop_sizes and win_lengths "
                             "must be non-empty and of equal length")
        self.losses = nn.ModuleList(
            [STFTLoss(n, h, w, **kwargs) for n, h, w in zip(fft_sizes, hop_sizes, win_lengths)])

    def terms(self, est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [tp.cast(STFTLoss, loss).terms(est, ref) for loss in self.losses]
        n = len(pairs)
        return sum(p[0] for p in pairs) / n, sum(p[1] for p in pairs) / n  # type: ignore

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return torch.stack([loss(est, ref) for loss in self.losses]).mean()


def aeromamba_stft_loss() -> MultiResolutionSTFTLoss:
    """AEROMamba's MR-STFT: FFT 1024/2048/512, hops 120/240/50, windows 600/1200/240, Hann,
    power floor 1e-7, ``0.5 · sc + 0.5 · mag`` (AERO ``stft_loss.py`` with factors 0.5)."""
    return MultiResolutionSTFTLoss([1024, 2048, 512], [120, 240, 50], [600, 1200, 240],
                                   sc_weight=0.5, mag_weight=0.5, power_floor=1e-7)


def wave_u_mamba_stft_loss(sc_denominator: str = "target") -> MultiResolutionSTFTLoss:
    """Wave-U-Mamba's MR-STFT (auraloss ``MultiResolutionSTFTLoss`` with ``scale="mel"``,
    ``n_bins=128``, ``perceptual_weighting=True``, ``sample_rate=48000``): FFT 1024/2048/8192,
    hops 256/512/2048, window = FFT size, 128 Slaney mel bins over mel magnitudes, 101-tap
    A-weighting pre-filter, power floor 1e-8, ``sc + mag``. The recipe weights it by 10.
    Pass ``sc_denominator="estimate"`` for the official code's swapped argument order."""
    return MultiResolutionSTFTLoss([1024, 2048, 8192], [256, 512, 2048], [1024, 2048, 8192],
                                   power_floor=1e-8, scale="mel", n_mels=128,
                                   sample_rate=48000, perceptual_weighting=True,
                                   sc_denominator=sc_denominator)


# --------------------------------------------------------------------------------------------
# mel L1 and Apollo's frequency MAE


class MelL1Loss(nn.Module):
    """L1 distance between mel spectrograms, ``mean |M(ref) − M(est)|`` (Kong et al.,
    "HiFi-GAN", NeurIPS 2020, eq. 2), differentiable through the STFT.

    ``log_floor=None`` compares the mel spectrograms as they are (Wave-U-Mamba's power mel);
    a number compares ``log(max(M, log_floor))`` (HiFi-GAN's log-mel with 1e-5).
    Other arguments as :class:`upsr.nn.mel.MelSpectrogram`. ``est, ref: [..., T]`` → scalar.
    """

    def __init__(self, sr: float, n_fft: int, hop_length: int, win_length: int | None = None,
                 n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None,
                 center: bool = False, power: float = 2.0,
                 log_floor: float | None = None) -> None:
        super().__init__()
        self.mel = MelSpectrogram(sr, n_fft, hop_length, win_length, n_mels, fmin, fmax,
                                  center=center, power=power)
        self.log_floor = log_floor

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        _check_pair(est, ref, "MelL1Loss")
        m_est, m_ref = self.mel(est), self.mel(ref)
        if self.log_floor is not None:
            m_est = m_est.clamp_min(self.log_floor).log()
            m_ref = m_ref.clamp_min(self.log_floor).log()
        return (m_ref - m_est).abs().mean()


def wave_u_mamba_mel_loss() -> MelL1Loss:
    """Wave-U-Mamba's mel term (weight 45 in its recipe): librosa-default power mel, 80 bins,
    n_fft = window 2048, hop 512, un-centred, 0–24 kHz at 48 kHz — but with gradients, which the
    official code (numpy/librosa on detached tensors) lacks."""
    return MelL1Loss(48000, 2048, 512, 2048, n_mels=80, center=False, power=2.0)


def freq_mae(est: torch.Tensor, ref: torch.Tensor,
             windows: tp.Sequence[int] = APOLLO_WINDOWS,
             eps: float = float(torch.finfo(torch.float32).eps)) -> torch.Tensor:
    """Apollo's normalised multi-window magnitude MAE (Li & Luo, ICASSP 2025; ``freq_MAE``):

        mean over w of  mean| |S_w(est)| − |S_w(ref)| | / (mean |S_w(ref)| + eps)

    with ``S_w`` a centred STFT (Hann(w), hop w/2, reflect). ``est, ref: [..., T]`` → scalar.
    """
    _check_pair(est, ref, "freq_mae")
    e, r = _flat(est), _flat(ref)
    total = e.new_zeros(())
    for win in windows:
        window = torch.hann_window(win, device=e.device, dtype=e.dtype)
        s_e = torch.stft(e, win, win // 2, window=window, center=True, pad_mode="reflect",
                         return_complex=True).abs()
        s_r = torch.stft(r, win, win // 2, window=window, center=True, pad_mode="reflect",
                         return_complex=True).abs()
        total = total + (s_e - s_r).abs().mean() / (s_r.mean() + eps)
    return total / len(windows)


# --------------------------------------------------------------------------------------------
# feature matching and adversarial losses


def _reduce(terms: list[torch.Tensor], reduction: str) -> torch.Tensor:
    if not terms:
        raise ValueError("adversarial loss: no discriminator outputs")
    if reduction == "sum":
        return torch.stack(terms).sum()
    if reduction == "mean":
        return torch.stack(terms).mean()
    raise ValueError(f"reduction must be 'sum' or 'mean' (got {reduction!r})")


def feature_matching_l1(fake: tp.Sequence[Tensors], real: tp.Sequence[Tensors]) -> torch.Tensor:
    """``Σ_d Σ_l mean |f_dl(fake) − f_dl(real)|`` with real features detached (Larsen et al.
    2016; Kumar et al., "MelGAN", NeurIPS 2019, eq. 4). Weights are the caller's: AEROMamba
    uses ``100 · 4/(n_layers+1) / num_D``, HiFi-GAN 2."""
    terms = [(f - r.detach()).abs().mean()
             for fd, rd in zip(fake, real, strict=True) for f, r in zip(fd, rd, strict=True)]
    return _reduce(terms, "sum")


def feature_matching_relative(fake: tp.Sequence[Tensors], real: tp.Sequence[Tensors],
                              eps: float = 1e-8) -> torch.Tensor:
    """Apollo's relative feature matching: mean over discriminators × layers of
    ``mean|f(fake) − f(real)| / (mean|f(real)| + eps)``, real features detached (Li & Luo 2025;
    ``MultiFrequencyGenLoss``)."""
    terms = [(f - r.detach()).abs().mean() / (r.detach().abs().mean() + eps)
             for fd, rd in zip(fake, real, strict=True) for f, r in zip(fd, rd, strict=True)]
    return _reduce(terms, "mean")


def hinge_d_loss(real: Tensors, fake: Tensors, reduction: str = "sum") -> torch.Tensor:
    """Hinge discriminator loss ``Σ_d mean relu(1 − D(real)) + mean relu(1 + D(fake))`` (Lim &
    Ye, "Geometric GAN", 2017, eq. 9; MelGAN eq. 1; AEROMamba sums over scales)."""
    return _reduce([F.relu(1 - r).mean() + F.relu(1 + f).mean()
                    for r, f in zip(real, fake, strict=True)], reduction)


def hinge_g_loss(fake: Tensors, reduction: str = "sum") -> torch.Tensor:
    """Generator side of the hinge game as AERO/AEROMamba train it:
    ``Σ_d mean relu(1 − D(fake))`` (MelGAN's own generator term is ``−mean D(fake)``)."""
    return _reduce([F.relu(1 - f).mean() for f in fake], reduction)


def lsgan_d_loss(real: Tensors, fake: Tensors, reduction: str = "sum") -> torch.Tensor:
    """Least-squares discriminator loss ``Σ_d mean (1 − D(real))² + mean D(fake)²`` (Mao et
    al., "LSGAN", ICCV 2017, eq. 9 with a=0, b=c=1; HiFi-GAN eq. 1). Apollo averages over its
    discriminators (``reduction="mean"``), HiFi-GAN/Wave-U-Mamba sum."""
    return _reduce([(1 - r).square().mean() + f.square().mean()
                    for r, f in zip(real, fake, strict=True)], reduction)


def lsgan_g_loss(fake: Tensors, reduction: str = "sum") -> torch.Tensor:
    """Least-squares generator loss ``Σ_d mean (1 − D(fake))²`` (Mao et al. 2017)."""
    return _reduce([(1 - f).square().mean() for f in fake], reduction)
