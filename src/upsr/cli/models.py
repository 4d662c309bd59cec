"""``upsr models list | info NAME | import KIND OFFICIAL_FILE OUT``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common

app = typer.Typer(help="List, inspect and import models.", no_args_is_help=True,
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


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the systems upsr knows and the checkpoints installed in the model folders."""
    from upsr import checkpoint, models

    rows = []
    for name in models.names():
        s = models.spec(name)
        rows.append({"name": name, "system": s.system, "kind": "system", "path": ""})
    for d in models.model_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.safetensors")):
            try:
                meta = checkpoint.read_metadata(f)
            except Exception as exc:  # a broken file in the folder must not hide the rest
                rows.append({"name": f.stem, "system": f"unreadable: {exc}", "kind": "checkpoint",
                             "path": str(f)})
                continue
            rows.append({"name": f.stem, "system": meta["model"], "kind": "checkpoint",
                         "path": str(f), "step": meta.get("step", "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("name", "kind", "system", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], r["system"], r["path"])
    _common.stdout_console().print(table)


@app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="A system name or a checkpoint file/name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rates, channels, context, parameter count, config and training recipe of a model."""
    from upsr import checkpoint, models

    path = models.find_checkpoint(name)
    if path is not None:
        meta = checkpoint.read_metadata(path)
        model = checkpoint.load(path)
        desc = _describe(model) | {
            "path": str(path), "system": models.spec(meta["model"]).system,
            "config": json.loads(meta.get("config") or "{}"), "step": meta.get("step", ""),
            "metrics": json.loads(meta.get("metrics") or "{}"), "recipe": meta.get("recipe", ""),
        }
    else:
        model = models.build(name)
        desc = _describe(model) | {"system": models.spec(name).system,
                                   "config": model.config_dict(), "weights": "none installed"}
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


@app.command("import")
def import_(
    kind: Annotated[str, typer.Argument(help="System of the official checkpoint "
                                        "(apollo, wave-u-mamba, aeromamba).")],
    official: Annotated[Path, typer.Argument(help="The official checkpoint file.")],
    out: Annotated[Path, typer.Argument(help="Where to write the upsr .safetensors file.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT.")] = False,
) -> None:
    """Convert an official checkpoint into a upsr checkpoint (nothing in it is executed)."""
    from upsr.errors import UsageError
    from upsr.models.importers import import_official

    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the output must end in .safetensors")
    path = import_official(kind, official, out)
    print(path)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")
