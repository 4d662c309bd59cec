"""AudioSR's pure functions around the networks (Liu et al., 2023, "AudioSR: Versatile Audio
Super-resolution at Scale"; official code haoheliu/versatile_audio_super_resolution @ 034db6c).

Everything here reproduces the official arithmetic (fixture README §10, reference §3.3):

- the 48 kHz front end: reflect-pad 784 samples, un-centred STFT (n_fft 2048, hop 480,
  periodic Hann), magnitude, Slaney mel (256 bands, 20 Hz – 24 kHz), ``log(max(·, 1e-5))``;
- batch preparation: DC removal, peak 0.5, zero padding to a multiple of 5.12 s, the 0.985
  cut-off rule, the order-8 pre-filter of a drawn type around a hard resample, the condition
  mel of the low-passed audio;
- mel replacement below the condition's cut-off mel bin, and the official low-frequency
  post-processing (librosa-default STFT, ratio clamped to 0.8–1.2, phase from the input);
- the cosine schedule buffers and DDIM's tables and step (v-prediction, guidance, ``eta``).

Layouts follow the official code: mels are ``[frames, mel bins]`` inside AudioSR (its VAE sees
``[B, 1, T, 256]`` images), the vocoder takes ``[B, 256, T]``.
"""

from __future__ import annotations

import typing as tp
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SR = 48000
N_FFT = 2048
HOP = 480
N_MELS = 256
FMIN_HZ = 20.0
FMAX_HZ = 24000.0
LOG_FLOOR = 1e-5
PAD = (N_FFT - HOP) // 2             # 784 samples of reflect padding each side
FRAMES_PER_S = 100                   # SR / HOP
SEGMENT_S = 5.12                     # inputs are padded to a multiple of this
SEGMENT_SAMPLES = 245760             # 5.12 s at 48 kHz = 512 frames = 64 latent frames
ROLLOFF = 0.985
FILTER_TYPES = ("butter", "cheby1", "ellip", "bessel")
UNCOND_VALUE = -11.4981              # the unconditional (CFG) condition, a constant latent
POST_N_FFT = 2048                    # librosa.stft defaults of the post-processing
POST_HOP = 512


# ------------------------------------------------------------------------------- front end


_MEL_CACHE: dict[str, torch.Tensor] = {}


def mel_basis(device: torch.device | str = "cpu") -> torch.Tensor:
    """The Slaney mel filterbank ``[256, 1025]`` float32 (librosa's ``mel(sr=48000,
    n_fft=2048, n_mels=256, fmin=20, fmax=24000)``, computed without librosa)."""
    key = str(device)
    if key not in _MEL_CACHE:
        from upsr.nn.mel import mel_filterbank

        fb = mel_filterbank(SR, N_FFT, N_MELS, FMIN_HZ, FMAX_HZ, dtype=np.float32)
        # a normal tensor even when first built under inference_mode (enhance), so that
        # training (the vocoder stage's mel loss) can use the cached basis later
        with torch.inference_mode(False):
            _MEL_CACHE[key] = torch.from_numpy(fb).to(device)
    return _MEL_CACHE[key]


