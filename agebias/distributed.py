"""Processes started by ``torchrun``: who this process is, its share of the work, and meeting the others.

torchrun (one machine, ``--nproc_per_node N``, or several, ``--nnodes/--node_rank/--rdzv_endpoint``) sets ``RANK``
(0..WORLD_SIZE-1 over all machines), ``WORLD_SIZE``, ``LOCAL_RANK`` (the process's index on its machine: its GPU,
see :func:`agebias.devices.resolve_device`) and the rendezvous address. Without it every command is rank 0 of 1.

- ``agebias finetune`` joins the process group with NCCL on CUDA and gloo on CPU: gradients pass through it.
- ``agebias embed``, the embedding step of ``agebias evaluate`` and ``agebias generate`` pass only small objects and
  wait at barriers, so they join with gloo whatever the device. Each process takes a contiguous block of the work
  (:meth:`DistInfo.share`; concatenating the blocks in rank order restores the single-process order), writes its
  part atomically, and rank 0 merges once every part is there; the other ranks then raise :class:`ShareDone`, which
  the CLI turns into exit code 0 (rank 0 alone writes the final outputs and reports).

Groups joined here wait up to :data:`TIMEOUT` at a barrier (torch's default, 30 minutes, is shorter than the
difference between the first and the last process of a long generation run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

TIMEOUT = timedelta(hours=24)


class ShareDone(Exception):
    """Raised by a process other than rank 0 once its share of a sharded command is written; rank 0 merges the
    shares and carries on alone (the CLI exits 0 on it)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int, rank: int | None = None) -> range:
        """Positions ``[n*k//W, n*(k+1)//W)`` of ``n`` items (end exclusive) for rank ``k`` (default: this one):
        contiguous, disjoint, sizes differing by at most one."""
        k = self.rank if rank is None else rank
        return range(n * k // self.world_size, n * (k + 1) // self.world_size)


def from_env() -> DistInfo:
    """This process's rank, world size and local rank from torchrun's variables (nothing is joined)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group when launched by torchrun with more than one process (NCCL for ``cuda``, else
    gloo); an already joined group is used as it is."""
    import torch.distributed as dist

    info = from_env()
    if not info.enabled or dist.is_initialized():
        return info
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)
    return DistInfo(info.rank, info.world_size, info.local_rank, initialised_here=True)


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across(info: DistInfo, value: float, device) -> float:
    """The mean of ``value`` over the processes."""
    if not info.enabled:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this ``info`` joined it."""
    import torch.distributed as dist

    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def finish_share(info: DistInfo) -> None:
    """On a process other than rank 0: leave the group and raise :class:`ShareDone` (its share is written)."""
    if info.is_main:
        return
    shutdown(info)
    raise ShareDone(f"rank {info.rank}: share written; rank 0 merges")
