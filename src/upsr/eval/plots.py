"""Spectrogram and LSD-per-band pictures: ``upsr eval --plot/--html``, ``probe --plot``,
``enhance --report r.html`` and the training loop's validation examples.

One spectrogram for all of them: :func:`spectrogram_db` takes the project's STFT
(:func:`upsr.audio.spectral.stft`, periodic Hann, centred) and averages the power over
channels. Pictures are drawn with matplotlib's Agg renderer on a bare
:class:`~matplotlib.figure.Figure` (no pyplot state, no display needed); matplotlib is
imported only when a picture is drawn, so ``upsr --help`` never loads it. Every PNG is written
atomically at an exact pixel size (``width × height`` at 100 dpi, no tight cropping).
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: STFT of the pictures: 2048/512 at 44.1/48 kHz (46 ms window, 11.6 ms hop).
N_FFT, HOP = 2048, 512
#: Colour range below the loudest bin shown (dB).
RANGE_DB = 90.0
DPI = 100


@dataclass(frozen=True)
class Spectrogram:
    """``db: [F, N]`` power in dB (10·log10, floor 1e-12), bin ``f`` at ``f·sr/n_fft`` Hz,
    frame ``n`` at ``n·hop/sr`` s."""

    db: np.ndarray
    sr: int
    n_fft: int
    hop: int

    @property
    def top_hz(self) -> float:
        return self.sr / 2

    @property
    def seconds(self) -> float:
        return self.db.shape[1] * self.hop / self.sr


@dataclass(frozen=True)
class Plot:
    """What a drawn PNG shows: its path, size in pixels, frequency axis range (Hz) and colour
    range (dB) — the same numbers for every panel of one picture."""

    path: Path
    size_px: tuple[int, int]
    freq_range_hz: tuple[float, float]
    colour_range_db: tuple[float, float]


def spectrogram_db(x: np.ndarray, sr: int, n_fft: int = N_FFT, hop: int = HOP) -> Spectrogram:
    """``x: [C, T]`` or ``[T]`` → :class:`Spectrogram` of the channel-mean power."""
    from upsr.audio.spectral import stft

    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[-1] == 0:
        x = np.zeros((x.shape[0], 1))
    power = (np.abs(stft(x, n_fft, hop)) ** 2).mean(axis=0)
    return Spectrogram(10.0 * np.log10(np.maximum(power, 1e-12)), sr, n_fft, hop)


def lsd_per_band(ref: np.ndarray, est: np.ndarray, sr: int, band_hz: float = 1000.0,
                 n_fft: int = N_FFT, hop: int = HOP) -> tuple[np.ndarray, np.ndarray]:
    """LSD (:func:`upsr.eval.metrics.lsd`'s definition) restricted to bands of ``band_hz``:
    ``(band centres in Hz, LSD per band)``; ``ref``/``est``: ``[C, T]`` aligned at ``sr``.
    The mean over channels, as the metric."""
    from upsr.audio.spectral import stft

    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    est = np.atleast_2d(np.asarray(est, dtype=np.float64))
    lp_ref = np.log10(np.maximum(np.abs(stft(ref, n_fft, hop)) ** 2, 1e-8))
    lp_est = np.log10(np.maximum(np.abs(stft(est, n_fft, hop)) ** 2, 1e-8))
    sq = (lp_est - lp_ref) ** 2  # [C, F, N]
    bins = n_fft // 2 + 1
    per = max(1, int(round(band_hz * n_fft / sr)))
    edges = list(range(0, bins, per)) + [bins]
    centres, values = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        centres.append((lo + hi - 1) / 2 * sr / n_fft)
        values.append(float(np.sqrt(sq[:, lo:hi].mean(axis=1)).mean(axis=-1).mean()))
    return np.array(centres), np.array(values)


def _figure(width_px: int, height_px: int) -> tp.Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def _save(fig: tp.Any, path: Path) -> None:
    from upsr.fsutil import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI)


def spectrogram_panels(path: str | Path, panels: tp.Sequence[tuple[str, np.ndarray, int]],
                       cutoff_hz: float | None = None, width_px: int = 900,
                       panel_px: int = 180, range_db: float = RANGE_DB,
                       compact: bool = False) -> Plot:
    """Spectrograms of ``panels`` (``(label, x [C, T] or [T], sr)``) stacked top to bottom:
    one time axis, one frequency scale (0 to the highest Nyquist frequency, kHz) and one
    colour range (``range_db`` below the loudest bin of all panels), the cutoff as a dashed
    line. ``compact``: a thumbnail (no labels or colour bar)."""
    specs = [(label, spectrogram_db(x, sr)) for label, x, sr in panels]
    top = max(float(s.db.max()) for _, s in specs)
    vmin, vmax = top - range_db, top
    fmax = max(s.top_hz for _, s in specs)
    tmax = max(s.seconds for _, s in specs)
    height = panel_px * len(specs) + (0 if compact else 50)
    fig = _figure(width_px, height)
    if compact:
        fig.subplots_adjust(left=0, right=1, top=1, bottom=0, hspace=0.04)
    else:
        fig.subplots_adjust(left=0.07, right=0.9, top=1 - 10 / height, bottom=44 / height,
                            hspace=0.12)
    axes = fig.subplots(len(specs), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    image = None
    for ax, (label, s) in zip(axes, specs, strict=True):
        image = ax.imshow(s.db, origin="lower", aspect="auto", cmap="magma", vmin=vmin,
                          vmax=vmax, interpolation="nearest",
                          extent=(0.0, s.seconds, 0.0, s.top_hz / 1000))
        ax.set_xlim(0.0, tmax)
        ax.set_ylim(0.0, fmax / 1000)
        if cutoff_hz:
            ax.axhline(cutoff_hz / 1000, color="cyan", lw=0.8, ls="--")
        if compact:
            ax.set_axis_off()
        else:
            ax.set_ylabel("kHz")
            ax.text(0.005, 0.96, label, transform=ax.transAxes, va="top", ha="left",
                    color="white", fontsize=9, bbox={"facecolor": "black", "alpha": 0.5,
                                                     "pad": 2, "lw": 0})
    if not compact:
        axes[-1].set_xlabel("seconds" + (f"   (dashed: cutoff {cutoff_hz / 1000:.2f} kHz)"
                                         if cutoff_hz else ""))
        cax = fig.add_axes((0.915, 44 / height, 0.015, 1 - 54 / height))
        fig.colorbar(image, cax=cax, label="dB")
    _save(fig, Path(path))
    return Plot(Path(path), (width_px, height), (0.0, fmax), (vmin, vmax))


def lsd_band_plot(path: str | Path, curves: tp.Mapping[str, tuple[np.ndarray, np.ndarray]],
                  cutoff_hz: float | None = None, width_px: int = 900,
                  height_px: int = 260) -> Plot:
    """One line per system: LSD per frequency band (from :func:`lsd_per_band`)."""
    fig = _figure(width_px, height_px)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.95, bottom=0.18)
    fmax = 0.0
    for name, (centres, values) in curves.items():
        ax.plot(centres / 1000, values, marker=".", lw=1.2, label=name)
        fmax = max(fmax, float(centres.max()) if centres.size else 0.0)
    if cutoff_hz:
        ax.axvline(cutoff_hz / 1000, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0.0, fmax / 1000 if fmax else 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("band centre (kHz)")
    ax.set_ylabel("LSD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, Path(path))
    lo, hi = ax.get_ylim()
    return Plot(Path(path), (width_px, height_px), (0.0, fmax), (float(lo), float(hi)))


def probe_plot(path: str | Path, x: np.ndarray, sr: int, notes: tp.Mapping[str, float],
               title: str = "", width_px: int = 900, height_px: int = 360,
               range_db: float = RANGE_DB) -> Plot:
    """The spectrogram of ``x`` with horizontal lines at ``notes`` (label → Hz: band edge,
    roll-off...) and ``title`` (e.g. the estimated codec) above it."""
    s = spectrogram_db(x, sr)
    vmax = float(s.db.max())
    fig = _figure(width_px, height_px)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.07, right=0.9, top=0.9, bottom=0.13)
    image = ax.imshow(s.db, origin="lower", aspect="auto", cmap="magma", vmin=vmax - range_db,
                      vmax=vmax, interpolation="nearest",
                      extent=(0.0, s.seconds, 0.0, s.top_hz / 1000))
    colours = ("cyan", "lime", "white", "orange")
    for i, (label, hz) in enumerate(notes.items()):
        c = colours[i % len(colours)]
        ax.axhline(hz / 1000, color=c, lw=0.9, ls="--")
        right = i % 2 == 0  # alternate sides and above/below: close lines stay readable
        ax.text(0.99 * s.seconds if right else 0.01 * s.seconds, hz / 1000,
                f"{label} {hz / 1000:.2f} kHz", color=c, ha="right" if right else "left",
                va="bottom" if right else "top", fontsize=8)
    ax.set_ylim(0.0, s.top_hz / 1000)
    ax.set_xlabel("seconds")
    ax.set_ylabel("kHz")
    if title:
        ax.set_title(title, fontsize=9)
    cax = fig.add_axes((0.915, 0.13, 0.015, 0.77))
    fig.colorbar(image, cax=cax, label="dB")
    _save(fig, Path(path))
    return Plot(Path(path), (width_px, height_px), (0.0, s.top_hz), (vmax - range_db, vmax))
