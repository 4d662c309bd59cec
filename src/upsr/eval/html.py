"""HTML comparison reports: ``upsr eval REF EST [EST...] --html report.html`` and
``upsr enhance ... --report r.html``.

The page is one HTML file with its pictures and audio excerpts in ``<name>_files/`` beside it,
linked relatively, so it opens from a ``file://`` URL with no network (no script, font or
style is fetched; the sorting script and the style sheet are inline). For every file: aligned
spectrograms (input, each system, reference) on one frequency scale and colour range with the
cutoff marked, LSD per 1-kHz band of every system, and players for an excerpt of each version
(the whole file up to ``excerpt_s``). Large runs stay quick to open: the per-file table shows
small thumbnails, every image is ``loading="lazy"`` and every player ``preload="none"``.
Every metric cell carries its exact value in ``data-value`` (the number ``--json`` writes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import math
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upsr.eval.report import METRICS

#: Metrics where a higher value is better (the others: lower is better).
HIGHER_BETTER = {"si_snr", "snr", "sdr", "pesq", "stoi", "estoi", "visqol"}
#: Seconds of audio (and spectrogram) shown per file.
EXCERPT_S = 10.0

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em} h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0;cursor:pointer;user-select:none} td.num{text-align:right;
font-variant-numeric:tabular-nums} td.best{background:#d8f5d0;font-weight:bold}
table.meta th{cursor:default;text-align:left} table.meta code{word-break:break-all}
.players{display:flex;flex-wrap:wrap;gap:1em}
.players figure{margin:0} figcaption{font-size:.85em;color:#555} img{max-width:100%}
section.file{border-top:2px solid #ddd;margin-top:1.5em} .note{color:#666;font-size:.9em}
"""

_SCRIPT = """
function sortTable(th){const t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex;
const asc=th.dataset.order!=='asc';th.dataset.order=asc?'asc':'desc';
const key=r=>{const c=r.cells[i];const v=c.dataset.value;
return v===undefined||v===''?(asc?Infinity:-Infinity):(isNaN(+v)?v:+v)};
const rows=[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);
return (a<c?-1:a>c?1:0)*(asc?1:-1)});rows.forEach(r=>b.appendChild(r));}
document.querySelectorAll('th.sort').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
"""


