"""MP3 encode/decode for degradation, with the decoded signal sample-aligned to the input.

Two encoders, both LAME underneath:

- ``"lame"`` (``lameenc``): explicit CBR bitrate, ABR target, and output sample rate. It writes
  a raw MP3 stream without a LAME/Info tag, so a decoder cannot trim LAME's encoder delay (576
  samples) and mpg123 (libsndfile's MP3 decoder) adds its own 529: the decode is 1105 samples
  late and longer by the delay plus the last frame's padding.
- ``"sndfile"`` (libsndfile's MP3 writer): CBR/ABR at the input rate only, bitrate set through
  ``compression_level = (320 - kbps) / 288`` (its linear map onto MPEG-1's 32..320 kbps). It
  writes the LAME tag, so decodes are usually already aligned (measured: from 64 kbps up; at
  32-56 kbps at 44.1 kHz stereo no tag frame is written, probably because a frame that small
  cannot hold it, and the decode is 1105 samples late again).

Rather than trust those constants, the delay of each configuration (backend, rates, channels,
bitrate, mode) is measured once by cross-correlating a broadband noise probe with its decode
(:func:`codec_delay`), then removed from every decode and the length trimmed/padded to the
input's. The probe, not the user's signal, is correlated because tonal or silent material
gives ambiguous correlation peaks while the codec's delay does not depend on the content.

Sample rates: MPEG-1 Layer III (32/44.1/48 kHz) has bitrates 32..320 kbps, MPEG-2 (16/22.05/
24 kHz) 8..160, MPEG-2.5 (8/11.025/12 kHz) 8..64 in LAME (which clamps higher requests). So
8-24 kbps cannot be coded at 44.1 kHz at all. ``allow_resample=True`` lets LAME choose the
rate as a real encoder would (e.g. 24 kbps stereo -> 8 kHz, 64 -> 24 kHz); with
``allow_resample=False`` the input rate is kept whenever MPEG allows the bitrate there, and
otherwise the highest legal rate not above it is used (24 kbps at 44.1 kHz -> 24 kHz), which is
the least resampling that hits the bitrate exactly. Either way the decoded audio is resampled
back to the input rate with soxr, and ``Mp3Result.encoded_sr`` says what the stream held.
"""

from __future__ import annotations

import functools
import io as _io
import logging
import typing as tp
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from upsr.audio.resample import out_frames, resample
from upsr.errors import AudioError, UsageError

log = logging.getLogger("upsr.audio.codecs")

MP3_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
BACKENDS = ("auto", "sndfile", "lame")

#: LAME's encoder delay (576) plus mpg123's decoder delay (529), in samples at the coded rate;
#: the value :func:`codec_delay` is expected to find for untagged streams.
LAME_DELAY = 576 + 529

#: LAME 3.100's default low-pass per bitrate (lame.c, ``optimum_bandwidth``): the band edge
#: its MP3s show, the fingerprint bitrate estimators look for.
LAME_LOWPASS_HZ = {8: 2000, 16: 3700, 24: 3900, 32: 5500, 40: 7000, 48: 7500, 56: 10000,
                   64: 11000, 80: 13500, 96: 15100, 112: 15600, 128: 17000, 160: 17500,
                   192: 18600, 224: 19400, 256: 19700, 320: 20500}

# MPEG audio sample rates and the Layer III bitrates LAME accepts at each (ISO/IEC 11172-3 for
# MPEG-1, 13818-3 for MPEG-2; MPEG-2.5 is LAME's extension and it caps it at 64 kbps).
_MPEG1_SR = (32000, 44100, 48000)
_MPEG2_SR = (16000, 22050, 24000)
_MPEG25_SR = (8000, 11025, 12000)
_MPEG1_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MPEG25_KBPS = (8, 16, 24, 32, 40, 48, 56, 64)
_LEGAL = {sr: _MPEG1_KBPS for sr in _MPEG1_SR} | {sr: _MPEG2_KBPS for sr in _MPEG2_SR} | {
    sr: _MPEG25_KBPS for sr in _MPEG25_SR}


@dataclass
class Mp3Result:
    """An MP3 round trip: ``samples`` ``[C, T]`` float32 at the input rate, aligned to the
    input and of its length; ``kbps`` measured from the encoded frames' sizes; ``encoded_sr``
    the rate inside the stream; ``lag`` the delay removed (samples at ``encoded_sr``)."""

    samples: np.ndarray
    kbps: float
    encoded_sr: int
    lag: int
    backend: str
    data: bytes = b""


