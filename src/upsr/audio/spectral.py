"""STFT helpers and low-frequency replacement (numpy, float64 inside).

The STFT here follows the convention of ``torch.stft`` / ``librosa.stft`` with ``center=True``:
the signal is reflect-padded by ``n_fft // 2`` on both sides, frame ``m`` starts at ``m * hop``
in the padded signal, a periodic Hann window is applied, and there are ``1 + T // hop`` frames.
The inverse is the weighted overlap-add least-squares inverse (Griffin & Lim 1984, eq. 6), so
``istft(stft(x), length=T) == x`` to float precision whenever ``hop <= n_fft // 2``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from upsr.errors import UsageError


def hann(n: int) -> np.ndarray:
    """Periodic Hann window of length ``n`` (``torch.hann_window(n)``; float64)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _check(n_fft: int, hop: int) -> None:
    if n_fft < 2 or hop < 1 or hop > n_fft:
        raise UsageError(f"bad STFT size: n_fft={n_fft}, hop={hop} (need 1 <= hop <= n_fft)")


def frame_count(length: int, hop: int, center: bool = True, n_fft: int = 0) -> int:
    """Number of STFT frames for ``length`` samples (``1 + T // hop`` when centred)."""
    if center:
        return 1 + length // hop
    return 1 + max(length - n_fft, 0) // hop


def stft(x: np.ndarray, n_fft: int = 2048, hop: int = 512, window: np.ndarray | None = None,
         center: bool = True) -> np.ndarray:
    """Short-time Fourier transform.

    x: ``[..., T]`` real. Returns complex128 ``[..., n_fft // 2 + 1, frames]`` (frequency before
    time, as torch/librosa). ``window`` defaults to the periodic Hann window of ``n_fft``.
    Centred frames reflect-pad the edges (numpy reflects repeatedly when ``T < n_fft // 2``).
    """
    _check(n_fft, hop)
    x = np.asarray(x, dtype=np.float64)
    win = hann(n_fft) if window is None else np.asarray(window, dtype=np.float64)
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        x = np.pad(x, pad, mode="reflect" if x.shape[-1] > 1 else "constant")
    if x.shape[-1] < n_fft:  # un-centred and shorter than one frame: zero-pad to one frame
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - x.shape[-1])])
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    spec = np.fft.rfft(frames * win, axis=-1)  # [..., frames, F]
    return np.swapaxes(spec, -1, -2)


def istft(spec: np.ndarray, length: int, n_fft: int = 2048, hop: int = 512,
          window: np.ndarray | None = None, center: bool = True) -> np.ndarray:
    """Inverse of :func:`stft`: windowed overlap-add divided by the summed squared window.

    spec: complex ``[..., n_fft // 2 + 1, frames]``. Returns float64 ``[..., length]``
    (cropped or zero-extended to exactly ``length`` samples).
    """
    _check(n_fft, hop)
    win = hann(n_fft) if window is None else np.asarray(window, dtype=np.float64)
    frames = np.fft.irfft(np.swapaxes(spec, -1, -2), n=n_fft, axis=-1) * win  # [..., N, n_fft]
    n = frames.shape[-2]
    total = n_fft + hop * (n - 1)
    out = np.zeros(frames.shape[:-2] + (total,))
    norm = np.zeros(total)
    wsq = win * win
    for m in range(n):  # plain overlap-add: one vector add per frame
        out[..., m * hop:m * hop + n_fft] += frames[..., m, :]
        norm[m * hop:m * hop + n_fft] += wsq
    start = n_fft // 2 if center else 0
    out = out[..., start:start + length]
    norm = norm[start:start + length]
    out = out / np.where(norm > 1e-10, norm, 1.0)
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return out


@functools.lru_cache(maxsize=64)
def splice_fir(sr: int, cutoff_hz: float, transition_hz: float,
               atten_db: float = 100.0) -> np.ndarray:
    """Linear-phase (type I, odd length) Kaiser-window FIR low-pass used as the splice mask.

    Pass band ends at ``cutoff - transition/2``, stop band starts at ``cutoff + transition/2``;
    the Kaiser design (Kaiser 1974; Oppenheim & Schafer eq. 7.62-7.63) gives ripple
    ``10**(-atten_db/20)`` in both bands. float64 ``[taps]``, read-only (cached: every chunk
    of a file splices at the same cutoff).

    The window-method design of ``scipy.signal.firwin(taps, cutoff, window=("kaiser", beta))``
    with ``kaiserord``'s length and beta, in numpy: importing ``scipy.signal`` costs ~1.5 s and
    ~75 MB, more than the whole splice of an hour. The taps agree with scipy's to 1 ulp
    (numpy's and scipy's Bessel ``i0`` round differently).
    """
    nyq = sr / 2.0
    width = min(max(transition_hz, 1.0), 2.0 * min(cutoff_hz, nyq - cutoff_hz))
    a = abs(atten_db)
    if a < 8:
        raise UsageError(f"splice attenuation {atten_db} dB is too small for the Kaiser formula")
    if a > 50:
        beta = 0.1102 * (a - 8.7)
    elif a > 21:
        beta = 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    else:
        beta = 0.0
    taps = int(math.ceil((a - 7.95) / 2.285 / (np.pi * (width / nyq)) + 1)) | 1
    c = float(cutoff_hz) / nyq
    half = 0.5 * (taps - 1)
    m = np.arange(taps, dtype=np.float64) - half
    ideal = c * np.sinc(c * m)  # ideal low-pass at ``c`` (of Nyquist)
    window = np.i0(beta * np.sqrt(1 - (m / half) ** 2.0)) / np.i0(np.float64(beta))
    h = ideal * window
    h /= np.sum(h)  # unit gain at DC
    h.flags.writeable = False
    return h


