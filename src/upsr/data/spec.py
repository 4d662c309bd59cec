"""Degradation specs: how a clean signal is turned into a restorer's training input.

One grammar serves ``upsr degrade`` flags, recipes' on-the-fly data and
:func:`upsr.data.degrade.degrade_array`::

    --lowpass TYPE:ORDER:CUTOFF     e.g. cheby1:8:4000   cheby1,ellip,butter,boxcar:2-10:2k-16k
    --mp3 KBPS[,KBPS...]            e.g. 64              24,32,48,64,96,128     (or 24-128)
    --resample HZ[,HZ...]           e.g. 11025           11.025k                8k,16k
    --segment SECONDS               e.g. 2.5

Every field is a *value*, a *set* (``a,b,c``, drawn uniformly) or an inclusive *range*
(``lo-hi``); a field is never a mix of both. Draws:

- integer ranges (filter order) draw uniformly among the integers ``lo..hi``;
- frequency ranges (cut-off) draw uniformly to 1 Hz among ``lo..hi`` — uniform, not
  log-uniform, as NU-Wave 2 (cut-off U[3, 24] kHz) and the AudioSR/NVSR recipe (2-16 kHz) do;
- an MP3 range means the standard MPEG bitrates inside it (``24-128`` = {24, 32, 40, ..., 128});
- ``--resample`` takes values or sets only (rates are standard numbers, not drawn from a range).

Frequencies accept a ``k`` suffix (``2k``, ``11.025k``; parsed exactly, so ``11.025k`` is 11025
Hz). Every error is a :class:`~upsr.errors.UsageError` that names the option and the field.
The whole spec also has a one-string form, ``"lowpass=cheby1:8:4k mp3=64,128 resample=11025"``
(``;`` or spaces between items), which :func:`parse_spec` reads and ``str(spec)`` writes.

:meth:`DegradeSpec.draw` consumes the generator in a fixed pattern (type, order, cut-off, bitrate,
rate; one call each, even for fixed values), so a pair's parameters depend only on its seed.

The steps compose in the order given: the order of the flags on the command line, of the items
in the string form, of the keys in a recipe's ``[degrade]`` table (``mp3=64 lowpass=...`` codes
first and filters after). :attr:`DegradeSpec.steps` records it; the default is low-pass, MP3,
resample.
"""

from __future__ import annotations

import math
import re
import typing as tp
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from upsr.errors import UsageError

#: Filter families a low-pass spec may name (those of :mod:`upsr.audio.filters`).
LOWPASS_KINDS = ("butter", "cheby1", "cheby2", "ellip", "bessel", "boxcar")
#: Filter orders :func:`upsr.audio.filters.design_lowpass` accepts.
ORDER_MIN, ORDER_MAX = 1, 16
#: Bitrates (kbps) an MPEG-1/2/2.5 Layer III encoder offers; the set :mod:`upsr.audio.codecs`
#: encodes (MPEG-1 32-320 at 32/44.1/48 kHz, MPEG-2/2.5 8-160 at the lower rates).
MP3_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

Value = tp.Union[int, float, str]


# ------------------------------------------------------------------------------------ fields


@dataclass(frozen=True)
class Choice:
    """A fixed value (one element) or a set drawn uniformly."""

    values: tuple[Value, ...]

    def draw(self, rng: np.random.Generator) -> Value:
        return self.values[int(rng.integers(len(self.values)))]

    @property
    def low(self) -> Value:
        return min(self.values)  # type: ignore[type-var]

    @property
    def high(self) -> Value:
        return max(self.values)  # type: ignore[type-var]

    def __contains__(self, v: object) -> bool:
        return v in self.values

    def __str__(self) -> str:
        return ",".join(_fmt(v) for v in self.values)


@dataclass(frozen=True)
class IntRange:
    """Integers ``lo..hi`` inclusive, drawn uniformly (frequencies use it too, in whole Hz)."""

    lo: int
    hi: int
    freq: bool = False  # written back with a k suffix where exact

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.lo, self.hi + 1))

    @property
    def low(self) -> int:
        return self.lo

    @property
    def high(self) -> int:
        return self.hi

    def __contains__(self, v: object) -> bool:
        return isinstance(v, (int, np.integer)) and self.lo <= int(v) <= self.hi

    def __str__(self) -> str:
        return f"{_fmt(self.lo, self.freq)}-{_fmt(self.hi, self.freq)}"


Field = tp.Union[Choice, IntRange]


def _fmt(v: Value, freq: bool = False) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if freq and isinstance(v, int) and v >= 1000 and v % 1000 == 0:
        return f"{v // 1000}k"
    return str(v)


