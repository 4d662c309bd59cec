"""A test never skips because a hard dependency (pyproject ``dependencies``) or upsr's own
module is missing: that is a broken install, and it must fail."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _hard_dependencies() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].strip().lower().replace("-", "_")
             for d in deps}
    return names | {"upsr"}


def test_no_importorskip_on_hard_dependencies():
    hard = _hard_dependencies()
    assert {"torch", "lameenc", "numpy"} <= hard
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for module in re.findall(r"importorskip\(\s*['\"]([\w.]+)['\"]", line):
                if module.split(".")[0].lower() in hard:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {module}")
    assert not offenders, offenders