# ------------------------------------------------------------------------- stream inspection


@dataclass(frozen=True)
class Mp3Frame:
    offset: int
    size: int     # bytes, header included
    kbps: int
    sr: int
    samples: int  # samples per channel (1152 MPEG-1, 576 MPEG-2/2.5)
    info: bool    # a Xing/Info/VBRI tag frame (no audio)


_BR_TABLE = {3: (0,) + _MPEG1_KBPS, 2: (0,) + _MPEG2_KBPS, 0: (0,) + _MPEG2_KBPS}
_SR_TABLE = {3: (44100, 48000, 32000),
             2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mp3_frames(data: bytes) -> list[Mp3Frame]:
    """Walk the Layer III frame headers of an MP3 byte stream (ID3v2 tag skipped).

    Header fields per ISO/IEC 11172-3 sec. 2.4.2.3: 11 sync bits, version, layer, bitrate
    index, sample-rate index, padding bit. Frame size = 144 (MPEG-1) or 72 (MPEG-2/2.5)
    * bitrate / sample rate + padding bytes. Bytes that are not a valid header are skipped.
    """
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2: syncsafe 28-bit size after 6 bytes
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        pos = 10 + size
    out: list[Mp3Frame] = []
    n = len(data)
    while pos + 4 <= n:
        h = int.from_bytes(data[pos:pos + 4], "big")
        version, layer = (h >> 19) & 3, (h >> 17) & 3
        br_idx, sr_idx, pad = (h >> 12) & 15, (h >> 10) & 3, (h >> 9) & 1
        if (h >> 21) != 0x7FF or version == 1 or layer != 1 or br_idx in (0, 15) or sr_idx == 3:
            pos += 1
            continue
        kbps, sr = _BR_TABLE[version][br_idx], _SR_TABLE[version][sr_idx]
        mpeg1 = version == 3
        size = (144 if mpeg1 else 72) * kbps * 1000 // sr + pad
        body = data[pos + 4:pos + min(size, 64)]
        info = any(tag in body for tag in (b"Xing", b"Info", b"VBRI"))
        out.append(Mp3Frame(pos, size, kbps, sr, 1152 if mpeg1 else 576, info))
        pos += size
    return out


def measured_kbps(data: bytes) -> tuple[float, int]:
    """(mean bitrate in kbps from the audio frames' byte sizes, the stream's sample rate)."""
    frames = [f for f in mp3_frames(data) if not f.info]
    if not frames:
        raise AudioError("MP3 stream holds no audio frames")
    sr = frames[0].sr
    bits = 8 * sum(f.size for f in frames)
    seconds = sum(f.samples for f in frames) / sr
    return bits / seconds / 1000.0, sr


# ----------------------------------------------------------------------------- encoding


def _legal_rate(sr: int, kbps: int) -> int:
    """The rate to code ``kbps`` at without LAME's own choice: ``sr`` itself if legal, else the
    highest MPEG rate not above ``sr`` that allows ``kbps`` (the lowest legal one if none)."""
    if kbps in _LEGAL.get(sr, ()):
        return sr
    ok = sorted(r for r, rates in _LEGAL.items() if kbps in rates)
    below = [r for r in ok if r <= sr]
    return below[-1] if below else ok[0]


def _check(x: np.ndarray, sr: int, kbps: int, backend: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] not in (1, 2):
        raise UsageError(f"MP3 holds 1 or 2 channels; got audio of shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise AudioError("cannot encode empty audio as MP3")
    if not np.isfinite(x).all():
        raise AudioError("cannot encode non-finite samples (NaN or inf) as MP3")
    if kbps not in MP3_BITRATES:
        raise UsageError(f"MP3 bitrate {kbps} kbps is not one of "
                         f"{', '.join(map(str, MP3_BITRATES))}")
    if backend not in BACKENDS:
        raise UsageError(f"unknown MP3 backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if sr <= 0:
        raise UsageError(f"sample rate must be > 0 (got {sr})")
    return x


def _pick_backend(backend: str, sr: int, kbps: int, allow_resample: bool) -> str:
    sndfile_ok = sr in _MPEG1_SR and kbps in _MPEG1_KBPS and not allow_resample
    if backend == "sndfile" and not sndfile_ok:
        raise UsageError(f"the sndfile MP3 backend codes {kbps} kbps only at 32/44.1/48 kHz, "
                         f"32-320 kbps, without resampling (got {sr} Hz); use backend='lame'")
    if backend == "auto":
        return "lame"  # covers every rate and bitrate; its delay is measured and removed
    return backend


def _encode_lame(x: np.ndarray, sr: int, kbps: int, vbr: bool, out_sr: int | None) -> bytes:
    import lameenc

    enc = lameenc.Encoder()
    enc.silence()
    enc.set_in_sample_rate(int(sr))
    enc.set_channels(x.shape[0])
    enc.set_quality(2)  # LAME -q 2: its recommended high-quality setting
    if out_sr is not None:
        enc.set_out_sample_rate(int(out_sr))
    if vbr:
        enc.set_vbr(3)  # vbr_abr: frame bitrates vary, mean targets kbps
        enc.set_vbr_mean_bitrate_kbps(int(kbps))
    else:
        enc.set_bit_rate(int(kbps))
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")  # lameenc takes int16
    try:
        return bytes(enc.encode(np.ascontiguousarray(pcm.T).tobytes())) + bytes(enc.flush())
    except RuntimeError as exc:
        raise AudioError(f"LAME failed to encode {kbps} kbps at {sr} Hz: {exc}") from exc


def _encode_sndfile(x: np.ndarray, sr: int, kbps: int, vbr: bool) -> bytes:
    buf = _io.BytesIO()
    # libsndfile maps compression_level 0..1 linearly onto 320..32 kbps (MPEG-1); the small
    # offset keeps the rounding on the requested side (measured exact for 32..320).
    level = min(max((320 - kbps) / 288 - 0.001, 0.0), 1.0)
    try:
        sf.write(buf, x.T, int(sr), format="MP3", subtype="MPEG_LAYER_III",
                 bitrate_mode="AVERAGE" if vbr else "CONSTANT", compression_level=level)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"libsndfile failed to encode {kbps} kbps at {sr} Hz: {exc}") from exc
    return buf.getvalue()


def _encode(x: np.ndarray, sr: int, kbps: int, vbr: bool, backend: str,
            allow_resample: bool) -> bytes:
    if backend == "sndfile":
        return _encode_sndfile(x, sr, kbps, vbr)
    return _encode_lame(x, sr, kbps, vbr, None if allow_resample else _legal_rate(sr, kbps))


def encode_mp3(x: np.ndarray, sr: int, kbps: int, vbr: bool = False, backend: str = "auto",
               allow_resample: bool = False) -> bytes:
    """Encode ``x`` ``[C, T]`` (C = 1 or 2, float in [-1, 1]) at ``kbps`` into MP3 bytes.

    ``vbr=False``: constant bitrate, exactly ``kbps``; ``vbr=True``: LAME's average-bitrate
    mode (frame bitrates vary, the mean targets ``kbps``). See the module docstring for
    ``allow_resample`` and the sample rate actually coded.
    """
    x = _check(x, sr, kbps, backend)
    return _encode(x, sr, kbps, vbr, _pick_backend(backend, sr, kbps, allow_resample),
                   allow_resample)


def decode_mp3(data: bytes) -> tuple[np.ndarray, int]:
    """Decode MP3 bytes with libsndfile (mpg123): float32 ``[C, T]`` and the stream's rate.

    No alignment is done here: untagged streams come out delayed (see :data:`LAME_DELAY`).
    """
    if not data:
        raise AudioError("empty MP3 data")
    try:
        y, sr = sf.read(_io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"cannot decode MP3 data ({' '.join(str(exc).split())})") from exc
    return np.ascontiguousarray(y.T), int(sr)


# ----------------------------------------------------------------------------- alignment


def best_lag(y: np.ndarray, ref: np.ndarray, min_lag: int, max_lag: int) -> int:
    """Lag ``d`` in ``[min_lag, max_lag]`` maximising ``sum_t y[t + d] * ref[t]`` (summed over
    channels): how many samples ``y`` is late relative to ``ref``. FFT cross-correlation."""
    n = y.shape[-1] + ref.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(n)))
    spec = np.fft.rfft(y.astype(np.float64), nfft) * np.conj(np.fft.rfft(ref.astype(np.float64),
                                                                         nfft))
    corr = np.fft.irfft(spec.sum(axis=0) if spec.ndim > 1 else spec, nfft)
    lags = np.arange(min_lag, max_lag + 1)
    return int(lags[np.argmax(corr[lags % nfft])])