def _number(text: str, where: str, allow_k: bool) -> Decimal:
    t = text.strip().lower()
    scale = Decimal(1)
    if allow_k and t.endswith("k"):
        t, scale = t[:-1], Decimal(1000)
    try:
        d = Decimal(t) * scale
    except InvalidOperation:
        raise UsageError(f"{where}: {text.strip()!r} is not a number") from None
    if not d.is_finite():
        raise UsageError(f"{where}: {text.strip()!r} is not a finite number")
    return d


def _split(text: str, where: str) -> tuple[list[str], bool]:
    """Split a field into its items; (items, is_range). Sets and ranges do not mix."""
    t = text.strip()
    if not t:
        raise UsageError(f"{where}: empty (give a value, a set a,b,c or a range lo-hi)")
    if "," in t:
        items = [s.strip() for s in t.split(",")]
        if any(not s for s in items):
            raise UsageError(f"{where}: empty item in set {t!r}")
        if any("-" in s.lstrip("-") for s in items):
            raise UsageError(f"{where}: {t!r} mixes a set and a range (give one or the other)")
        return items, False
    m = re.fullmatch(r"([^-]+)-([^-]+)", t)
    if m:
        return [m.group(1), m.group(2)], True
    return [t], False


def _unique(values: tp.Iterable[Value]) -> tuple[Value, ...]:
    return tuple(dict.fromkeys(values))


def parse_int_field(text: str, where: str, lo: int, hi: int) -> Field:
    """Integers in ``[lo, hi]``: value, set or inclusive range."""
    items, is_range = _split(text, where)
    vals: list[int] = []
    for s in items:
        d = _number(s, where, allow_k=False)
        if d != d.to_integral_value():
            raise UsageError(f"{where}: {s.strip()!r} is not a whole number")
        v = int(d)
        if not lo <= v <= hi:
            raise UsageError(f"{where}: {v} is outside {lo}..{hi}")
        vals.append(v)
    if is_range:
        if vals[0] > vals[1]:
            raise UsageError(f"{where}: range {text.strip()!r} runs backwards")
        return IntRange(vals[0], vals[1])
    return Choice(_unique(vals))


def parse_freq_field(text: str, where: str, allow_range: bool = True,
                     integer: bool = False) -> Field:
    """Frequencies in Hz (``k`` suffix allowed), > 0: value, set or (if allowed) range.

    A range draws whole Hz uniformly, so its ends are rounded inwards to whole Hz.
    """
    items, is_range = _split(text, where)
    if is_range and not allow_range:
        raise UsageError(f"{where}: ranges are not allowed here; give a value or a set a,b,c")
    vals: list[Decimal] = []
    for s in items:
        d = _number(s, where, allow_k=True)
        if d <= 0:
            raise UsageError(f"{where}: {s.strip()!r} must be above 0 Hz")
        if integer and d != d.to_integral_value():
            raise UsageError(f"{where}: {s.strip()!r} is not a whole number of Hz")
        vals.append(d)
    if is_range:
        lo, hi = math.ceil(vals[0]), math.floor(vals[1])
        if vals[0] > vals[1] or lo > hi:
            raise UsageError(f"{where}: range {text.strip()!r} runs backwards or holds no whole Hz")
        return IntRange(lo, hi, freq=True)
    return Choice(_unique(int(d) if d == d.to_integral_value() else float(d) for d in vals))


# ------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class LowpassSpec:
    """``TYPE:ORDER:CUTOFF``; ``kind`` holds filter names, ``cutoff_hz`` Hz."""

    kind: Choice
    order: Field
    cutoff_hz: Field

    def draw(self, rng: np.random.Generator) -> dict[str, tp.Any]:
        kind = str(self.kind.draw(rng))
        order: int | None = int(self.order.draw(rng))
        cutoff = self.cutoff_hz.draw(rng)
        if kind == "boxcar":  # an ideal brick wall has no order; the draw is still consumed
            order = None
        return {"lowpass_type": kind, "lowpass_order": order, "lowpass_cutoff_hz": cutoff}

    def __str__(self) -> str:
        cut = self.cutoff_hz
        text = str(cut) if isinstance(cut, IntRange) else ",".join(
            _fmt(v, freq=True) for v in cut.values)
        return f"{self.kind}:{self.order}:{text}"


@dataclass(frozen=True)
class Mp3Spec:
    """Bitrates in kbps, drawn uniformly from the set."""

    kbps: Choice

    def draw(self, rng: np.random.Generator) -> dict[str, tp.Any]:
        return {"mp3_kbps": int(self.kbps.draw(rng))}

    def __str__(self) -> str:
        return str(self.kbps)


@dataclass(frozen=True)
class ResampleSpec:
    """Target rates in Hz (the degraded side's rate), drawn uniformly from the set."""

    sr: Choice

    def draw(self, rng: np.random.Generator) -> dict[str, tp.Any]:
        return {"resample_hz": int(self.sr.draw(rng))}

    def __str__(self) -> str:
        return str(self.sr)


