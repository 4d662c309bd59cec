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


def _arguments(cmd: tp.Any) -> list[str]:
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    out: list[str] = []
    for p in args:
        out.append(".TP")
        out.append(f"\\fI{_esc(p.name.upper())}\\fR")
        out.append(_esc(getattr(p, "help", None) or ""))
    return out


def _usage(path: str, cmd: tp.Any) -> str:
    parts = [f"\\fB{_esc(path)}\\fR", "[\\fIOPTIONS\\fR]"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = f"\\fI{_esc(p.name.upper())}\\fR"
            if p.nargs == -1:
                name += "..."
            parts.append(name if p.required else f"[{name}]")
    return " ".join(parts)


def _page(name: str, section_title: str, body: list[str]) -> str:
    head = [f'.TH {_esc(name.upper())} 1 "{DATE}" "upsr {__version__}" "{section_title}"']
    return "\n".join(head + body) + "\n"


def render() -> dict[str, str]:
    """{file name: roff text} for every page."""
    from upsr.cli.main import app

    root = typer.main.get_command(app)
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
    body += [".SH OPTIONS", *_option_lines(root, ctx), ".SH EXIT STATUS",
             _esc("0 all good; 1 usage or set-up error (before any work); 2 at least one file "
                  "failed (the others were still processed); 130 interrupted."),
             ".SH ENVIRONMENT", ".TP", "\\fBUPSR_MODEL_DIR\\fR",
             _esc("Folder searched for model checkpoints (<name>.safetensors) before the user "
                  "cache."), ".TP", "\\fBNO_COLOR\\fR", _esc("Disables colour output."),
             ".SH SEE ALSO",
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
        body += [".SH SEE ALSO", "\\fBupsr\\fR(1)"]
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
