"""Reading and writing audio files through libsndfile (``soundfile``).

Everything here works on float32 arrays ``[channels, frames]`` (channel-first, like the rest of
upsr), not soundfile's ``[frames, channels]``. Reading accepts whatever libsndfile decodes (WAV,
FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...); writing keeps the input's bit depth by default and
switches a PCM request to 32-bit float only where PCM would clip (see :func:`choose_subtype`).

``"-"`` as a path means stdin (read) or stdout (write). Every failure a user can cause (a
missing, empty, truncated or non-audio file, non-finite samples) raises :class:`AudioError`
with a one-line message ``"<path>: <problem>"``. Inputs are only ever opened for reading;
outputs are written atomically (a temporary file beside the target, renamed on success).
"""

from __future__ import annotations

import io as _io
import logging
import os
import re
import sys
import tempfile
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from upsr.errors import AudioError, UsageError
from upsr.fsutil import atomic_path, tmp_prefix

log = logging.getLogger("upsr.audio.io")

PathLike = tp.Union[str, os.PathLike]

# Suffix -> (major format, subtype or None = libsndfile's default for that format).
_SUFFIX_FORMATS: dict[str, tuple[str, str | None]] = {
    ".wav": ("WAV", None), ".wave": ("WAV", None), ".flac": ("FLAC", None),
    ".ogg": ("OGG", None), ".oga": ("OGG", None), ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", None), ".aiff": ("AIFF", None), ".aif": ("AIFF", None),
    ".aifc": ("AIFF", None), ".au": ("AU", None), ".snd": ("AU", None), ".caf": ("CAF", None),
    ".w64": ("W64", None), ".rf64": ("RF64", None), ".voc": ("VOC", None),
    ".ircam": ("IRCAM", None), ".sf": ("IRCAM", None), ".nist": ("NIST", None),
    ".sph": ("NIST", None), ".paf": ("PAF", None), ".svx": ("SVX", None), ".iff": ("SVX", None),
    ".mat": ("MAT5", None), ".htk": ("HTK", None), ".xi": ("XI", None), ".avr": ("AVR", None),
    ".sd2": ("SD2", None), ".sds": ("SDS", None), ".pvf": ("PVF", None),
    ".mpc": ("MPC2K", None), ".wve": ("WVE", None),
}

#: Lower-case suffixes of the formats libsndfile reads (headerless ``.raw`` is left out: it
#: cannot be opened without being told its rate, channels and encoding).
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    s for s, (fmt, _) in _SUFFIX_FORMATS.items() if fmt in sf.available_formats()
)

# Formats that can store 32-bit float samples, and the PCM subtypes ordered by depth.
_FLOAT_FORMATS = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "CAF", "AU", "IRCAM",
                            "NIST", "MAT4", "MAT5"})
_PCM = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")
_FLOATS = ("FLOAT", "DOUBLE")
# Formats whose frame count in the header is exact, so that reading fewer frames than announced
# means the file is truncated (MP3/Ogg counts come from scanning and need no such check).
_EXACT_LENGTH = frozenset({"FLAC", "W64", "RF64", "CAF", "AIFF"})


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about a file (cheap: no samples are decoded)."""

    path: str
    format: str            # soundfile major format: "WAV", "FLAC", "MP3", "OGG", "AIFF", ...
    subtype: str | None    # "PCM_16", "PCM_24", "FLOAT", "MPEG_LAYER_III", "VORBIS", ...
    sr: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sr if self.sr else 0.0


@dataclass
class Audio:
    """Decoded audio: ``samples`` float32 ``[channels, frames]`` at ``sr`` Hz, plus its origin."""

    samples: np.ndarray
    sr: int
    format: str | None = None
    subtype: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sr


# ----------------------------------------------------------------------------------- reading


def _name(path: PathLike | tp.BinaryIO) -> str:
    if path == "-":
        return "<stdin>"
    if isinstance(path, (str, os.PathLike)):
        return str(path)
    return str(getattr(path, "name", "<stream>"))


def _check_readable(path: PathLike) -> None:
    """Explain the common failures in words before libsndfile says "System error"."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")


