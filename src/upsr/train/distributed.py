"""Distributed set-up for ``upsr train`` under ``torchrun``.

torchrun (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and the rendezvous variables; with ``WORLD_SIZE > 1`` we join the process group — NCCL when
training on CUDA, gloo on CPU — and each rank uses ``cuda:LOCAL_RANK`` or the CPU. Without
torchrun everything here is a no-op on a world of one.
"""

from __future__ import annotations

import hashlib
import os
import typing as tp
from dataclasses import dataclass

import torch
import torch.distributed as dist

from upsr.errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda``/``cpu`` as asked."""
    if request not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {request!r})")
    if request == "cpu" or (request == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group when there is one; the device of this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast(d: Dist, obj: tp.Any) -> tp.Any:
    """Rank 0's ``obj`` on every rank (e.g. the run folder's timestamped name)."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in registration order.

    Buffers are left out: BatchNorm running statistics (AEROMamba's FTB) are updated from each
    rank's own batch and made equal again by DDP's broadcast from rank 0 at the next forward,
    so after a step they legitimately differ; checkpoints hold rank 0's.
    """
    h = hashlib.sha256()
    for key, value in module.named_parameters():
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_digests(d: Dist, module: torch.nn.Module) -> list[str]:
    """Every rank's :func:`digest` of ``module`` (a list of one outside torchrun)."""
    own = digest(module)
    if not d.active:
        return [own]
    out: list[tp.Any] = [None] * d.world
    dist.all_gather_object(out, own)
    return [str(x) for x in out]