def parse_lowpass(text: str, option: str = "--lowpass") -> LowpassSpec:
    """``"cheby1,ellip:2-10:2k-16k"`` -> :class:`LowpassSpec` (UsageError names the field)."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise UsageError(f"{option}: {text.strip()!r} must be TYPE:ORDER:CUTOFF "
                         f"(e.g. cheby1:8:4000 or cheby1,ellip:2-10:2k-16k)")
    kind_text, order_text, cutoff_text = parts
    items, is_range = _split(kind_text, f"{option} TYPE")
    if is_range:
        raise UsageError(f"{option} TYPE: {kind_text.strip()!r} is not a filter name "
                         f"(one of {', '.join(LOWPASS_KINDS)})")
    kinds = [s.lower() for s in items]
    for k in kinds:
        if k not in LOWPASS_KINDS:
            raise UsageError(f"{option} TYPE: {k!r} is not one of {', '.join(LOWPASS_KINDS)}")
    order = parse_int_field(order_text, f"{option} ORDER", ORDER_MIN, ORDER_MAX)
    cutoff = parse_freq_field(cutoff_text, f"{option} CUTOFF")
    return LowpassSpec(Choice(_unique(kinds)), order, cutoff)


def parse_mp3(text: str, option: str = "--mp3") -> Mp3Spec:
    """``"24,32,64"`` (or ``"24-128"``: the standard bitrates inside) -> :class:`Mp3Spec`."""
    where = f"{option} KBPS"
    items, is_range = _split(text.lower().replace("kbps", "").replace("k", ""), where)
    vals = []
    for s in items:
        d = _number(s, where, allow_k=False)
        if d != d.to_integral_value():
            raise UsageError(f"{where}: {s.strip()!r} is not a whole number of kbps")
        vals.append(int(d))
    if is_range:
        lo, hi = vals
        if lo > hi:
            raise UsageError(f"{where}: range {text.strip()!r} runs backwards")
        vals = [k for k in MP3_KBPS if lo <= k <= hi]
        if not vals:
            raise UsageError(f"{where}: no MP3 bitrate lies in {lo}-{hi} "
                             f"(bitrates: {', '.join(map(str, MP3_KBPS))})")
    for v in vals:
        if v not in MP3_KBPS:
            raise UsageError(f"{where}: {v} is not an MP3 bitrate "
                             f"(one of {', '.join(map(str, MP3_KBPS))})")
    return Mp3Spec(Choice(_unique(vals)))


def parse_resample(text: str, option: str = "--resample") -> ResampleSpec:
    """``"11025"``, ``"11.025k"`` or a set ``"8k,16k"`` -> :class:`ResampleSpec`."""
    field = parse_freq_field(text, f"{option} HZ", allow_range=False, integer=True)
    assert isinstance(field, Choice)
    return ResampleSpec(field)


def parse_segment(text: str | float, option: str = "--segment") -> float:
    """Segment length in seconds (> 0; an ``s`` suffix is allowed)."""
    t = str(text).strip().lower().removesuffix("s")
    d = _number(t, f"{option} SECONDS", allow_k=False)
    if d <= 0:
        raise UsageError(f"{option} SECONDS: {str(text).strip()!r} must be above 0")
    return float(d)


#: The parts of a spec, in their default order of application.
STEPS = ("lowpass", "mp3", "resample")


def _check_steps(steps: tp.Sequence[str], where: str) -> tuple[str, ...]:
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UsageError(f"{where}: unknown step {bad[0]!r} (steps: {', '.join(STEPS)})")
    if len(set(steps)) != len(steps):
        raise UsageError(f"{where}: a step is given twice in {','.join(steps)}")
    return tuple(steps)


@dataclass(frozen=True)
class DegradeSpec:
    """Everything one pair's degradation may draw; any part may be absent (None).

    The parts present are applied in the order ``steps`` gives (parts it leaves out follow in
    the default order low-pass, MP3, resample). ``segment_s`` does not change the audio: it
    says how long the pairs are (``upsr degrade`` cuts the clean side first; the training data
    code crops segments), and each segment draws its own parameters.
    """

    lowpass: LowpassSpec | None = None
    mp3: Mp3Spec | None = None
    resample: ResampleSpec | None = None
    segment_s: float | None = None
    steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_steps(self.steps, "degradation steps")
        order = self.order
        object.__setattr__(self, "steps", order)  # normal form: equal specs compare equal
        if (self.lowpass is not None and self.resample is not None
                and order.index("resample") < order.index("lowpass")):
            top, low = float(self.lowpass.cutoff_hz.high), float(self.resample.sr.low)
            if top >= low / 2:
                raise UsageError(f"--lowpass CUTOFF: {_fmt(top)} Hz is not below the Nyquist "
                                 f"frequency of the resampled audio ({_fmt(low / 2)} Hz); "
                                 f"here the low-pass comes after --resample")

    @property
    def order(self) -> tuple[str, ...]:
        """The parts present, in the order they are applied."""
        present = [k for k in STEPS if getattr(self, k) is not None]
        given = [k for k in self.steps if k in present]
        return tuple(given + [k for k in present if k not in given])

    @property
    def default_order(self) -> bool:
        return self.order == tuple(k for k in STEPS if k in self.order)

    def draw(self, rng: np.random.Generator) -> dict[str, tp.Any]:
        """Draw every random field: a flat JSON-ready dict (keys only for the parts present).

        The draw pattern never depends on the order of application (so a seed gives the same
        parameters whatever the order); a non-default order is recorded as ``steps``.
        """
        out: dict[str, tp.Any] = {}
        for part in (self.lowpass, self.mp3, self.resample):
            if part is not None:
                out.update(part.draw(rng))
        if not self.default_order:
            out["steps"] = list(self.order)
        return out

    @property
    def is_identity(self) -> bool:
        return self.lowpass is None and self.mp3 is None and self.resample is None

    def check_rate(self, sr: int) -> None:
        """UsageError unless every possible draw works at input rate ``sr`` (Hz).

        The cut-off must stay below the input's Nyquist frequency. (A cut-off above the
        resampled side's Nyquist frequency is allowed; the resampler's own low-pass then rules.)
        """
        if self.lowpass is not None:
            top = float(self.lowpass.cutoff_hz.high)
            if top >= sr / 2:
                raise UsageError(f"--lowpass CUTOFF: {_fmt(top)} Hz is not below the Nyquist "
                                 f"frequency of {sr} Hz audio ({_fmt(sr / 2)} Hz)")

    def to_dict(self) -> dict[str, tp.Any]:
        """The spec as strings, the form recipes and ``degrade.json`` store: parts in their
        order of application, plus ``steps`` when that order is not the default (so that
        the order survives a JSON dump with sorted keys)."""
        d: dict[str, tp.Any] = {k: str(getattr(self, k)) for k in self.order}
        if not self.default_order:
            d["steps"] = ",".join(self.order)
        if self.segment_s is not None:
            d["segment"] = _fmt(self.segment_s)
        return d

    @classmethod
    def from_dict(cls, d: tp.Mapping[str, tp.Any]) -> DegradeSpec:
        """Inverse of :meth:`to_dict`; values may also be numbers or lists (TOML recipes).

        The order of application is ``steps`` when given (``"resample,lowpass"`` or a list),
        else the order of the keys in ``d``.
        """
        unknown = set(d) - {"lowpass", "mp3", "resample", "segment", "steps"}
        if unknown:
            raise UsageError(f"degradation spec: unknown key {sorted(unknown)[0]!r} "
                             f"(allowed: lowpass, mp3, resample, segment, steps)")
        raw_steps = d.get("steps")
        if raw_steps is None:
            steps = tuple(k for k in d if k in STEPS and d.get(k) is not None)
        else:
            items = raw_steps if isinstance(raw_steps, (list, tuple)) else str(raw_steps).split(",")
            steps = _check_steps([str(x).strip() for x in items if str(x).strip()],
                                 "degradation spec steps")

        def text(key: str) -> str | None:
            v = d.get(key)
            if v is None:
                return None
            if isinstance(v, (list, tuple)):
                return ",".join(str(x) for x in v)
            return str(v)

        lp, mp, rs, sg = text("lowpass"), text("mp3"), text("resample"), text("segment")
        return cls(lowpass=parse_lowpass(lp, "lowpass") if lp is not None else None,
                   mp3=parse_mp3(mp, "mp3") if mp is not None else None,
                   resample=parse_resample(rs, "resample") if rs is not None else None,
                   segment_s=parse_segment(sg, "segment") if sg is not None else None,
                   steps=steps)

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.to_dict().items())


def parse_spec(text: str | tp.Mapping[str, tp.Any] | DegradeSpec) -> DegradeSpec:
    """``"lowpass=cheby1:8:4k mp3=64,128 resample=11025 segment=2"`` -> :class:`DegradeSpec`.

    Items are separated by spaces or ``;``; each is ``key=value`` with the flag grammar. A
    mapping goes to :meth:`DegradeSpec.from_dict`; a spec passes through.
    """
    if isinstance(text, DegradeSpec):
        return text
    if not isinstance(text, str):
        return DegradeSpec.from_dict(text)
    d: dict[str, str] = {}
    for item in re.split(r"[;\s]+", text.strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower().lstrip("-")
        if not sep:
            raise UsageError(f"degradation spec: {item!r} must be key=value "
                             f"(e.g. lowpass=cheby1:8:4k mp3=64)")
        if key in d:
            raise UsageError(f"degradation spec: {key!r} given twice")
        d[key] = value
    return DegradeSpec.from_dict(d)