@functools.lru_cache(maxsize=256)
def codec_delay(backend: str, sr: int, channels: int, kbps: int, vbr: bool,
                allow_resample: bool) -> tuple[int, int]:
    """(delay in samples at the coded rate, coded rate) of one encoder configuration.

    Measured, not assumed: 1.5 s of white noise (broadband, so the correlation peak is unique)
    is encoded and decoded, and the lag of the decode against the probe (resampled to the
    coded rate with soxr, which adds no delay) is found by cross-correlation over
    ``[-64, 4 * 1152]`` samples. Cached per configuration.
    """
    probe = 0.25 * np.random.default_rng(12345).standard_normal((channels, int(1.5 * sr)))
    probe = probe.astype(np.float32)
    data = _encode(probe, sr, kbps, vbr, backend, allow_resample)
    y, coded_sr = decode_mp3(data)
    ref = resample(probe, sr, coded_sr) if coded_sr != sr else probe
    lag = best_lag(y, ref, -64, 4 * 1152)
    log.debug("MP3 %s %d kbps%s at %d Hz: measured delay %d samples", backend, kbps,
              " ABR" if vbr else "", coded_sr, lag)
    return lag, coded_sr


def _align(y: np.ndarray, lag: int, n: int) -> np.ndarray:
    """Drop ``lag`` leading samples (or prepend ``-lag`` zeros) and trim/pad to ``n``."""
    y = y[:, lag:] if lag >= 0 else np.concatenate([np.zeros((y.shape[0], -lag), y.dtype), y], 1)
    if y.shape[1] >= n:
        return y[:, :n]
    return np.concatenate([y, np.zeros((y.shape[0], n - y.shape[1]), y.dtype)], axis=1)


