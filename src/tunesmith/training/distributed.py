"""Multi-process training under torchrun: process group set-up, and the few collectives the loop needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process; without them the run is a single
process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each process takes its own GPU; CPU processes share the CPU."""
        if self.enabled and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (for stop signals)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def share(self, value):
        """Rank 0's value, on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (preparing data into the shared cache); the others then reuse its work."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def setup_distributed(device: torch.device) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context


def teardown_distributed(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def wrap_fsdp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: each transformer block is its own shard group, then the rest of the model; parameters become DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..models.weights import transformer_blocks

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (a shard) gathered whole; a plain tensor as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def no_sync(model: torch.nn.Module, last_micro_batch: bool):
    """Gradient all-reduce once per optimizer step, on the last micro-batch, not on every one."""
    if last_micro_batch or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()