def lf_replace(output: np.ndarray, reference: np.ndarray, sr: int, cutoff_hz: float,
               transition_hz: float = 500.0, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Keep the known band: below the cutoff the result is the reference, above it the output.

    AudioSR's post-processing (Liu et al. 2023, "AudioSR", sec. 3.3) replaces the output's STFT
    rows below the input's cut-off by the input's (magnitude and phase). A splice on a
    Hann-windowed STFT is only approximately consistent: the iSTFT of the masked spectrogram is
    a time-varying filter whose modulation leaks ~-58 dB of the other signal into the kept band.
    Here the splice mask is instead the frequency response ``H`` of a linear-phase Kaiser FIR
    low-pass (:func:`splice_fir`, stop band -100 dB) applied to rectangular frames of ``hop``
    samples zero-padded to ``n_fft`` (overlap-add fast convolution, i.e. an STFT whose frames
    are long enough to hold the filter's tail, so the splice is exact linear filtering):

        y = output + h * (reference - output)   (zero-phase: h's delay is removed)

    so ``Y(f) = H(f) X_ref(f) + (1 - H(f)) X_out(f)``: the reference below
    ``cutoff - transition/2`` (to ~-100 dB), the output above ``cutoff + transition/2``, a
    smooth cross-fade in between. AudioSR's single-bin energy-ratio rescaling is left out (our
    restorers keep the input level). ``n_fft`` grows to the next power of two when the filter
    (longer for narrow transitions) does not fit beside ``hop`` samples.

    output, reference: ``[C, T]`` or ``[T]`` at rate ``sr`` and of the same shape (the
    reference is the degraded input resampled to the output rate). Returns the output's shape
    and floating dtype (float64 math inside); exact length.
    """
    out = np.asarray(output)
    ref = np.asarray(reference)
    if out.shape != ref.shape:
        raise UsageError(f"lf_replace: output shape {out.shape} != reference shape {ref.shape}")
    _check(n_fft, hop)
    dtype = out.dtype if out.dtype.kind == "f" else np.dtype(np.float32)
    if cutoff_hz <= 0:
        return out.astype(dtype, copy=True)
    if cutoff_hz >= sr / 2:
        return ref.astype(dtype, copy=True)
    h = splice_fir(sr, cutoff_hz, transition_hz)
    taps = h.size
    size = n_fft
    while size < hop + taps - 1:
        size *= 2
    spec_h = np.fft.rfft(h, size)
    length = out.shape[-1]
    delay = (taps - 1) // 2
    lead = out.shape[:-1]
    n_blocks = -(-length // hop)
    # the difference, float64, written straight into the zero-padded blocks (no other copy)
    blocks = np.zeros(lead + (n_blocks * hop,))
    np.subtract(ref, out, out=blocks[..., :length], dtype=np.float64)
    blocks = blocks.reshape(lead + (n_blocks, hop))
    # Each filtered block spans `size` samples = `spans` hops; output hop-block b collects
    # part q of filtered block b - q. Blocks go through the FFT a group at a time so memory
    # stays bounded for hour-long inputs; one spectrum and one filtered buffer serve every
    # group (the transforms write into them, the filter multiplies in place).
    spans = -(-size // hop)
    acc = np.zeros(lead + (n_blocks + spans, hop))
    group = max(1, (1 << 20) // size)
    rows = min(group, n_blocks)
    spec = np.empty(lead + (rows, size // 2 + 1), np.complex128)
    filt = np.empty(lead + (rows, size))
    for g0 in range(0, n_blocks, group):
        chunk = blocks[..., g0:g0 + group, :]
        n = chunk.shape[-2]
        s = np.fft.rfft(chunk, size, axis=-1, out=spec[..., :n, :])
        s *= spec_h
        filtered = np.fft.irfft(s, size, axis=-1, out=filt[..., :n, :])
        if spans * hop != size:
            filtered = np.concatenate(
                [filtered, np.zeros(filtered.shape[:-1] + (spans * hop - size,))], axis=-1)
        parts = filtered.reshape(filtered.shape[:-1] + (spans, hop))
        for q in range(spans):
            acc[..., g0 + q:g0 + q + n, :] += parts[..., q, :]
    full = acc.reshape(lead + ((n_blocks + spans) * hop,))
    y = full[..., delay:delay + length]
    np.add(y, out, out=y)  # output + filtered difference, float64
    return y.astype(dtype)