def mp3_roundtrip(x: np.ndarray, sr: int, kbps: int, vbr: bool = False, backend: str = "auto",
                  allow_resample: bool = False, keep_data: bool = False) -> Mp3Result:
    """Encode ``x`` ``[C, T]`` to MP3 and decode it back, aligned and of the same length.

    The returned samples are at ``sr`` with residual lag 0 (the configuration's measured delay
    is removed; decodes at a lower coded rate are resampled back with soxr). ``keep_data``
    also returns the MP3 bytes.
    """
    x = _check(x, sr, kbps, backend)
    name = _pick_backend(backend, sr, kbps, allow_resample)
    data = _encode(x, sr, kbps, vbr, name, allow_resample)
    y, coded_sr = decode_mp3(data)
    lag, probe_sr = codec_delay(name, int(sr), x.shape[0], int(kbps), bool(vbr),
                                bool(allow_resample))
    if probe_sr != coded_sr:  # pragma: no cover - LAME's rate choice depends only on settings
        raise AudioError(f"MP3 coded rate changed between probe ({probe_sr}) and signal "
                         f"({coded_sr})")
    y = _align(y, lag, out_frames(x.shape[1], sr, coded_sr))
    if coded_sr != sr:
        y = _align(resample(y, coded_sr, sr), 0, x.shape[1])
    kbps_measured, _ = measured_kbps(data)
    return Mp3Result(samples=np.ascontiguousarray(y, dtype=np.float32), kbps=kbps_measured,
                     encoded_sr=coded_sr, lag=lag, backend=name,
                     data=data if keep_data else b"")


def mp3_info(data: bytes) -> dict[str, tp.Any]:
    """Summary of an MP3 stream: frames, sample rate, kbps (mean, min, max), tag frame."""
    frames = mp3_frames(data)
    audio = [f for f in frames if not f.info]
    if not audio:
        raise AudioError("MP3 stream holds no audio frames")
    kbps, sr = measured_kbps(data)
    return {"frames": len(audio), "sr": sr, "kbps": kbps,
            "kbps_min": min(f.kbps for f in audio), "kbps_max": max(f.kbps for f in audio),
            "tagged": any(f.info for f in frames)}
