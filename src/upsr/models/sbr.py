"""``sbr``: classical spectral band replication, the restorer that needs no weights.

After the idea of MPEG-4 HE-AAC's SBR (Dietz et al., "Spectral Band Replication, a novel
approach in audio coding", AES 112, 2002): the missing band above the cutoff is rebuilt from the
top octave below it, shifted up, with a spectral envelope extrapolated from that octave.

In the STFT domain (Hann, ``n_fft`` 2048, hop ``n_fft/4``):

1. ``k_c`` = the cutoff bin: the edge of the band the input really has, given per item by
   the engine, or detected here with the same rule (:func:`band_edge_bin`: the lowest bin
   above which less than ``floor_db`` = -70 dB of the energy lies). Bins below it are the
   input's own content and are never changed.
2. Source band: the ``shift`` bins below ``k_c``, with ``shift`` the largest multiple of 4 not
   above ``k_c/2``. Bin ``k >= k_c`` copies the complex value of bin
   ``k_c - shift + (k - k_c) mod shift`` (repeated transposition). Shifting by a multiple of
   ``n_fft/hop = 4`` bins keeps every frame's phase consistent with its neighbours, so the copy
   overlap-adds without phasiness.
3. Envelope: the copied magnitudes are scaled by ``(f_k / f_source)^alpha``, where ``alpha``
   is the amplitude slope per log-frequency measured between the two halves of the source band,
   smoothed over ±``smooth_frames`` frames and clamped to [``alpha_min``, ``alpha_max``] (real
   spectra fall; a rising extrapolation would be harsh), times an extra fall-off of
   ``decay_db_per_octave`` with distance above the cutoff (each repeated copy would otherwise
   restart at the source octave's level), times a gain of ``-level_db``.
   ``level_db`` and ``decay_db_per_octave`` are fitted (``benchmarks/known_band.py fit``) on
   real lossless recordings shipped in Debian packages: 21 drum-kit files from
   ``hydrogen-drumkits`` (FLAC 44.1/48 kHz, 4 per kit: kicks, snares, toms, hats, cymbals,
   claps) and the 8 spoken channel names plus ``Noise.wav`` of ``alsa-utils`` (PCM 48 kHz;
   the "speech" group below), each degraded by an
   FFT brick wall at 8, 11 and 16 kHz and by LAME 64 and 128 kbps CBR (129 pairs with a
   band to rebuild; a 128 kbps mono MP3 at 48 kHz keeps 20.5 kHz and counts as full band),
   restored with both at 0 and the cutoff ``upsr enhance`` picks, and the log-power error of
   the fill against the original (LSD's STFT, up to the original's own band edge) regressed
   on octaves above the cutoff: ``-1.68 dB + 7.47 dB/octave`` over all pairs (speech alone
   ``-1.67 + 4.65``; drums alone ``-1.57 + 7.96``). The defaults cancel it.
4. Bins below ``k_c`` are left exactly as they were, so the low band is never touched; nothing
   is synthesised above ``max_hz`` (22 kHz: inaudible, and a 192 kHz file would otherwise get
   five octaves of invented treble).

Every step is local in time (a frame's output depends on ±``smooth_frames`` frames), so the
receptive field is finite and ``context_s`` covers it: chunked output equals whole-file output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from upsr.models import register
from upsr.models.base import Restorer


@dataclass(frozen=True)
class SbrConfig:
    n_fft: int = 2048
    smooth_frames: int = 4
    alpha_min: float = -2.5
    alpha_max: float = -0.25
    level_db: float = -1.7  # fitted on real recordings (module docstring)
    decay_db_per_octave: float = 7.5  # extra fall-off with distance above the cutoff (fitted)
    floor_db: float = -70.0  # detected cutoff: the band edge (energy above it below this)
    min_cutoff_hz: float = 1000.0
    max_hz: float = 22000.0  # nothing is synthesised above this (inaudible, and costly to fake)
    min_out_rate: int = 44100

    def __post_init__(self) -> None:
        if self.n_fft < 64 or self.n_fft % 4:
            raise ValueError("n_fft must be a multiple of 4, at least 64")
        if self.alpha_min > self.alpha_max:
            raise ValueError("alpha_min must not exceed alpha_max")


def band_edge_bin(power: torch.Tensor, floor_db: float) -> torch.Tensor:
    """The band edge per item (as :func:`upsr.audio.analysis.band_edge_bin`): ``power
    [B, F, frames]`` → the lowest bin ``k`` whose tail energy (bins ``>= k``, summed over
    frames) is below ``floor_db`` of the total; ``F`` when none is (full band or silence)."""
    spec = power.sum(-1).to(torch.float64)  # [B, F]
    tail = spec.flip(-1).cumsum(-1).flip(-1)
    quiet = tail < tail[..., :1] * 10.0 ** (floor_db / 10.0)
    F = spec.shape[-1]
    idx = torch.arange(F, device=power.device).expand_as(spec)
    return torch.where(quiet, idx, torch.full_like(idx, F)).amin(-1)


@register("sbr", "Spectral band replication (classical DSP, no weights)")
class Sbr(Restorer):
    """Band replication with an extrapolated envelope; see the module docstring."""

    config_cls = SbrConfig
    in_rate = None
    out_rate = None
    channels = "mono"
    uses_cutoff = True
    needs_weights = False

    def __init__(self, config: SbrConfig | None = None) -> None:
        super().__init__(config or SbrConfig())
        self.min_out_rate = self.config.min_out_rate
        self.sample_rate: int | None = None  # set by the engine; needed to convert Hz to bins

    @property
    def align(self) -> int:
        return self.config.n_fft // 4  # the STFT hop: chunks must keep the frame grid

    @property
    def context_s(self) -> float:
        c = self.config
        hop = c.n_fft // 4
        # one frame spans n_fft; smoothing reaches smooth_frames hops further; at 44.1 kHz
        reach = c.n_fft + (c.smooth_frames + 1) * hop
        return reach / 44100.0 * 1.25

    def restore(self, x: torch.Tensor, cutoff_hz: torch.Tensor | None = None,
                sample_rate: int | None = None) -> torch.Tensor:
        """``x: [B, T]`` at ``sample_rate`` (or ``self.sample_rate``) → ``[B, T]``."""
        c = self.config
        sr = sample_rate or self.sample_rate or 44100
        n_fft, hop = c.n_fft, c.n_fft // 4
        B, T = x.shape
        if T == 0:
            return x.clone()
        window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
        pad_mode = "reflect" if T > n_fft // 2 else "constant"
        X = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode=pad_mode,
                       return_complex=True)  # [B, F, N]
        F = X.shape[1]
        if cutoff_hz is None:
            # frames that reach into the reflect padding see a kink there (broadband): skip
            inner = X[..., 2:-2] if X.shape[-1] > 8 else X
            kc = band_edge_bin(inner.real.square() + inner.imag.square(), c.floor_db)
        else:
            kc = torch.as_tensor(cutoff_hz, dtype=torch.float64).reshape(-1).expand(B)
            kc = torch.round(kc * n_fft / sr).long()
        kmin = int(math.ceil(c.min_cutoff_hz * n_fft / sr))
        Y = X.clone()
        rebuilt = []
        for b in range(B):
            k = int(kc[b])
            if k < max(kmin, 8) or k >= F - 2:
                continue  # nothing to rebuild (silent/odd input, or already full band)
            top = min(F, int(c.max_hz * n_fft / sr) + 1)
            if top > k:
                Y[b, :top] = self._fill(X[b, :top], k, top)
                rebuilt.append(b)
        if not rebuilt:
            return x.clone()  # nothing added: the input itself, not an STFT round trip
        y = torch.istft(Y, n_fft, hop, window=window, center=True, length=T)
        keep = [b for b in range(B) if b not in rebuilt]
        if keep:
            y[keep] = x[keep]
        return y

    def _fill(self, X: torch.Tensor, kc: int, F: int) -> torch.Tensor:
        """``X [F, frames]`` → the same with bins ``kc..F-1`` rebuilt."""
        c = self.config
        Xt = X.T.contiguous()  # [frames, F]: reductions over bins run along memory
        power = Xt.real.square() + Xt.imag.square()
        m = c.smooth_frames

        def smooth(e: torch.Tensor) -> torch.Tensor:  # [frames, n]: moving average over frames
            padded = torch.cat([e[:1].expand(m + 1, -1), e, e[-1:].expand(m, -1)], 0)
            csum = padded.to(torch.float64).cumsum(0)
            return ((csum[2 * m + 1:] - csum[:-2 * m - 1]) / (2 * m + 1)).to(e.dtype)

        shift = self._shifts(smooth(power[:, :kc]), kc)  # [frames], multiples of 4
        k = torch.arange(kc, F, device=X.device)[None, :]  # [1, K]
        src = kc - shift[:, None] + (k - kc) % shift[:, None]  # [frames, K]
        # envelope slope from the two halves of the top octave below the cutoff
        lo, half = kc // 2, (kc // 2 + kc) // 2
        e = smooth(torch.stack([power[:, lo:half].mean(1), power[:, half:kc].mean(1)], 1))
        tiny = torch.finfo(power.dtype).tiny
        alpha = 0.5 * torch.log((e[:, 1] + tiny) / (e[:, 0] + tiny)) / math.log(
            ((half + kc) / 2.0) / ((lo + half) / 2.0))
        alpha = alpha.clamp(c.alpha_min, c.alpha_max)  # [frames]
        ratio = torch.log(k.to(power.dtype) / src.to(power.dtype))  # [frames, K]
        beta = c.decay_db_per_octave / (20 * math.log10(2))
        decay = torch.exp(-beta * torch.log(k.to(power.dtype) / kc))  # [1, K]
        gain = torch.exp(ratio * alpha[:, None]) * decay * 10 ** (-c.level_db / 20)
        Yt = Xt.clone()
        Yt[:, kc:] = torch.gather(Xt, 1, src) * gain.to(X.real.dtype)
        return Yt.T

    @staticmethod
    def _shifts(power: torch.Tensor, kc: int) -> torch.Tensor:
        """Per frame, the transposition (bins, a multiple of 4 in [kc/4, kc/2]) whose copy best
        lines up with the spectrum's own structure: the lag maximising the cosine similarity
        of the smoothed magnitude spectrum ``power [frames, kc]`` with itself over the top
        quarter below the cutoff. Harmonic spectra then continue their comb; for noise every
        lag scores alike and a small bias picks the largest (the plain octave copy)."""
        frames = power.shape[0]
        lags = torch.arange(max(4, (kc // 4 + 3) // 4 * 4), kc // 2 + 1, 4, device=power.device)
        if lags.numel() == 0:
            return torch.full((frames,), 4, dtype=torch.long, device=power.device)
        mag = power.sqrt()
        width = max(8, kc // 4)
        top = mag[:, kc - width:kc]  # [frames, W]
        idx = (kc - width - lags)[:, None] + torch.arange(width, device=power.device)[None, :]
        other = mag[:, idx]  # [frames, lags, W]
        num = torch.einsum("tw,tlw->tl", top, other)
        den = (top.square().sum(-1, keepdim=True) * other.square().sum(-1)).sqrt() + 1e-30
        scores = num / den + 0.02 * lags[None, :].to(power.dtype) / (kc / 2)
        return lags[scores.argmax(1)]
