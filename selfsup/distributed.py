"""torchrun / DDP helpers: the one place (with the loss gathers) that knows about processes.

On one process every function here is a no-op, so the same command runs with or without torchrun.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if device.type == "cpu":
        # processes on one machine share its cores; oversubscribed OpenMP threads spin and crawl
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes, in place (e.g. DINO's centre)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
