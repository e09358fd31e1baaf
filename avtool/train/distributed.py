"""One code path with or without torchrun: the process's rank, world and device come from the
environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE), and a single process is a world of one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from avtool.errors import AvtoolError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto` (CUDA when there is a GPU), `cuda` or `cpu`, as this rank's device."""
    if device not in ("auto", "cuda", "cpu"):
        raise AvtoolError(f"--device must be auto, cuda or cpu, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AvtoolError("--device cuda but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise AvtoolError(f"local rank {local_rank} needs GPU {local_rank}, but this node has {count} GPU(s)")
    return torch.device("cuda", local_rank)


def setup(device: str) -> DistEnv:
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        # A generous timeout: rank 0 may evaluate or write a checkpoint while the others wait.
        dist.init_process_group(backend, timeout=timedelta(minutes=30), device_id=torch_device
                                if torch_device.type == "cuda" else None)  # fmt: skip
    return DistEnv(rank, local_rank, world_size, torch_device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` on every rank (small results: evaluation embeddings, counts)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensor(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, without gradient (ids, labels)."""
    if not env.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(env.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
