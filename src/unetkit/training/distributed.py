"""Distributed data parallel (PyTorch DDP) under `torchrun`, and the single-process fallback.

`torchrun --nproc_per_node N -m unetkit.cli.main train ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR; `DistContext.from_env()` joins the process group (NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        ctx = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(ctx.local_rank)
            dist.init_process_group(backend=backend, rank=ctx.rank, world_size=world)
        return ctx

    def device(self, requested: str = "auto") -> torch.device:
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (a one-element list without DDP)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