def _libsndfile_reason(exc: Exception) -> str:
    """libsndfile's message without its "Error opening 'x':" prefix, on one line."""
    msg = " ".join(str(exc).split())
    msg = re.sub(r"^Error opening '.*?': ", "", msg)
    msg = re.sub(r"^Error : ", "", msg)
    return msg or type(exc).__name__


def _stdin_source() -> _io.BytesIO:
    """Whole stdin as a seekable buffer (libsndfile needs to seek in most formats)."""
    data = sys.stdin.buffer.read()
    if not data:
        raise AudioError("<stdin>: empty input (0 bytes)")
    return _io.BytesIO(data)


def _open(path: PathLike | tp.BinaryIO) -> sf.SoundFile:
    """Open for reading with one-line errors; ``"-"`` reads stdin; file objects pass through."""
    if path == "-":
        source: tp.Any = _stdin_source()
    elif hasattr(path, "read"):
        source = path
    else:
        _check_readable(tp.cast(PathLike, path))
        source = str(path)
    try:
        f = sf.SoundFile(source, "r")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{_name(path)}: not a readable audio file "
                         f"({_libsndfile_reason(exc)})") from exc
    if isinstance(source, str) and f.format == "WAV":
        short = _wav_missing_bytes(source)
        if short:
            f.close()
            raise AudioError(f"{_name(path)}: truncated (the WAV header announces {short} "
                             f"more bytes of audio than the file holds)")
    return f


def _wav_missing_bytes(path: str) -> int:
    """How many bytes of the RIFF ``data`` chunk are missing from the file (0 if complete).

    libsndfile quietly shortens a truncated WAV to what is there; the chunk's declared size
    (RIFF: little-endian u32 after the ``data`` id) tells. Sizes 0 and 0xFFFFFFFF are the
    placeholders streaming writers leave, so they say nothing.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(12)[:4] != b"RIFF":
            return 0
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            head = fh.read(8)
            chunk, length = head[:4], int.from_bytes(head[4:], "little")
            if chunk == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(length - (size - pos - 8), 0)
            pos += 8 + length + (length & 1)
    return 0


def _header(f: sf.SoundFile, name: str) -> AudioInfo:
    return AudioInfo(path=name, format=f.format, subtype=f.subtype or None, sr=int(f.samplerate),
                     channels=int(f.channels), frames=int(f.frames))


def info(path: PathLike) -> AudioInfo:
    """Header facts of ``path`` without decoding; :class:`AudioError` if it is not audio."""
    with _open(path) as f:
        return _header(f, _name(path))


def is_audio(path: PathLike) -> bool:
    """True when libsndfile can open ``path`` as audio (judged by content, not the suffix)."""
    try:
        info(path)
    except (AudioError, OSError):
        return False
    return True


def _tags(f: sf.SoundFile) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in f.copy_metadata().items() if v}
    except (sf.LibsndfileError, RuntimeError):  # some formats have no string chunk API
        return {}


def _finite_or_raise(block: np.ndarray, name: str, offset: int) -> None:
    if not np.isfinite(block).all():
        bad = int(np.argmax(~np.isfinite(block).all(axis=0)))
        raise AudioError(f"{name}: non-finite sample (NaN or inf) at frame {offset + bad}")


def _read_frames(f: sf.SoundFile, n: int, name: str) -> np.ndarray:
    """Read ``n`` frames as float32 ``[C, n']``; decoder failures become AudioError."""
    try:
        data = f.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{name}: truncated or corrupt audio data "
                         f"({_libsndfile_reason(exc)})") from exc
    return np.ascontiguousarray(data.T)


def _span(f: sf.SoundFile, start: int, frames: int | None, name: str) -> int:
    """Validate ``start``/``frames`` against the file and seek; return the frames to read."""
    if start < 0 or (frames is not None and frames < 0):
        raise UsageError(f"{name}: start and frames must be >= 0 (got {start}, {frames})")
    total = int(f.frames)
    if total <= 0:
        raise AudioError(f"{name}: no audio frames (0 samples)")
    if start > total:
        raise UsageError(f"{name}: start frame {start} is past the end ({total} frames)")
    want = total - start if frames is None else min(frames, total - start)
    if start:
        try:
            f.seek(start)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{name}: cannot seek to frame {start} "
                             f"({_libsndfile_reason(exc)})") from exc
    return want