@dataclass
class System:
    """One column of the comparison: a folder of restored files and its scores."""

    name: str
    est: Path
    model: str | None = None  # registry name or checkpoint that made it, when given
    rows: list[dict[str, tp.Any]] = field(default_factory=list)
    failed: list[dict[str, tp.Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # key -> estimate file


def model_info(ref: str | None) -> dict[str, str]:
    """Name, checkpoint path and SHA-256 of a model reference (registry name or file)."""
    if not ref:
        return {}
    from upsr import models

    out = {"model": ref}
    try:
        path = models.find_checkpoint(ref)
    except Exception:  # noqa: BLE001 - a label that names no model is just a label
        path = None
    if path is not None and Path(path).is_file():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.update(checkpoint=str(path), sha256=h.hexdigest())
    else:
        try:
            spec = models.spec(ref)
            out["checkpoint"] = "none (DSP, no weights)" if models.canonical(ref) == "sbr" \
                else f"{spec.name}: not installed"
        except Exception:  # noqa: BLE001
            out["checkpoint"] = "unknown"
    return out


def _esc(x: tp.Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: tp.Any) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(float(v))


def _fmt(v: tp.Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def conditions(keys: tp.Iterable[str]) -> list[str]:
    """Sub-folders (first path component) that group files; empty when all are at the top."""
    return sorted({k.split("/", 1)[0] for k in keys if "/" in k})


def _mean(rows: tp.Sequence[dict[str, tp.Any]], metric: str) -> tuple[float | None, int]:
    vals = [float(r[metric]) for r in rows if r.get(metric) is not None]
    return (float(np.mean(vals)), len(vals)) if vals else (None, 0)


def _best(values: dict[str, float | None], metric: str) -> set[str]:
    known = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if len(known) < 2:
        return set()
    pick = max if metric in HIGHER_BETTER else min
    target = pick(known.values())
    return {k for k, v in known.items() if v == target}


def summary_html(systems: tp.Sequence[System]) -> str:
    """The sortable summary: one row per (condition, system), mean of every metric, the best
    system per condition and metric marked."""
    metrics = [m for m in METRICS if any(m in r for s in systems for r in s.rows)]
    groups = [("all", "")] + [(c, c + "/") for c in conditions(k for s in systems
                                                                for k in s.files)]
    head = "".join(f'<th class="sort">{_esc(m)}</th>' for m in metrics)
    out = ['<table id="summary"><thead><tr><th class="sort">condition</th>'
           f'<th class="sort">system</th><th class="sort">files</th>{head}</tr></thead><tbody>']
    for label, prefix in groups:
        rows = {s.name: [r for r in s.rows if r["file"].startswith(prefix)] for s in systems}
        means = {m: {n: _mean(rs, m)[0] for n, rs in rows.items()} for m in metrics}
        best = {m: _best(means[m], m) for m in metrics}
        for s in systems:
            cells = []
            for m in metrics:
                v = means[m][s.name]
                mark = " best" if s.name in best[m] else ""
                star = " ★" if mark else ""
                cells.append(f'<td class="num{mark}" data-value="{_num(v)}" data-system='
                             f'"{_esc(s.name)}" data-condition="{_esc(label)}" data-metric='
                             f'"{m}">{_fmt(v)}{star}</td>')
            out.append(f'<tr><td data-value="{_esc(label)}">{_esc(label)}</td><td data-value='
                       f'"{_esc(s.name)}">{_esc(s.name)}</td><td class="num" data-value='
                       f'"{len(rows[s.name])}">{len(rows[s.name])}</td>{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _meta_html(meta: dict[str, tp.Any]) -> str:
    rows = []
    for k, v in meta.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, indent=None)
        rows.append(f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>")
    return '<table class="meta">' + "".join(rows) + "</table>"


def _excerpt(n: int, sr: int, seconds: float) -> tuple[int, int]:
    """Sample range shown: the whole file when short, else ``seconds`` from its middle."""
    want = int(seconds * sr)
    if n <= want:
        return 0, n
    start = (n - want) // 2
    return start, start + want


class _Files:
    """The ``<name>_files/`` folder beside the page; paths relative to the page."""

    def __init__(self, page: Path) -> None:
        self.root = page.parent / f"{page.stem}_files"
        self.rel = f"{page.stem}_files"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def link(self, *parts: str) -> str:
        return "/".join((self.rel, *parts))


def _audio(files: _Files, name: str, x: np.ndarray, sr: int) -> str:
    from upsr.audio.io import write

    p = files.path("audio", name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write(p, x, sr, subtype="PCM_16")
    return files.link("audio", name)


def _player(label: str, src: str) -> str:
    return (f'<figure><figcaption>{_esc(label)}</figcaption><audio controls preload="none" '
            f'src="{_esc(src)}"></audio></figure>')


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script></body></html>\n")


def eval_report(page: Path, refs: dict[str, Path], systems: tp.Sequence[System],
                lr_files: dict[str, Path], cutoffs: dict[str, float | None],
                meta: dict[str, tp.Any], excerpt_s: float = EXCERPT_S,
                plot_dir: Path | None = None, html_page: bool = True) -> list[Path]:
    """Write the comparison page ``page`` (when ``html_page``) and/or the spectrogram PNGs in
    ``plot_dir``; returns the PNGs drawn. ``refs``: key → reference file of every scored key;
    ``cutoffs``: key → the LSD-HF split (the input's band edge), drawn on the pictures."""
    from upsr.audio import io
    from upsr.audio.resample import resample
    from upsr.eval import plots
    from upsr.eval.report import align

    files = _Files(page)
    drawn: list[Path] = []
    sections: list[str] = []
    table = ['<table id="files"><thead><tr><th class="sort">#</th><th class="sort">file</th>'
             + "".join(f'<th class="sort">{_esc(s.name)} LSD</th>' for s in systems)
             + "<th>spectrograms</th></tr></thead><tbody>"]
    scores = {s.name: {r["file"]: r for r in s.rows} for s in systems}
    for i, key in enumerate(sorted(refs)):
        ref = io.read(refs[key])
        sr = ref.sr
        a, b = _excerpt(ref.samples.shape[-1], sr, excerpt_s)
        versions: list[tuple[str, np.ndarray]] = []
        same = any(key in s.files and s.files[key].resolve() == lr_files[key].resolve()
                   for s in systems) if key in lr_files else True
        if not same:  # (an EST that is the degraded input itself already shows it)
            lr = io.read(lr_files[key])
            x = resample(lr.samples, lr.sr, sr) if lr.sr != sr else lr.samples
            versions.append(("degraded input", x))
        for s in systems:
            if key in s.files and key in scores[s.name]:
                est = io.read(s.files[key])
                _, e = align(ref.samples, sr, est.samples, est.sr, key)
                versions.append((s.name, e))
        versions.append(("reference", ref.samples))
        shown = [(label, x[:, a:b], sr) for label, x in versions]
        cutoff = cutoffs.get(key)
        stem = f"{i:05d}"
        if plot_dir is not None:
            safe = key.replace("/", "__")
            drawn.append(plots.spectrogram_panels(plot_dir / f"{safe}.png", shown,
                                                  cutoff_hz=cutoff).path)
        if not html_page:
            continue
        big = plots.spectrogram_panels(files.path("spec", f"{stem}.png"), shown,
                                       cutoff_hz=cutoff)
        plots.spectrogram_panels(files.path("thumb", f"{stem}.png"), shown, cutoff_hz=cutoff,
                                 width_px=240, panel_px=28, compact=True)
        curves = {}
        for label, x in versions[:-1]:
            n = min(x.shape[-1], ref.samples.shape[-1])
            curves[label] = plots.lsd_per_band(ref.samples[:, :n], x[:, :n], sr)
        plots.lsd_band_plot(files.path("lsd", f"{stem}.png"), curves, cutoff_hz=cutoff)
        players = [_player(label, _audio(files, f"{stem}_{j}.wav", x, sr))
                   for j, (label, x, _) in enumerate(shown)]
        cells = []
        for s in systems:
            row = scores[s.name].get(key, {})
            cells.append(f'<td class="num" data-value="{_num(row.get("lsd"))}" data-system="'
                         f'{_esc(s.name)}" data-file="{_esc(key)}" data-metric="lsd">'
                         f'{_fmt(row.get("lsd"))}</td>')
        table.append(f'<tr><td class="num" data-value="{i}">{i}</td><td data-value="'
                     f'{_esc(key)}"><a href="#f{i}">{_esc(key)}</a></td>{"".join(cells)}<td>'
                     f'<a href="#f{i}"><img loading="lazy" width="240" alt="spectrograms '
                     f'of {_esc(key)}" src="{files.link("thumb", stem + ".png")}"></a></td></tr>')
        metric_rows: list[str] = []
        for s in systems:
            if key not in scores[s.name]:
                continue
            row = scores[s.name][key]
            vals = "".join(f'<td class="num" data-value="{_num(row.get(m))}" data-system="'
                           f'{_esc(s.name)}" data-file="{_esc(key)}" data-metric="{m}">'
                           f"{_fmt(row.get(m))}</td>" for m in METRICS if m in row)
            heads = "".join(f"<th>{m}</th>" for m in METRICS if m in row)
            if not metric_rows:
                metric_rows.append(f"<tr><th>system</th>{heads}</tr>")
            metric_rows.append(f"<tr><td>{_esc(s.name)}</td>{vals}</tr>")
        span = (f"{a / sr:.2f}–{b / sr:.2f} s of {ref.samples.shape[-1] / sr:.2f} s"
                if (a, b) != (0, ref.samples.shape[-1]) else
                f"whole file, {ref.samples.shape[-1] / sr:.2f} s")
        cut = f"cutoff {cutoff / 1000:.2f} kHz (dashed)" if cutoff else "no cutoff known"
        sections.append(
            f'<section class="file" id="f{i}"><h3>{i}. {_esc(key)}</h3>'
            f'<p class="note">{sr} Hz; shown: {span}; {cut}; panels top to bottom: '
            f'{_esc(", ".join(label for label, _ in versions))}</p>'
            f'<table class="scores">{"".join(metric_rows)}</table>'
            f'<img loading="lazy" width="{big.size_px[0]}" alt="aligned spectrograms" '
            f'src="{files.link("spec", stem + ".png")}">'
            f'<h4>LSD per 1-kHz band</h4><img loading="lazy" width="900" alt="LSD per band" '
            f'src="{files.link("lsd", stem + ".png")}">'
            f'<div class="players">{"".join(players)}</div></section>')
    if not html_page:
        return drawn
    table.append("</tbody></table>")
    cols = ("system", "folder", "model", "checkpoint", "sha256", "files scored", "failed")
    sys_rows = []
    for s in systems:
        info = {"system": s.name, "folder": str(s.est), **model_info(s.model),
                "files scored": len(s.rows), "failed": len(s.failed)}
        sys_rows.append("<tr>" + "".join(f"<td><code>{_esc(info.get(c, ''))}</code></td>"
                                         for c in cols) + "</tr>")
    sys_table = ('<table class="meta" id="systems"><tr>' + "".join(f"<th>{c}</th>"
                                                                   for c in cols)
                 + "</tr>" + "".join(sys_rows) + "</table>")
    body = ["<h1>upsr comparison report</h1>", _meta_html(meta),
            "<h2>Systems</h2>", sys_table,
            "<h2>Summary</h2>",
            '<p class="note">Mean over files; ★ marks the best system per condition and '
            "metric (LSD lower, SI-SNR/SNR/SDR higher is better). Click a header to sort."
            "</p>", summary_html(systems),
            "<h2>Files</h2>", "\n".join(table), *sections]
    from upsr.fsutil import atomic_write_text

    atomic_write_text(page, _page("upsr comparison report", body))
    return drawn


def run_meta(argv: tp.Sequence[str] | None = None) -> dict[str, tp.Any]:
    """Command line, upsr version and date (UTC) shown at the top of a report."""
    import shlex
    import sys

    import upsr

    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = Path(args[0]).name
        if args[0] in ("__main__.py", "-m"):
            args[0] = "upsr"
    return {"command": shlex.join(args), "upsr version": upsr.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def enhance_report(page: Path, records: tp.Sequence[dict[str, tp.Any]], model: str,
                   meta: dict[str, tp.Any], excerpt_s: float = EXCERPT_S) -> None:
    """``upsr enhance --report r.html``: per file, the decisions (status, cutoff, bitrate and
    its source, codec, model, rates, time) and the spectrograms of an excerpt before and after
    (the output resampled to the input rate is not needed: each panel keeps its own rate on
    one kHz scale)."""
    from upsr.audio import io
    from upsr.eval import plots

    files = _Files(page)
    keys = ("status", "cutoff_hz", "bitrate_kbps", "bitrate_source", "codec", "model",
            "sr_in", "sr_out", "audio_s", "wall_s", "rtf", "error")
    head = "".join(f"<th class=\"sort\">{k}</th>" for k in ("#", "file", *keys))
    rows, sections = [], []
    for i, rec in enumerate(records):
        cells = "".join(f'<td data-value="{_esc("" if rec.get(k) is None else rec.get(k))}">'
                        f'{_esc("" if rec.get(k) is None else rec.get(k))}</td>' for k in keys)
        rows.append(f'<tr><td data-value="{i}">{i}</td><td data-value="{_esc(rec["src"])}">'
                    f'<a href="#f{i}">{_esc(rec["src"])}</a></td>{cells}</tr>')
        panels = []
        src, dst = rec["src"], rec.get("dst")
        if src != "-" and Path(src).is_file():
            x = io.read(src)
            a, b = _excerpt(x.samples.shape[-1], x.sr, excerpt_s)
            panels.append(("before: " + Path(src).name, x.samples[:, a:b], x.sr, a / x.sr))
        if (rec.get("status") in ("done", "copied", "exists") and dst and dst != "-"
                and Path(dst).is_file()):
            y = io.read(dst)
            t0 = panels[0][3] if panels else 0.0
            a = int(round(t0 * y.sr))
            n = int(excerpt_s * y.sr)
            panels.append(("after: " + Path(dst).name, y.samples[:, a:a + n], y.sr, t0))
        if not panels:
            continue
        stem = f"{i:05d}"
        plots.spectrogram_panels(files.path("spec", f"{stem}.png"),
                                 [(lab, x, sr) for lab, x, sr, _ in panels],
                                 cutoff_hz=rec.get("cutoff_hz"))
        players = [_player(lab, _audio(files, f"{stem}_{j}.wav", x, sr))
                   for j, (lab, x, sr, _) in enumerate(panels)]
        sections.append(f'<section class="file" id="f{i}"><h3>{i}. {_esc(src)}</h3>'
                        f'<p class="note">{_esc(rec.get("status"))}; excerpt from '
                        f'{panels[0][3]:.2f} s, up to {excerpt_s:g} s</p>'
                        f'<img loading="lazy" width="900" alt="before/after spectrograms" '
                        f'src="{files.link("spec", stem + ".png")}">'
                        f'<div class="players">{"".join(players)}</div></section>')
    body = ["<h1>upsr enhance report</h1>", _meta_html({**meta, **{"model": model},
                                                        **model_info(model)}),
            "<h2>Files</h2>", f'<table id="files"><thead><tr>{head}</tr></thead><tbody>',
            *rows, "</tbody></table>", *sections]
    from upsr.fsutil import atomic_write_text

    atomic_write_text(page, _page("upsr enhance report", body))
