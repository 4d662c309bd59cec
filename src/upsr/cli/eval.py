"""``upsr eval REF_DIR EST_DIR [EST_DIR...]``: score restored audio against references, file
by file, for one or several systems.

Files pair by relative path without the suffix (``a/b.flac`` with ``a/b.wav``); estimates are
resampled to the reference rate and both are cropped to the shorter length. LSD-HF/LF split
at ``--cutoff`` if given, else at each file's degraded input's band edge when ``--lr-dir`` is
given (paired the same way), else they are not reported. ``--html`` writes a comparison page
(:mod:`upsr.eval.html`), ``--plot DIR`` the aligned spectrograms as PNG files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from upsr.cli import _common


def eval_cmd(
    ref_dir: Annotated[Path, typer.Argument(metavar="REF",
                                            help="Reference (clean, full-band) files or folder.")],
    est_dirs: Annotated[list[Path], typer.Argument(
        help="Restored files or folders (same layout), one per system.", metavar="EST...")],
    lr_dir: Annotated[Optional[Path], typer.Option(
        "--lr-dir", metavar="DIR",
help="Degraded inputs (same layout): LSD-HF/LF split at each one's band "
                         "edge.")] = None,
    cutoff: Annotated[Optional[float], typer.Option(
        "--cutoff", metavar="HZ",
help="LSD-HF/LF split in Hz for every file (overrides --lr-dir).")] = None,
    lsd_variant: Annotated[str, typer.Option(
        "--lsd", metavar="aero|nuwave",
help="LSD definition: 'aero' (n_fft 2048, hop 512; AERO/Wave-U-Mamba) or "
                      "'nuwave' (1024/256).")] = "aero",
    pesq: Annotated[bool, typer.Option("--pesq", help="Wide-band PESQ (needs upsr[metrics]).")
                    ] = False,
    stoi: Annotated[bool, typer.Option("--stoi", help="STOI (needs upsr[metrics]).")] = False,
    estoi: Annotated[bool, typer.Option("--estoi", help="Extended STOI (needs upsr[metrics]).")
                     ] = False,
    visqol: Annotated[bool, typer.Option(
        "--visqol", help="ViSQOL audio mode (needs upsr[metrics]).")] = False,
    csv_path: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", help="Write per-file scores as CSV.")] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE",
help="Write settings, summary and per-file scores as JSON.")] = None,
    per_file: Annotated[bool, typer.Option("--per-file", help="Also print one row per file.")
                        ] = False,
    names: Annotated[Optional[list[str]], typer.Option(
        "--name", metavar="LABEL[=MODEL]",
        help="Name of each EST in order (default: its folder name); '=MODEL' (registry name or "
             "checkpoint) shows the model and its SHA-256 in --html. Repeatable.")] = None,
    html_path: Annotated[Optional[Path], typer.Option(
        "--html", help="Write a comparison page (pictures and audio excerpts in "
                       "<name>_files/ beside it; opens offline).")] = None,
    plot_dir: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write each file's aligned spectrograms (input, systems, reference) "
                       "as PNG into this folder.")] = None,
    excerpt_s: Annotated[float, typer.Option(
        "--excerpt-s", help="Seconds of each file shown and playable in --html/--plot.")
                         ] = 10.0,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Score restored audio against references: LSD (+HF/LF), SI-SNR, SNR, SDR; mean +- std."""
    _common.setup_logging(quiet, verbose)
    from upsr.errors import UpsrError, UsageError
    from upsr.eval import metrics, report

    log = _common.log
    extras = [n for n, on in (("pesq", pesq), ("stoi", stoi), ("estoi", estoi),
                              ("visqol", visqol)) if on]
    for name in extras:
        metrics.require(name)
    if lsd_variant not in metrics.LSD_VARIANTS:
        raise UsageError(f"unknown --lsd {lsd_variant!r}; use one of "
                         f"{', '.join(metrics.LSD_VARIANTS)}")
    if cutoff is not None and cutoff <= 0:
        raise UsageError(f"--cutoff must be > 0 Hz (got {cutoff:g})")
    _common.require_inputs([ref_dir, *est_dirs] + ([lr_dir] if lr_dir is not None else []),
                           stdin_ok=False)
    for out_path, option in ((csv_path, "--csv"), (json_path, "--json"), (html_path, "--html")):
        if out_path is not None:
            _common.check_output_file(out_path, option)

    if names and len(names) > len(est_dirs):
        raise UsageError(f"{len(names)} --name for {len(est_dirs)} EST folder(s)")
    labels: list[tuple[str, str | None]] = []
    for i, est_dir in enumerate(est_dirs):
        label, _, model_ref = (names[i] if names and i < len(names) else "").partition("=")
        labels.append((label or est_dir.name or str(est_dir), model_ref or None))
    if len({n for n, _ in labels}) != len(labels):
        raise UsageError("systems need distinct names; give --name for each EST")
    if excerpt_s <= 0:
        raise UsageError(f"--excerpt-s must be > 0 (got {excerpt_s:g})")

    from upsr.eval.html import System

    systems = []
    pairings = []
    for est_dir, (label, model) in zip(est_dirs, labels, strict=True):
        pairing = report.pair_files(ref_dir, est_dir)
        prefix = f"{label}: " if len(est_dirs) > 1 else ""
        for key in pairing.ref_only:
            log.warning("%sunpaired reference: %s (no estimate)", prefix, key)
        for key in pairing.est_only:
            log.warning("%sunpaired estimate: %s (no reference)", prefix, key)
        for key in pairing.ambiguous:
            log.warning("%sskipped %s: several files share this name with different suffixes",
                        prefix, key)
        if not pairing.pairs:
            raise UsageError(f"no files pair up between {ref_dir} and {est_dir} "
                             f"(pairing is by relative path without the suffix)")
        systems.append(System(label, est_dir, model,
                              files={k: e for k, _, e in pairing.pairs}))
        pairings.append(pairing)
    lr_files: dict[str, Path] = {}
    all_pairs = {k: r for p in pairings for k, r, _ in p.pairs}
    if lr_dir is not None:
        if lr_dir.is_file():
            if len(all_pairs) != 1:
                raise UsageError("--lr-dir must be a folder when scoring several files")
            lr_files = {next(iter(all_pairs)): lr_dir}
        else:
            lr_files = {k: lr for k, lr, _ in report.pair_files(lr_dir, ref_dir).pairs}

    n_fft, hop = metrics.LSD_VARIANTS[lsd_variant]
    from upsr.audio.quiet import captured

    cutoffs: dict[str, float | None] = {}
    for key in sorted(all_pairs):
        file_cutoff = cutoff
        if file_cutoff is None and key in lr_files:
            try:
                with captured(key):
                    file_cutoff = report.lr_cutoff_hz(lr_files[key])
            except UpsrError as exc:
                _common.file_error(key, str(exc))
        elif file_cutoff is None and lr_dir is not None:
            log.warning("%s: no degraded input under %s; LSD-HF/LF skipped", key, lr_dir)
        cutoffs[key] = file_cutoff
    for system, pairing in zip(systems, pairings, strict=True):
        for key, ref_path, est_path in pairing.pairs:
            try:
                with captured(key):
                    system.rows.append(report.score_files(key, ref_path, est_path,
                                                          cutoffs[key], lsd_variant, extras))
                log.info("%s: %s: LSD %.3f", system.name, key, system.rows[-1]["lsd"])
            except UpsrError as exc:
                msg = str(exc)
                if msg.startswith((str(ref_path), str(est_path), key + ":")):
                    _common.error(msg)  # the message already names the file
                else:
                    _common.file_error(key, msg)
                system.failed.append({"file": key, "error": msg})

    settings = {"lsd_variant": lsd_variant, "n_fft": n_fft, "hop": hop, "window": "hann",
                "center": True, "cutoff_hz": cutoff,
                "cutoff_rule": ("fixed" if cutoff is not None else
                                "lr band edge (-70 dB)" if lr_dir is not None else "none"),
                "extras": extras, "ref": str(ref_dir), "est": str(est_dirs[0]),
                "lr": None if lr_dir is None else str(lr_dir)}
    results = [{"name": s.name, "est": str(s.est), "model": s.model,
                "summary": report.summarize(s.rows), "files": s.rows, "failed": s.failed}
               for s in systems]
    rows, failed = systems[0].rows, [f for s in systems for f in s.failed]
    if csv_path is not None:
        report.write_text(csv_path, report.csv_text(
            [dict(r, system=s.name) for s in systems for r in s.rows] if len(systems) > 1
            else rows))
    if json_path is not None:
        doc: dict = {"settings": settings}
        if len(systems) == 1:  # the one-system layout of earlier versions, kept
            doc.update(summary=results[0]["summary"], files=rows, failed=failed)
        doc["systems"] = results
        p0 = pairings[0]
        doc["unpaired"] = {"ref_only": p0.ref_only, "est_only": p0.est_only,
                           "ambiguous": p0.ambiguous}
        report.write_text(json_path, report.json_text(doc))
    if html_path is not None or plot_dir is not None:
        from upsr.eval import html as H

        refs = {k: all_pairs[k] for s in systems for k in (r["file"] for r in s.rows)}
        meta = H.run_meta()
        meta["settings"] = settings
        if plot_dir is not None:
            plot_dir.mkdir(parents=True, exist_ok=True)
        H.eval_report(html_path or Path("report.html"), refs, systems, lr_files, cutoffs,
                      meta, excerpt_s=excerpt_s, plot_dir=plot_dir,
                      html_page=html_path is not None)
    if not quiet and any(s.rows for s in systems):
        for s in systems:
            if len(systems) > 1:
                print(f"== {s.name} ({s.est})")
            if per_file:
                print(report.per_file_table(s.rows))
                print()
            print(f"LSD: {lsd_variant} (n_fft {n_fft}, hop {hop}, centred Hann); "
                  f"{len(s.rows)} file(s) scored"
                  + (f", {len(s.failed)} failed" if s.failed else ""))
            print(report.summary_table(report.summarize(s.rows)))
    if failed:
        raise typer.Exit(_common.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
