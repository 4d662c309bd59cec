from pathlib import Path

import pytest
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


def test_pages_have_the_sections_help_lacks():
    pages = manpages.render()
    for name, text in pages.items():
        for section in ("EXAMPLES", "EXIT STATUS", "FILES", "ENVIRONMENT"):
            assert f"\n.SH {section}\n" in text, f"{name} lacks {section}"
        assert "\\fB130\\fR" in text and "UPSR_MODEL_DIR" in text
        for bad in ("<str>", "<int>", "<float>", "<path>", "<list[", "{"):
            assert bad not in text.lower(), f"{name} shows {bad}"
    enhance = pages["upsr-enhance.1"].replace("\\-", "-")
    for section in ("RESUME", "BITRATE-AUTO", "STDIN AND STDOUT"):
        assert f"\n.SH {section}\n" in enhance
    assert "\\fIPATH\\fR..." in enhance
    assert "x.mp3.flac" in enhance and "in memory" in enhance
    assert "\n.SH RESUME\n" in pages["upsr-train.1"]
    assert "\n.SH ORDER\n" in pages["upsr-degrade.1"]


def test_pages_render_with_man(tmp_path):
    import shutil
    import subprocess

    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    for name in ("upsr-enhance.1", "upsr.1"):
        res = subprocess.run(["man", "-l", str(MAN / name)], capture_output=True, text=True,
                             env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MANPAGER": "cat"})
        assert res.returncode == 0, res.stderr
        assert "EXIT STATUS" in res.stdout and "EXAMPLES" in res.stdout
