"""``upsr models list | info NAME | import SYSTEM OFFICIAL_FILE OUT | pull NAME``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common

app = typer.Typer(help="List, inspect, import and download models.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


def _describe(model) -> dict:  # model: Restorer
    return {
        "name": model.name,
        "in_rate": model.in_rate,
        "out_rate": model.out_rate,
        "channels": model.channels,
        "context_s": round(float(model.context_s), 4),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _size(n: int) -> str:
    if n <= 0:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _checkpoint_row(name: str, f: Path, seen: dict[str, Path]) -> dict:
    """One installed file: usable or why not, where from, licence, size."""
    from upsr import checkpoint, models

    row = {"name": name, "system": "", "status": "installed", "size_bytes": f.stat().st_size,
           "from": "", "licence": "", "variant": {}, "path": str(f)}
    if name in seen:
        row["status"] = f"hidden by {seen[name]}"
    try:
        meta = checkpoint.read_metadata(f)
    except Exception as exc:  # a broken file in the folder must not hide the rest
        row["status"] = f"unusable: {exc}"
        return row
    system = models.canonical(meta["model"])
    row["system"] = system
    if system not in models.names():
        row["status"] = f"unusable: this upsr has no {system!r} model"
    src = checkpoint.json_field(meta, "source")
    row["variant"] = checkpoint.json_field(meta, "variant")
    if src.get("repo"):
        row["from"] = f"hf:{src['repo']}@{str(src.get('revision', ''))[:12]}"
    elif src.get("file"):
        row["from"] = f"imported {src['file']}"
    elif meta.get("recipe"):
        row["from"] = f"trained (step {meta.get('step') or '?'})"
    else:
        row["from"] = "upsr checkpoint"
    row["licence"] = str(src.get("licence", ""))
    return row


def model_rows() -> list[dict]:
    """Every system and every installed checkpoint: status, where from, licence, size."""
    from upsr import models
    from upsr.models import hub

    files: list[tuple[str, Path]] = []
    for d in models.model_dirs():
        if d.is_dir():
            files += [(f.stem, f) for f in sorted(d.glob("*.safetensors"))]
    seen: dict[str, Path] = {}
    installed: dict[str, list[dict]] = {}
    for stem, f in files:
        row = _checkpoint_row(stem, f, seen)
        seen.setdefault(stem, f)
        installed.setdefault(stem, []).append(row)
    rows: list[dict] = []
    wanted = list(models.names()) + [n for n in hub.SOURCES if n not in models.names()]
    for name in wanted:
        src = hub.SOURCES.get(name)
        if name in installed:
            for row in installed.pop(name):
                row["licence"] = row["licence"] or (src.licence if src else "")
                row["pull"] = "yes" if src and src.pullable else "-"
                rows.append(row)
            continue
        row = {"name": name, "system": name, "status": "", "size_bytes": 0, "from": "",
               "licence": src.licence if src else "", "variant": {}, "path": "",
               "pull": "-"}
        if src is not None:
            row["system"] = src.system
            row["from"] = src.where
        if name in models.names() and not getattr(models.spec(name).cls, "needs_weights", True):
            row["status"] = "built in (no weights)"
        elif src is None:
            default = hub.source(name)
            row["status"] = (f"see {default.name}" if default is not None
                             else "not installed (import or train weights)")
        elif src.system not in models.names():
            row["status"] = f"not available (needs the {src.system} model)"
        elif src.pullable:
            row["status"], row["pull"] = "not installed", "yes"
        else:
            row["status"], row["pull"] = "not installed", "browser"
        rows.append(row)
    for group in installed.values():
        for row in group:
            row["pull"] = "-"
            rows.append(row)
    return rows


def _print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Plain aligned columns; nothing is truncated (pipes and narrow terminals included)."""
    cells = [[h for _, h in columns]] + [[str(r[k]) if r[k] != "" else "-" for k, _ in columns]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Show every system and installed checkpoint: whether it is installed and usable, where
    it came from, its licence, its size on disk, and whether 'upsr models pull' can fetch it
    (yes), it needs a browser download (browser), or neither (-)."""
    _common.setup_logging(quiet, verbose)
    rows = model_rows()
    for r in rows:
        r["size"] = _size(int(r["size_bytes"]))
        r["variant_text"] = ",".join(f"{k}={v:g}" for k, v in r["variant"].items())
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k not in ("size", "variant_text")}
                          for r in rows], indent=2))
        return
    _print_table(rows, [("name", "NAME"), ("system", "SYSTEM"), ("status", "STATUS"),
                        ("size", "SIZE"), ("pull", "PULL"), ("from", "FROM"),
                        ("licence", "LICENCE"), ("variant_text", "VARIANT"),
                        ("path", "PATH")])


@app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="A system name, an installed name or a .safetensors "
                                        "file.", metavar="NAME", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Rates, channels, context, parameter count, config, training recipe, variant and source
    (where converted weights came from) of a model."""
    _common.setup_logging(quiet, verbose)
    from upsr import checkpoint, models

    path = models.find_checkpoint(name)
    if path is not None:
        meta = checkpoint.read_metadata(path)
        model = checkpoint.load(path)
        desc = _describe(model) | {
            "path": str(path), "system": models.spec(meta["model"]).system,
            "config": json.loads(meta.get("config") or "{}"), "step": meta.get("step", ""),
            "metrics": json.loads(meta.get("metrics") or "{}"), "recipe": meta.get("recipe", ""),
            "variant": checkpoint.json_field(meta, "variant"),
            "source": checkpoint.json_field(meta, "source"),
        }
    else:
        from upsr.models import hub

        src = hub.source(name)
        if src is not None:
            hub.check_system(src)
        system = src.system if src is not None else name
        model = models.build(system)
        weights = "none needed" if not getattr(model, "needs_weights", True) else (
            "none installed" + (f" ('upsr models pull {src.name}')" if src and src.pullable
                                else f" (download from {src.page})" if src else ""))
        desc = _describe(model) | {"system": models.spec(system).system,
                                   "config": model.config_dict(), "weights": weights}
    if as_json:
        print(json.dumps(desc, indent=2))
        return
    for key, value in desc.items():
        if key == "recipe" and value:
            print("recipe:")
            print("  " + str(value).replace("\n", "\n  "))
        elif isinstance(value, dict):
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        else:
            print(f"{key}: {value}")


def _parse_variant(items: list[str]) -> dict[str, float]:
    from upsr.errors import UsageError

    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--variant {item!r}: expected KEY=NUMBER, e.g. bitrate_kbps=128")
    return out


@app.command("import")
def import_(
    kind: Annotated[str, typer.Argument(help="System of the official checkpoint "
                                        "(apollo, wave-u-mamba, aeromamba).", metavar="SYSTEM",
                                        show_default=False)],
    official: Annotated[Path, typer.Argument(help="The official checkpoint file (.bin, .ckpt, "
                                             ".th, .pt).", metavar="OFFICIAL_FILE",
                                             show_default=False)],
    out: Annotated[Path | None, typer.Argument(
        help="Where to write the upsr .safetensors file (default: SYSTEM.safetensors in the "
             "model folder, $UPSR_MODEL_DIR or ~/.cache/upsr/models, so that --model SYSTEM "
             "finds it).", metavar="[OUT.safetensors]", show_default=False)] = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", metavar="KEY=VALUE", show_default=False,
        help="What the weights were trained for, read by 'enhance --bitrate-auto' to pick the "
             "nearest installed checkpoint: bitrate_kbps=N or cutoff_hz=N (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT.")] = False,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Convert an official checkpoint into a upsr checkpoint (nothing in it is executed).

    Files without a stored configuration (community Apollo checkpoints, Lightning .ckpt files
    with 'audio_model.' keys, Wave-U-Mamba and AEROMamba widths) get it read off the tensor
    shapes; the inferred values are printed on stderr."""
    _common.setup_logging(quiet, verbose)
    from upsr import models
    from upsr.errors import UsageError
    from upsr.models import hub
    from upsr.models.importers import import_checkpoint

    if out is None:
        out = hub.install_dir() / f"{models.spec(kind).name}.safetensors"
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the output must end in .safetensors")
    done = import_checkpoint(kind, official, out, variant=_parse_variant(variant or []))
    if not quiet:
        print(f"upsr: {done.describe()}", file=sys.stderr)
    print(done.path)


@app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="What to fetch: apollo, audiosr-basic, "
                                        "audiosr-speech ('upsr models list' shows all).",
                                        metavar="NAME", show_default=False)],
    revision: Annotated[str | None, typer.Option(
        "--revision", metavar="REV", show_default=False,
        help="Branch, tag or commit of the Hugging Face repository (default: main).")] = None,
    keep_original: Annotated[bool, typer.Option(
        "--keep-original", help="Keep the downloaded original under "
        "<model folder>/originals/NAME/ (deleted after conversion otherwise).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Download and convert again even if "
                                        "the installed file is up to date.")] = False,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Download a system's published weights, convert them with the safe importer and
    install NAME.safetensors in the model folder ($UPSR_MODEL_DIR, else ~/.cache/upsr/models),
    recording source, revision, SHA-256 of the original, licence and date.

    Downloads use huggingface_hub: HF_ENDPOINT, HF_HOME, HF_TOKEN and resume work as for any
    Hub client; UPSR_OFFLINE=1 or HF_HUB_OFFLINE=1 forbid them. Weights published only behind
    a web page (wave-u-mamba, aeromamba) are not fetched: the page and the 'upsr models
    import' command to run on the downloaded file are printed, exit status 1. The printed line
    on stdout is the installed file."""
    _common.setup_logging(quiet, verbose)
    from upsr.models import hub

    try:
        done = hub.pull(name, revision=revision, keep_original=keep_original, force=force)
    except hub.BrowserOnly as exc:
        _common.error(exc.lines[0])
        for line in exc.lines[1:]:
            print(line, file=sys.stderr)
        raise typer.Exit(_common.EXIT_USAGE) from None
    if not quiet:
        print(f"upsr: {done.describe}", file=sys.stderr)
    print(done.path)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")
