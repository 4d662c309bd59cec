"""Generate the roff man pages in ``man/`` from the Typer app, so they never drift from it.

``python -m upsr.cli.manpages man/`` rewrites ``upsr.1`` and one ``upsr-<command>.1`` per
subcommand (``upsr-models.1`` covers its subcommands). A test checks the committed pages equal
what this produces.
"""

from __future__ import annotations

import sys
import typing as tp
from pathlib import Path

import typer

from upsr import __version__

DATE = "2026-11"


def _esc(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        lines.append(("\\&" + line) if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _option_lines(cmd: tp.Any, ctx: tp.Any) -> list[str]:
    out: list[str] = []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.param_type_name == "argument":
            continue
        rec = p.get_help_record(ctx)
        if rec is None:
            continue
        opts, help_text = rec
        out += [".TP", f"\\fB{_esc(opts)}\\fR", _esc(help_text.strip())]
    return out


def _metavar(p: tp.Any) -> str:
    return str(p.metavar or p.name.upper())


def _arguments(cmd: tp.Any) -> list[str]:
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    out: list[str] = []
    for p in args:
        out.append(".TP")
        out.append(f"\\fI{_esc(_metavar(p))}\\fR")
        out.append(_esc(getattr(p, "help", None) or ""))
    return out


def _usage(path: str, cmd: tp.Any) -> str:
    parts = [f"\\fB{_esc(path)}\\fR", "[\\fIOPTIONS\\fR]"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = f"\\fI{_esc(_metavar(p))}\\fR"
            if p.nargs == -1:
                name += "..."
            parts.append(name if p.required else f"[{name}]")
    return " ".join(parts)


# ---------------------------------------------------------------- sections beyond --help
# Each page gets EXAMPLES, EXIT STATUS, FILES and ENVIRONMENT; enhance and train also say how
# their decisions are made. Items: (tag, text) pairs, or a plain paragraph (tag None).

Items = list[tuple[str | None, str]]

EXIT_STATUS: Items = [
    ("0", "All good."),
    ("1", "Usage or set-up error, found before any work: a bad option, a missing input path, "
          "an output place that cannot be written (checked before the first file is touched)."),
    ("2", "At least one file failed; the others were still processed (one line per failure "
          "on stderr)."),
    ("130", "Interrupted (Ctrl-C); one line says what finished and what to rerun."),
]

ENVIRONMENT: Items = [
    ("UPSR_MODEL_DIR", "Folder searched first for installed checkpoints (NAME.safetensors)."),
    ("XDG_CACHE_HOME", "The user model folder is $XDG_CACHE_HOME/upsr/models "
                       "(default ~/.cache/upsr/models)."),
    ("NO_COLOR", "Disables colour (progress bars and tables)."),
    ("OMP_NUM_THREADS", "CPU threads torch uses."),
    ("UPSR_MALLOC", "reuse (unset): upsr enhance keeps large blocks in the heap for reuse "
                    "(MALLOC_MMAP_MAX_=0, no automatic trimming; also in its worker processes), "
                    "the fastest. compact: every block above 64 KiB is mapped on its own and "
                    "handed back when freed (MALLOC_MMAP_THRESHOLD_=65536), for machines short "
                    "of memory: a lower peak RSS (AEROMamba on 30 s: 2.2 to 0.9 GiB) for ~1.5x "
                    "the time. Either way free memory "
                    "goes back after every file. default: glibc's allocator left as it is. Any "
                    "MALLOC_* variable or glibc.malloc tunable of the user's wins."),
]

EXAMPLES: dict[str, list[str]] = {
    "upsr": ["upsr example demo && upsr enhance demo -o demo-restored",
             "upsr probe ~/Music", "man upsr-enhance"],
    "enhance": [
        "upsr enhance ./archive -o ./restored",
        "upsr enhance ./archive -o ./restored --bitrate-auto --dry-run",
        "upsr enhance ./archive -o ./restored --model apollo.safetensors "
        "--report r.json",
        "upsr enhance song.mp3 -o - --format flac > song.flac"],
    "degrade": [
        "upsr degrade clean/ pairs/ --lowpass cheby1,ellip,butter,boxcar:2-10:2k-16k "
        "--seed 1",
        "upsr degrade clean/ pairs/ --mp3 24,32,48,64,96,128 --segment 4",
        "upsr degrade clean/ pairs/ --resample 16000 --lowpass butter:8:5k   "
        "# resample first, then filter"],
    "probe": ["upsr probe ~/Music", "upsr probe --json song.mp3 | jq .[0].band_edge_hz"],
    "eval": ["upsr eval clean/ restored/ --lr-dir degraded/ --json scores.json",
             "upsr eval ref.wav est.flac --cutoff 8000 --per-file"],
    "models": ["upsr models list",
               "upsr models import apollo pytorch_model.bin apollo.safetensors",
               "upsr models info apollo.safetensors"],
    "train": ["upsr train recipes/tiny/wave_u_mamba.toml --set data.train=my_audio "
              "--out runs/try",
              "upsr train recipes/aeromamba.toml --set data.train=my_audio --out "
              "runs/my-aero --resume"],
    "example": ["upsr example demo", "upsr example demo --overwrite"],
}

FILES: dict[str, Items] = {
    "upsr": [("~/.cache/upsr/models/", "Installed checkpoints (see upsr-models(1))."),
             (".upsr-tmp-PID-*", "Temporary files beside an output while it is "
                                     "written; renamed into place when complete.")],
    "enhance": [
        ("OUT/...", "The restored files, mirroring the input tree (several inputs: one "
                    "sub-folder each). FLAC for FLAC and lossy inputs, WAV otherwise; two "
                    "inputs that would share a name (x.flac, x.mp3) keep apart: the one whose "
                    "extension differs keeps it (x.mp3.flac). A full-band file copied by "
                    "--bitrate-auto keeps its own name."),
        ("OUT/.upsr-tmp-PID-*", "An output being written; deleted on failure or "
                                    "Ctrl-C, and at the next run if process PID is gone."),
        ("--report FILE", "JSON: the model and, per file, src, dst, status (done, exists, "
                            "copied, skipped-full-band, failed), cut-off, bitrate and its "
                            "source, codec, model used, rates, audio_s, wall_s (this file's "
                            "own time) and rtf = wall_s / audio_s."),
    ],
    "degrade": [
        ("OUT_DIR/hr/, OUT_DIR/lr/", "The clean and degraded sides, mirroring SRC_DIR."),
        ("OUT_DIR/manifest.jsonl", "One line per pair: source, paths, every drawn parameter "
                                   "(and \"steps\" when the order is not the default), rates, "
                                   "measured lag, seed."),
        ("OUT_DIR/degrade.json", "The settings; a rerun with other settings is refused."),
    ],
    "probe": [(None, "Reads only.")],
    "eval": [("--json FILE, --csv FILE", "Settings, summary and per-file scores.")],
    "models": [("$UPSR_MODEL_DIR/*.safetensors, ~/.cache/upsr/models/*.safetensors",
                "Installed checkpoints, usable by name.")],
    "train": [
        ("DIR/recipe.toml", "The resolved recipe."),
        ("DIR/log.csv", "Losses and validation scores per step (TensorBoard in "
                        "DIR/tensorboard when installed)."),
        ("DIR/checkpoints/latest.safetensors, best.safetensors",
         "upsr checkpoints (usable with upsr enhance --model FILE)."),
        ("DIR/checkpoints/latest.state.pt", "Everything --resume needs: models, optimisers, "
                                            "schedulers, EMA, RNG states, step."),
        ("DIR/valid/step_*/", "Validation examples (WAV and spectrogram PNG)."),
    ],
    "example": [("DIR/", "speech-band WAV, an 8 kHz-cut stereo FLAC and a nested folder.")],
}

DECISIONS: dict[str, list[tuple[str, Items]]] = {
    "enhance": [
        ("RESUME", [(None,
            "An input counts as done when a file already exists under its planned output name "
            "(--dry-run prints the plan); it is skipped unless --overwrite is given. Every "
            "output is written to a temporary file beside it, fsynced and renamed, so a file "
            "under its final name is always complete. After Ctrl-C, a crash or kill -9, "
            "rerun the same command: finished files are skipped, temporary files of dead runs "
            "are removed, the rest is done. Other options do not make an existing output "
            "stale: use --overwrite (or a new -o folder) after changing the model.")]),
        ("BITRATE-AUTO", [(None,
            "With --bitrate-auto each file is analysed before it is restored, by the same "
            "code for the run and for --dry-run. The codec and bitrate come from the "
            "container where there is one (MP3 and Ogg headers). Otherwise the spectrum's "
            "band edge (-70 dB rule) decides: an edge below full band is matched against "
            "LAME's low-pass table for a bitrate (no codec is named: a low-pass alone does "
            "not say which codec made it). A file that is not band-limited is full band: "
            "--full-band copy copies it unchanged under its own name, skip leaves it out, "
            "process restores it anyway. Among the checkpoints installed in the model folders "
            "of the same system as --model, the one whose variant metadata is nearest in "
            "bitrate (log scale) - or, without a bitrate, nearest in cut-off - is used; "
            "with none, --model itself.")]),
        ("STDIN AND STDOUT", [(None,
            "'-' as input reads stdin and spools it to a temporary file before any work; "
            "-o - holds the whole restored file in memory and writes it to stdout at the "
            "end. Only files and folders stream block by block with bounded memory.")]),
    ],
    "train": [
        ("RESUME", [(None,
            "--resume continues the run in --out (without --out: the newest "
            "runs/RECIPE-*) from checkpoints/latest.state.pt: models, optimisers, "
            "schedulers, EMA, RNG states and step, so the continued run equals an "
            "uninterrupted one. Ctrl-C prints the command that resumes.")]),
    ],
    "degrade": [
        ("ORDER", [(None,
            "The degradations compose in the order their options are given: --mp3 64 "
            "--lowpass butter:8:5k codes first and filters the decoded audio; "
            "--resample 16000 --lowpass ... resamples first and filters at 16 kHz (the "
            "cut-off must then be below 8 kHz). A recipe's [degrade] table gives the order "
            "as steps = \"resample,lowpass\" (default: lowpass, mp3, resample). "
            "Every random field is drawn per pair from the seed in a "
            "fixed pattern, so the order does not change which values are drawn.")]),
    ],
}


def _items(items: Items) -> list[str]:
    out: list[str] = []
    for tag, text in items:
        if tag is None:
            out += [".PP", _esc(text)]
        else:
            out += [".TP", f"\\fB{_esc(tag)}\\fR", _esc(text)]
    return out


def _extra(name: str) -> list[str]:
    """The sections --help does not have, for page ``name`` ("upsr" or a command)."""
    out: list[str] = []
    for title, items in DECISIONS.get(name, []):
        out += [f".SH {_esc(title)}", *_items(items)]
    out += [".SH EXAMPLES"]
    for line in EXAMPLES.get(name, []):
        out += [".PP", ".nf", _esc(line), ".fi"]
    out += [".SH EXIT STATUS", *_items(EXIT_STATUS)]
    out += [".SH FILES", *_items(FILES.get(name, []))]
    out += [".SH ENVIRONMENT", *_items(ENVIRONMENT)]
    return out


def _page(name: str, section_title: str, body: list[str]) -> str:
    head = [f'.TH {_esc(name.upper())} 1 "{DATE}" "upsr {__version__}" "{section_title}"']
    return "\n".join(head + body) + "\n"


def render() -> dict[str, str]:
    """{file name: roff text} for every page."""
    from upsr.cli.main import command

    root = command()
    ctx = typer.Context(root, info_name="upsr")  # type: ignore[arg-type]
    pages: dict[str, str] = {}
    commands = {n: root.get_command(ctx, n) for n in root.list_commands(ctx)}  # type: ignore
    body = [".SH NAME", "upsr \\- " + _esc(root.help or ""), ".SH SYNOPSIS",
            "\\fBupsr\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]...",
            ".SH DESCRIPTION",
            _esc("upsr restores band-limited and MP3-damaged audio: it predicts the missing "
                 "high frequencies and keeps the known low band exactly."),
            ".SH COMMANDS"]
    for n, cmd in commands.items():
        body += [".TP", f"\\fBupsr\\-{_esc(n)}\\fR(1)", _esc(cmd.get_short_help_str(200))]
    body += [".SH OPTIONS", *_option_lines(root, ctx), *_extra("upsr"), ".SH SEE ALSO",
             ", ".join(f"\\fBupsr\\-{_esc(n)}\\fR(1)" for n in commands)]
    pages["upsr.1"] = _page("upsr", "upsr manual", body)
    for n, cmd in commands.items():
        sub = getattr(cmd, "commands", None)
        body = [".SH NAME", f"upsr\\-{_esc(n)} \\- " + _esc(cmd.get_short_help_str(200)),
                ".SH SYNOPSIS"]
        if sub:
            for sn, scmd in sub.items():
                body += [_usage(f"upsr {n} {sn}", scmd), ".br"]
            body += [".SH DESCRIPTION", _esc(cmd.help or "")]
            for sn, scmd in sub.items():
                body += [f".SH {_esc(n.upper())} {_esc(sn.upper())}", _esc(scmd.help or "")]
                body += _arguments(scmd) + _option_lines(scmd, ctx)
        else:
            body += [_usage(f"upsr {n}", cmd), ".SH DESCRIPTION", _esc(cmd.help or "")]
            if _arguments(cmd):
                body += [".SH ARGUMENTS", *_arguments(cmd)]
            body += [".SH OPTIONS", *_option_lines(cmd, ctx)]
        body += [*_extra(n), ".SH SEE ALSO", "\\fBupsr\\fR(1)"]
        pages[f"upsr-{n}.1"] = _page(f"upsr-{n}", "upsr manual", body)
    return pages


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "man")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