def read(path: PathLike | tp.BinaryIO, start: int = 0, frames: int | None = None,
         check_finite: bool = True) -> Audio:
    """Decode ``path`` (or stdin for ``"-"``) into float32 ``[channels, frames]``.

    ``start``/``frames`` select a span in frames (``frames=None``: to the end). Raises
    :class:`AudioError` for a missing, empty, non-audio or truncated file and, when
    ``check_finite``, for NaN/inf samples (possible in float WAVs).
    """
    name = _name(path)
    with _open(path) as f:
        want = _span(f, start, frames, name)
        x = _read_frames(f, want, name)
        if f.format in _EXACT_LENGTH and x.shape[1] < want:
            raise AudioError(f"{name}: truncated (header announces {start + want} frames, "
                             f"only {start + x.shape[1]} could be decoded)")
        if x.shape[1] == 0 and want > 0:
            raise AudioError(f"{name}: no audio frames could be decoded")
        if check_finite:
            _finite_or_raise(x, name, start)
        return Audio(samples=x, sr=int(f.samplerate), format=f.format,
                     subtype=f.subtype or None, tags=_tags(f))


def iter_blocks(path: PathLike | tp.BinaryIO, block_frames: int, start: int = 0,
                frames: int | None = None, check_finite: bool = True
                ) -> tp.Iterator[np.ndarray]:
    """Yield consecutive float32 blocks ``[C, n]`` (``n == block_frames`` except the last).

    Concatenated, the blocks equal ``read(path, start, frames).samples``; only one block is in
    memory at a time, so hour-long files stream in constant memory.
    """
    if block_frames <= 0:
        raise UsageError(f"block_frames must be > 0 (got {block_frames})")
    name = _name(path)
    with _open(path) as f:
        left = _span(f, start, frames, name)
        offset = start
        while left > 0:
            block = _read_frames(f, min(block_frames, left), name)
            if block.shape[1] == 0:
                if f.format in _EXACT_LENGTH:
                    raise AudioError(f"{name}: truncated (stopped at frame {offset} of "
                                     f"{offset + left})")
                return
            if check_finite:
                _finite_or_raise(block, name, offset)
            yield block
            offset += block.shape[1]
            left -= block.shape[1]


# ----------------------------------------------------------------------------------- writing


