"""``upsr eval REF_DIR EST_DIR``: score restored audio against references, file by file.

Files pair by relative path without the suffix (``a/b.flac`` with ``a/b.wav``); estimates are
resampled to the reference rate and both are cropped to the shorter length. LSD-HF/LF split
at ``--cutoff`` if given, else at each file's degraded input's band edge when ``--lr-dir`` is
given (paired the same way), else they are not reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from upsr.cli import _common


def eval_cmd(
    ref_dir: Annotated[Path, typer.Argument(metavar="REF",
                                            help="Reference (clean, full-band) files or folder.")],
    est_dir: Annotated[Path, typer.Argument(metavar="EST",
                                            help="Restored files or folder (same layout).")],
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
    _common.require_inputs([ref_dir, est_dir] + ([lr_dir] if lr_dir is not None else []),
                           stdin_ok=False)
    if csv_path is not None:
        _common.check_output_file(csv_path, "--csv")
    if json_path is not None:
        _common.check_output_file(json_path, "--json")

    pairing = report.pair_files(ref_dir, est_dir)
    for key in pairing.ref_only:
        log.warning("unpaired reference: %s (no estimate)", key)
    for key in pairing.est_only:
        log.warning("unpaired estimate: %s (no reference)", key)
    for key in pairing.ambiguous:
        log.warning("skipped %s: several files share this name with different suffixes", key)
    if not pairing.pairs:
        raise UsageError(f"no files pair up between {ref_dir} and {est_dir} "
                         f"(pairing is by relative path without the suffix)")
    lr_files: dict[str, Path] = {}
    if lr_dir is not None and cutoff is None:
        if lr_dir.is_file():
            if len(pairing.pairs) != 1:
                raise UsageError("--lr-dir must be a folder when scoring several files")
            lr_files = {pairing.pairs[0][0]: lr_dir}
        else:
            lr_files = {k: lr for k, lr, _ in report.pair_files(lr_dir, ref_dir).pairs}

    rows = []
    failed = []
    n_fft, hop = metrics.LSD_VARIANTS[lsd_variant]
    from upsr.audio.quiet import captured

    for key, ref_path, est_path in pairing.pairs:
        try:
            file_cutoff = cutoff
            if file_cutoff is None and key in lr_files:
                with captured(key):
                    file_cutoff = report.lr_cutoff_hz(lr_files[key])
            elif file_cutoff is None and lr_dir is not None:
                log.warning("%s: no degraded input under %s; LSD-HF/LF skipped", key, lr_dir)
            with captured(key):
                rows.append(report.score_files(key, ref_path, est_path, file_cutoff,
                                               lsd_variant, extras))
            log.info("%s: LSD %.3f", key, rows[-1]["lsd"])
        except UpsrError as exc:
            msg = str(exc)
            if msg.startswith((str(ref_path), str(est_path), key + ":")):
                _common.error(msg)  # the message already names the file
            else:
                _common.file_error(key, msg)
            failed.append({"file": key, "error": msg})

    summary = report.summarize(rows)
    settings = {"lsd_variant": lsd_variant, "n_fft": n_fft, "hop": hop, "window": "hann",
                "center": True, "cutoff_hz": cutoff,
                "cutoff_rule": ("fixed" if cutoff is not None else
                                "lr band edge (-70 dB)" if lr_dir is not None else "none"),
                "extras": extras, "ref": str(ref_dir), "est": str(est_dir),
                "lr": None if lr_dir is None else str(lr_dir)}
    if csv_path is not None:
        report.write_text(csv_path, report.csv_text(rows))
    if json_path is not None:
        report.write_text(json_path, report.json_text({
            "settings": settings, "summary": summary, "files": rows, "failed": failed,
            "unpaired": {"ref_only": pairing.ref_only, "est_only": pairing.est_only,
                         "ambiguous": pairing.ambiguous}}))
    if not quiet and rows:
        if per_file:
            print(report.per_file_table(rows))
            print()
        print(f"LSD: {lsd_variant} (n_fft {n_fft}, hop {hop}, centred Hann); "
              f"{len(rows)} file(s) scored" + (f", {len(failed)} failed" if failed else ""))
        print(report.summary_table(summary))
    if failed:
        raise typer.Exit(_common.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
