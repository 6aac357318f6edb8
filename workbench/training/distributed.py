"""Data parallelism through torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N -m workbench sft ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; each
process then trains on its shard of every global batch inside DistributedDataParallel
(gloo on CPU, nccl on GPU). Without torchrun everything below is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> Dist:
    """Join the process group torchrun describes in the environment (once), pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(value: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for convenience)."""
    if ctx.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj, ctx: Dist):
    """Rank 0's value of a picklable object, on every rank."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