def format_for(path: PathLike) -> tuple[str, str | None]:
    """(major format, default subtype or None) for a path's suffix; UsageError if unknown."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise UsageError(f"{path}: cannot tell the audio format from the suffix "
                         f"{suffix or '(none)'!r}; use .wav, .flac, .ogg, .aiff, ...")
    return _SUFFIX_FORMATS[suffix]


def _peak(samples: np.ndarray) -> float:
    return float(np.max(np.abs(samples))) if samples.size else 0.0


def choose_subtype(samples: np.ndarray | float, format: str, requested: str | None) -> str:
    """The subtype to write ``samples`` (or just their peak, a float) with in ``format``.

    Rule: keep ``requested`` (normally the input's subtype) when ``format`` can store it
    and it is PCM or float (or the native codec of OGG/MP3), else use the format's default
    (PCM_16 for WAV/FLAC/AIFF, VORBIS for OGG, ...). If the result is PCM and the peak
    exceeds 1.0 (PCM would clip), switch to ``"FLOAT"`` where the format can hold float
    (WAV, AIFF, CAF, W64, RF64, ...). FLAC and the lossy formats cannot: they keep their
    subtype, and :func:`write` clips to [-1, 1] with a warning (``upsr enhance`` avoids that
    by limiting the added band, see ``upsr.infer.engine``). A float request (``FLOAT``,
    ``DOUBLE``) in a format without float (FLAC) is a UsageError, never a silent 16-bit file.
    """
    fmt = format.upper()
    if fmt not in sf.available_formats():
        raise UsageError(f"unknown audio format {format!r}")
    default = sf.default_subtype(fmt)
    subtype = requested.upper() if requested else default
    # Lossy or companded codecs (MP3-in-WAV, ULAW, GSM, ADPCM, ...) are not kept: restored
    # audio should not be squeezed back through them. OGG/MP3 only have such subtypes.
    storable = subtype in sf.available_subtypes(fmt) and (
        subtype in _PCM or subtype in _FLOATS or fmt in ("OGG", "MP3"))
    if not storable and subtype in _FLOATS:
        # never fall back silently from float to the default (16-bit PCM for FLAC)
        raise UsageError(f"{fmt} cannot store {subtype.lower()} samples; write WAV "
                         f"(--format wav) or choose a PCM depth (--bit-depth 24)")
    if not storable:
        subtype = default
    if subtype is None:  # pragma: no cover - every writable libsndfile format has a default
        raise UsageError(f"format {fmt} has no default subtype; pass one explicitly")
    peak = samples if isinstance(samples, float) else _peak(np.asarray(samples))
    if subtype in _PCM and peak > 1.0 and fmt in _FLOAT_FORMATS:
        return "FLOAT"
    return subtype


def _as_channels_first(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] < 1:
        raise UsageError(f"audio must be [channels, frames]; got shape {tuple(x.shape)}")
    if x.shape[0] > x.shape[1] and x.shape[0] > 64:
        raise UsageError(f"audio must be [channels, frames]; got {x.shape[0]} channels x "
                         f"{x.shape[1]} frames (transposed?)")
    if not np.isfinite(x).all():
        raise AudioError("refusing to write non-finite samples (NaN or inf)")
    return x


def _resolve(path: PathLike, format: str | None, subtype: str | None
             ) -> tuple[str, str | None]:
    if format is not None:
        return format.upper(), subtype
    if path == "-":
        raise UsageError("writing to stdout ('-') needs an explicit format (e.g. WAV or FLAC)")
    fmt, default = format_for(path)
    return fmt, subtype if subtype is not None else default


def _set_tags(f: sf.SoundFile, tags: dict[str, str] | None) -> None:
    """Copy the tags libsndfile can store (title, artist, album, ...); others are dropped."""
    for key, value in (tags or {}).items():
        if key in sf._str_types and value:
            try:
                setattr(f, key, str(value))
            except (sf.LibsndfileError, RuntimeError):  # the format has no such chunk
                log.debug("tag %s not stored in %s", key, f.format)


def _clip_if_needed(x: np.ndarray, subtype: str, name: str) -> np.ndarray:
    if subtype not in _FLOATS and _peak(x) > 1.0:
        log.warning("%s: peak %.3f exceeds full scale and %s cannot store float; clipping",
                    name, _peak(x), subtype)
        return np.clip(x, -1.0, 1.0)
    return x


def _write_to(target: tp.Any, x: np.ndarray, sr: int, fmt: str, subtype: str,
              tags: dict[str, str] | None) -> None:
    with sf.SoundFile(target, "w", samplerate=int(sr), channels=x.shape[0], format=fmt,
                      subtype=subtype) as f:
        _set_tags(f, tags)
        f.write(np.ascontiguousarray(x.T, dtype=np.float32))


def write(path: PathLike, samples: np.ndarray, sr: int, format: str | None = None,
          subtype: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Write ``samples`` ``[C, T]`` (or ``[T]``) at ``sr`` Hz; return the subtype written.

    ``format`` defaults to the suffix's (required for ``"-"`` = stdout). ``subtype`` is
    resolved by :func:`choose_subtype` (keep the requested depth; FLOAT where PCM would clip).
    The file appears atomically under its name; on any error no partial file is left.
    """
    x = _as_channels_first(samples)
    if sr <= 0:
        raise UsageError(f"sample rate must be > 0 (got {sr})")
    fmt, requested = _resolve(path, format, subtype)
    chosen = choose_subtype(x, fmt, requested)
    x = _clip_if_needed(x, chosen, _name(path))
    try:
        if path == "-":
            buf = _io.BytesIO()
            _write_to(buf, x, sr, fmt, chosen, tags)
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.buffer.flush()
        else:
            with atomic_path(path) as tmp:
                _write_to(str(tmp), x, sr, fmt, chosen, tags)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{_name(path)}: cannot write {fmt}/{chosen} "
                         f"({_libsndfile_reason(exc)})") from exc
    return chosen


