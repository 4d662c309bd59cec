"""What ``upsr models pull apollo`` costs besides the network: a published-size Apollo
container (random weights, same keys and shapes as ``JusperLee/Apollo``'s
``pytorch_model.bin``) served from a loopback Hub (the test server of tests/models/test_hub.py).

Stages, each the median of ``--runs`` runs:

- ``pull``: the whole command (HEAD, download over 127.0.0.1, SHA-256, safe unpickle, key/shape
  check, atomic safetensors write, removal of the original), with ``--force``;
- ``sha256``: hashing the original;
- ``safe_load``: the restricted unpickler;
- ``convert+save``: ``import_checkpoint`` (unpickle again, check, write).

Usage: ``python benchmarks/pull.py [--runs 3]`` from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch
from _timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for the tests package

from tests.models.test_hub import FakeHub, apollo_container  # noqa: E402
from upsr.models.apollo import ApolloConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("upsr").setLevel(logging.ERROR)  # the random weights' digest warning
    data = apollo_container(ApolloConfig())  # the published configuration
    with tempfile.TemporaryDirectory() as tmp, FakeHub() as hub:
        hub.files[("JusperLee/Apollo", "pytorch_model.bin")] = data
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=f"{tmp}/hf", UPSR_MODEL_DIR=f"{tmp}/m")
        from upsr.models import hub as upsr_hub
        from upsr.models.importers import import_checkpoint, safe_load, sha256_file

        original = Path(tmp) / "pytorch_model.bin"
        original.write_bytes(data)
        rows = [
            ("pull", median_time(lambda: upsr_hub.pull("apollo", force=True), args.runs)),
            ("sha256", median_time(lambda: sha256_file(original), args.runs)),
            ("safe_load", median_time(lambda: safe_load(original), args.runs)),
            ("convert+save", median_time(lambda: import_checkpoint(
                "apollo", original, Path(tmp) / "x.safetensors"), args.runs)),
        ]
    print(f"Apollo container: {len(data) / 1e6:.1f} MB; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {args.runs} runs")
    print(f"{'stage':<14}{'seconds':>9}")
    for name, sec in rows:
        print(f"{name:<14}{sec:>9.2f}")


if __name__ == "__main__":
    main()
