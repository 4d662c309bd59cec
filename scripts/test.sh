#!/usr/bin/env bash
# The README's test command: install upsr with its dev tools, then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[dev]"
ruff check src tests benchmarks
mypy
python -m pytest -q -p no:cacheprovider "$@"