class BlockWriter:
    """Stream blocks ``[C, n]`` into one file, atomically, with :func:`write`'s subtype rule.

    Usage::

        with BlockWriter("out.wav", 44100, 2, subtype="PCM_16") as w:
            for block in blocks:
                w.write(block)
        w.subtype  # what was written ("FLOAT" if any block went past full scale)

    Where the chosen subtype is PCM in a format that can hold float, blocks are spooled to a
    float32 W64 file beside the target and transcoded on close, because whether PCM would clip
    is only known after the last block. Otherwise blocks go straight into the temporary file.
    Nothing appears under ``path`` unless the ``with`` block completes; ``"-"`` buffers the file
    in memory and writes it to stdout on close.
    """

    def __init__(self, path: PathLike, sr: int, channels: int, format: str | None = None,
                 subtype: str | None = None, tags: dict[str, str] | None = None) -> None:
        if sr <= 0 or channels <= 0:
            raise UsageError(f"sample rate and channels must be > 0 (got {sr}, {channels})")
        self.path, self.sr, self.channels, self.tags = path, int(sr), int(channels), tags
        self.format, requested = _resolve(path, format, subtype)
        self.subtype = choose_subtype(0.0, self.format, requested)
        self._spool_needed = self.subtype in _PCM and self.format in _FLOAT_FORMATS
        self._peak = 0.0
        self.frames = 0
        self._file: sf.SoundFile | None = None
        self._spool: Path | None = None
        self._atomic: tp.Any = None          # the atomic_path context of the final file
        self._buf: _io.BytesIO | None = None  # the whole file, for stdout

    def _open_final(self, subtype: str) -> sf.SoundFile:
        if self.path == "-":
            self._buf = _io.BytesIO()
            target: tp.Any = self._buf
        else:
            self._atomic = atomic_path(self.path)
            target = str(self._atomic.__enter__())
        f = sf.SoundFile(target, "w", self.sr, self.channels, format=self.format,
                         subtype=subtype)
        _set_tags(f, self.tags)
        return f

    def __enter__(self) -> BlockWriter:
        if self._spool_needed:
            where = Path(self.path).parent if self.path != "-" else None
            fd, name = tempfile.mkstemp(prefix=tmp_prefix(), suffix=".w64", dir=where)
            os.close(fd)
            self._spool = Path(name)
            self._file = sf.SoundFile(name, "w", self.sr, self.channels, format="W64",
                                      subtype="FLOAT")
        else:
            self._file = self._open_final(self.subtype)
        return self

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` ``[C, n]`` (``C`` = the channels given at construction)."""
        x = _as_channels_first(block)
        if x.shape[0] != self.channels:
            raise UsageError(f"block has {x.shape[0]} channels, writer expects {self.channels}")
        if self._file is None:
            raise UsageError("BlockWriter.write called outside its 'with' block")
        self._peak = max(self._peak, _peak(x))
        if not self._spool_needed:
            x = _clip_if_needed(x, self.subtype, _name(self.path))
        self._file.write(np.ascontiguousarray(x.T, dtype=np.float32))
        self.frames += x.shape[1]

    def _transcode(self) -> None:
        """Spool (float32) -> final file, in the subtype the whole signal's peak allows."""
        assert self._spool is not None
        self.subtype = choose_subtype(self._peak, self.format, self.subtype)
        with sf.SoundFile(str(self._spool)) as src, self._open_final(self.subtype) as dst:
            for block in src.blocks(1 << 16, dtype="float32", always_2d=True):
                dst.write(block)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if exc_type is None and self._spool is not None:
                self._transcode()
        except BaseException:
            exc_type, exc, tb = sys.exc_info()
            raise
        finally:
            if self._spool is not None:
                self._spool.unlink(missing_ok=True)
            if self._atomic is not None:  # commits on success, removes the temp file otherwise
                self._atomic.__exit__(exc_type, exc, tb)
        if exc_type is None and self._buf is not None:
            sys.stdout.buffer.write(self._buf.getvalue())
            sys.stdout.buffer.flush()
