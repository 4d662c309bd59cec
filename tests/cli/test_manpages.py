from pathlib import Path

import typer

from upsr.cli import manpages
from upsr.cli.main import app

MAN = Path(__file__).resolve().parents[2] / "man"


def test_committed_pages_are_up_to_date():
    pages = manpages.render()
    committed = {p.name: p.read_text() for p in MAN.glob("*.1")}
    assert set(committed) == set(pages), "regenerate: python -m upsr.cli.manpages man"
    for name, text in pages.items():
        assert committed[name] == text, f"{name} is stale: python -m upsr.cli.manpages man"


def test_every_option_appears_in_its_page():
    root = typer.main.get_command(app)
    pages = manpages.render()
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        page = pages[f"upsr-{name}.1"].replace("\\-", "-")
        subs = getattr(cmd, "commands", None) or {name: cmd}
        for sub in subs.values():
            for p in sub.params:
                for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
                    if p.param_type_name == "option":
                        assert opt in page, f"{opt} missing from upsr-{name}.1"
        assert f"upsr-{name}" in pages["upsr.1"].replace("\\-", "-")