def mel_spectrogram(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mel_spectrogram_train``: ``y [B, N]`` → ``(log_mel [B, 256, T], mag [B, 1025, T])``
    with ``T = 1 + (N + 1568 - 2048) // 480`` (``N / 480`` for multiples of 480).

    Differentiable (training uses it on the fly)."""
    dtype = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
    y = F.pad(y.to(dtype).unsqueeze(1), (PAD, PAD), mode="reflect").squeeze(1)
    window = torch.hann_window(N_FFT, dtype=dtype, device=y.device)
    spec = torch.stft(y, N_FFT, hop_length=HOP, win_length=N_FFT, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    mag = spec.abs()
    mel = torch.matmul(mel_basis(y.device).to(dtype), mag)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)), mag


def pad_frames(spec: torch.Tensor, target_frames: int) -> torch.Tensor:
    """``pad_spec``: zero-pad or cut ``[..., T, F]`` to ``target_frames`` frames; an odd bin
    count loses its last bin (so the 1025-bin STFT keeps 1024, dropping Nyquist)."""
    t = spec.shape[-2]
    if t < target_frames:
        spec = F.pad(spec, (0, 0, 0, target_frames - t))
    elif t > target_frames:
        spec = spec[..., :target_frames, :]
    if spec.shape[-1] % 2:
        spec = spec[..., :-1]
    return spec


def features(waveform: torch.Tensor, target_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``wav_feature_extraction``: ``waveform [B, N]`` → ``(log_mel [B, T, 256],
    stft [B, T, 1024])`` with ``T = target_frames``."""
    log_mel, mag = mel_spectrogram(waveform)
    return (pad_frames(log_mel.transpose(-1, -2), target_frames),
            pad_frames(mag.transpose(-1, -2), target_frames))


# ----------------------------------------------------------------------- batch preparation


def normalize_wav(x: np.ndarray) -> np.ndarray:
    """DC removal, then peak 0.5 (``x / (max|x| + 1e-8) * 0.5``), over the whole array."""
    x = x - np.mean(x)
    x = x / (np.max(np.abs(x)) + 1e-8)
    return x * 0.5


def padded_length(n: int) -> tuple[int, int]:
    """``(samples, frames)`` after AudioSR's padding of ``n`` samples (48 kHz) to the next
    multiple of 5.12 s, computed in floating point exactly as the official code does."""
    duration = n / SR
    pad_duration = duration + (SEGMENT_S - duration % SEGMENT_S) if duration % SEGMENT_S \
        else duration
    return int(SR * pad_duration), int(pad_duration * 100)


def cutoff_bin(spec: torch.Tensor, percentile: float = ROLLOFF) -> int:
    """``_locate_cutoff_freq``: magnitudes ``spec [frames, bins]`` summed over frames and
    cumulated over bins; the largest bin (scanning down, bin 0 excluded) whose cumulative sum is
    still below ``percentile`` × total, else 0. Computed in the input's dtype as torch does."""
    energy = torch.cumsum(torch.sum(torch.abs(spec), dim=0), dim=0)
    below = torch.nonzero(energy[1:] < energy[-1] * percentile)
    return int(below[-1, 0]) + 1 if below.numel() else 0


def cutoff_hz_from_stft(stft: torch.Tensor) -> float:
    """The pipeline's cut-off: bin of the 1024-bin STFT ``[frames, 1024]`` × 24000/1024 Hz;
    below 1 kHz (near-silence) it means "no cut-off": 24 kHz."""
    hz = cutoff_bin(stft, ROLLOFF) / 1024 * 24000
    return 24000.0 if hz < 1000 else hz


def draw_filter_type(rng: np.random.RandomState) -> str:
    """The pre-filter's type as the official ``np.random.choice`` draws it from ``rng``
    (seeding ``np.random.RandomState(s)`` = the official ``np.random.seed(s)``)."""
    return str(rng.choice(list(FILTER_TYPES)))


def lowpass(x: np.ndarray, highcut_hz: float, kind: str, order: int = 8) -> np.ndarray:
    """``audiosr.lowpass.lowpass`` at 48 kHz: ``x [N]`` → float64 ``[N]``.

    The cut-off is truncated to whole Hz; an SOS design (``cheby1``/``ellip``: 0.1 dB ripple,
    60 dB stop band; ``bessel``: phase norm) runs forward-backward, then a hard band limit by
    ``resample_poly`` down to ``int(hi * 48000)`` Hz and back, then forward-backward again.
    """
    from scipy import signal

    from upsr.audio.filters import design_lowpass

    if kind not in FILTER_TYPES:
        raise ValueError(f"unknown AudioSR filter type {kind!r} (one of {FILTER_TYPES})")
    order = min(max(int(order), 2), 10)
    hi_hz = int(highcut_hz)
    sos = design_lowpass(kind, order, hi_hz, SR)
    y = _fit(signal.sosfiltfilt(sos, x), x.shape[-1])
    n = y.shape[-1]
    fs_down = int(hi_hz / (0.5 * SR) * SR)
    hard = signal.resample_poly(signal.resample_poly(y, fs_down, SR), SR, fs_down)
    return _fit(signal.sosfiltfilt(sos, _fit(hard, n)), n)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or cut the last axis to ``n`` samples (``align_length``)."""
    if y.shape[-1] >= n:
        return y[..., :n]
    return np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, n - y.shape[-1])])


@dataclass
class Batch:
    """What ``make_batch_for_super_resolution`` produces for one signal (leading batch dim 1)."""

    waveform: torch.Tensor            # [1, 1, N'] normalised, padded
    log_mel_spec: torch.Tensor        # [1, T, 256]
    stft: torch.Tensor                # [1, T, 1024]
    waveform_lowpass: torch.Tensor    # [1, 1, N']
    lowpass_mel: torch.Tensor         # [1, T, 256]
    cutoff_bin: int
    cutoff_hz: float
    filter_type: str
    duration_s: float


def make_batch(waveform: np.ndarray, filter_type: str | None = None,
               rng: np.random.RandomState | None = None) -> Batch:
    """The chunk entry point ``make_batch_for_super_resolution(None, waveform=...)`` for a
    48 kHz signal ``[1, N]``: normalise, pad, features, cut-off, pre-filter, condition mel.

    ``filter_type`` None draws it from ``rng`` (a fresh global-style draw as the official
    ``np.random.choice``)."""
    w = np.asarray(waveform, dtype=np.float32).reshape(1, -1)
    duration = w.shape[-1] / SR
    samples, frames = padded_length(w.shape[-1])
    w = normalize_wav(w)
    padded = np.zeros((1, samples), dtype=np.float32)
    padded[:, :w.shape[-1]] = w
    wav_t = torch.from_numpy(padded)
    log_mel, stft = features(wav_t, frames)
    bin_ = cutoff_bin(stft[0])
    hz = cutoff_hz_from_stft(stft[0])
    if filter_type is None:
        filter_type = draw_filter_type(rng if rng is not None else np.random.RandomState())
    low = lowpass(padded[0], hz, filter_type).astype(np.float32)[None]
    low_t = torch.from_numpy(low)
    lowpass_mel, _ = features(low_t, frames)
    return Batch(wav_t[None], log_mel, stft, low_t[None], lowpass_mel, bin_, hz, filter_type,
                 duration)


# --------------------------------------------------------------- mel replacement, post-proc


def mel_cutoff_bin(log_mel: torch.Tensor) -> int:
    """The condition's cut-off mel bin: the 0.985 rule on ``exp(log_mel [T, 256])``."""
    return cutoff_bin(torch.exp(log_mel), ROLLOFF)


def mel_replace(samples: torch.Tensor, lowpass_mel: torch.Tensor) -> torch.Tensor:
    """``mel_replace_ops``: per item, the decoded mel ``samples [B, 1, T, 256]`` takes the
    condition ``lowpass_mel [B, T, 256]`` below its cut-off mel bin. Returns a new tensor."""
    out = samples.clone()
    for i in range(out.shape[0]):
        c = mel_cutoff_bin(lowpass_mel[i])
        out[i, ..., :c] = lowpass_mel[i, ..., :c]
    return out


def _stft_librosa(x: np.ndarray) -> np.ndarray:
    """``librosa.stft`` defaults: centred with zero padding, n_fft 2048, hop 512, Hann.
    ``x [N]`` → complex128 ``[1025, 1 + N // 512]``."""
    from upsr.audio.spectral import stft

    half = POST_N_FFT // 2
    return stft(np.pad(np.asarray(x, dtype=np.float64), (half, half)), POST_N_FFT, POST_HOP,
                center=False)


def cutoff_index_hop512(x: np.ndarray) -> int:
    """``_get_cutoff_index_np``: the 0.985 rule on ``|librosa.stft(x)|`` (1025 bins), summed
    in float32 as librosa's complex64 result is."""
    mag = np.abs(_stft_librosa(x).astype(np.complex64))
    energy = np.cumsum(np.sum(mag, axis=-1))
    below = np.nonzero(energy[1:] < energy[-1] * ROLLOFF)[0]
    return int(below[-1]) + 1 if below.size else 0


def postprocess(generated: np.ndarray, lowpass: np.ndarray) -> np.ndarray:
    """The official low-frequency post-processing (``LatentDiffusion.postprocessing``).

    ``generated [B, 1, L']`` (vocoder output), ``lowpass [B, 1, L]`` (the low-passed input);
    both STFTs must have the same frame count (``L // 512 == L' // 512``). Per item: cut-off
    row ``c`` of the input (hop-512 rule); ratio = Σ|X_in[c]| / Σ|X_out[c]| clamped to
    [0.8, 1.2]; output rows below ``c`` become input rows / ratio (complex: phase too);
    inverse STFT to ``L'`` samples. Returns float32 ``[B, 1, L']``."""
    from upsr.audio.spectral import istft

    out = np.array(generated, dtype=np.float32, copy=True)
    for i in range(out.shape[0]):
        y = out[i, 0]
        x = np.asarray(lowpass[i, 0], dtype=np.float32)
        c = cutoff_index_hop512(x)
        s_x = _stft_librosa(x).astype(np.complex64)
        s_o = _stft_librosa(y).astype(np.complex64)
        if s_x.shape != s_o.shape:
            raise ValueError(f"postprocess: frame counts differ ({s_x.shape[-1]} vs "
                             f"{s_o.shape[-1]})")
        ratio = float(np.sum(np.abs(s_x[c])) / np.sum(np.abs(s_o[c])))
        ratio = min(max(ratio, 0.8), 1.2) if np.isfinite(ratio) else 1.0
        s_o[:c] = s_x[:c] / ratio
        out[i, 0] = istft(s_o, y.shape[-1], POST_N_FFT, POST_HOP, center=True)
    return out


# ------------------------------------------------------------------- schedule and DDIM


def cosine_betas(timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """``make_beta_schedule("cosine")`` (Nichol & Dhariwal 2021, eq. 17) in float64 with no
    clipping: β_999 = 1, so ᾱ reaches 0 exactly (zero terminal SNR). The shared
    :meth:`upsr.nn.diffusion.Schedule.cosine` computes it (on the CPU, also when a model is
    being built on the meta device)."""
    from upsr.nn.diffusion import Schedule

    with torch.device("cpu"):
        return Schedule.cosine(timesteps, s).betas.numpy()


def schedule_buffers(betas: np.ndarray, v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """``DDPM.register_schedule``'s twelve float32 buffers (their checkpoint names), computed in
    float64 from ``betas`` and rounded once."""
    b = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - b
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    eps = 1e-10
    with np.errstate(divide="ignore"):
        post_var = (1 - v_posterior) * b * (1.0 - ac_prev) / (1.0 - ac) + v_posterior * b
        table = {
            "betas": b,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / (ac + eps)),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / (ac + eps) - 1),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}


def ddim_timesteps(steps: int, total: int = 1000) -> np.ndarray:
    """``make_ddim_timesteps("uniform")``: ``range(0, total, total // steps) + 1`` (int64).
    When ``total`` is not a multiple of ``steps`` this has more than ``steps`` entries. Where
    the stride divides ``total - 1`` (steps 3, 9, 27, 37, ...) the official list ends at
    ``total``, one past the schedule, and the official sampler fails; that entry is dropped."""
    if not 1 <= steps < total:
        raise ValueError(f"DDIM steps must be in 1..{total - 1} (got {steps})")
    ts = np.arange(0, total, total // steps, dtype=np.int64) + 1
    return ts[ts < total]


@dataclass(frozen=True)
class DDIMTables:
    """DDIM's per-step tables, in sampling order reversed (index 0 = the last step, t = 1)."""

    timesteps: np.ndarray     # int64 [S']
    alphas: torch.Tensor      # float32 ᾱ[t]
    alphas_prev: np.ndarray   # float64 (float32 values) [ᾱ[0], ᾱ[t_{i-1}]...]
    sigmas: np.ndarray        # float64 η·sqrt((1-a_prev)/(1-a)·(1-a/a_prev))


def ddim_tables(alphas_cumprod: torch.Tensor, steps: int, eta: float) -> DDIMTables:
    """``make_ddim_sampling_parameters`` from the float32 ``alphas_cumprod`` buffer.

    ``1 - a`` is formed in float32 (the official code subtracts from a float32 tensor), the rest
    in float64; the last step goes to ᾱ[0] (0.99996), not to 1, with a non-zero σ."""
    ts = ddim_timesteps(steps, alphas_cumprod.shape[0])
    a32 = alphas_cumprod.to(torch.float32)[torch.from_numpy(ts)]
    a_prev = np.asarray([float(alphas_cumprod[0])] + a32[:-1].tolist(), dtype=np.float64)
    # the official expression mixes a float32 tensor with float64 arrays; torch's promotion
    # rules decide each rounding, so it is evaluated with the same operand types
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 on torch's __array_wrap__
        sig = np.sqrt((1 - a_prev) / (1 - a32) * (1 - a32 / a_prev))
    sigmas = eta * np.asarray(sig, dtype=np.float64)
    return DDIMTables(ts, a32, a_prev, sigmas)


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``v_u + s·(v_c − v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)


def ddim_step(x: torch.Tensor, v: torch.Tensor, t: int, index: int, tables: DDIMTables,
              sched: dict[str, torch.Tensor], noise: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``p_sample_ddim`` for a v-prediction ``v`` at DDPM step ``t`` (DDIM ``index``):
    returns ``(x_prev, pred_x0, e_t)``. ε and x₀ use the float32 schedule buffers at ``t``
    (Salimans & Ho 2022: ε = √ᾱ·v + √(1−ᾱ)·x, x₀ = √ᾱ·x − √(1−ᾱ)·v); a_prev and σ come
    from the DDIM tables, each rounded to float32. ``noise`` None means σ·noise = 0."""
    dt = x.dtype
    sa = sched["sqrt_alphas_cumprod"][t].to(dt)
    s1a = sched["sqrt_one_minus_alphas_cumprod"][t].to(dt)
    e_t = sa * v + s1a * x
    pred_x0 = sa * x - s1a * v
    a_prev = torch.tensor(float(tables.alphas_prev[index]), dtype=torch.float32).to(dt)
    sigma = torch.tensor(float(tables.sigmas[index]), dtype=torch.float32).to(dt)
    x_prev = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma ** 2).sqrt() * e_t
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, pred_x0, e_t


Denoise = tp.Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_sample(denoise: Denoise, x_T: torch.Tensor, sched: dict[str, torch.Tensor],
                steps: int, eta: float = 1.0,
                noise: tp.Callable[[int], torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``DDIMSampler.sample`` from ``x_T``: ``denoise(x, t [B] long) -> v`` (guidance already
    applied); ``noise(i)`` gives the noise of the i-th executed step (from the largest t down).
    Returns ``(x_0, pred_x0 of the last step)``."""
    tables = ddim_tables(sched["alphas_cumprod"], steps, eta)
    x = x_T
    pred_x0 = x_T
    n = len(tables.timesteps)
    for i, t in enumerate(tables.timesteps[::-1]):
        index = n - i - 1
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        v = denoise(x, tt)
        z = noise(i) if (noise is not None and eta > 0) else None
        x, pred_x0, _ = ddim_step(x, v, int(t), index, tables, sched, z)
    return x, pred_x0
