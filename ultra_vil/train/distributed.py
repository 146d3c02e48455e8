"""One process or many: the little the training engine needs to know about torch.distributed.

`torchrun` starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into a
process group (NCCL between GPUs, gloo on CPU) and picks this process's device. Without those variables
everything runs in one process and the reductions below are no-ops, so the engine has a single code path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ultra_vil.device import resolve_device

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size` processes and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only process that logs progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 without torchrun), usable before `setup`."""
    return int(os.environ.get("RANK", "0"))


def setup(device_spec: str) -> DistInfo:
    """Join the process group if torchrun started us (WORLD_SIZE > 1), else describe a single process.

    Under torchrun every process uses cuda:LOCAL_RANK (an explicit --device cuda:N is overridden, with a
    warning, since N would be the same for all processes) or the CPU with gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=resolve_device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_spec.startswith("cuda:"):
        LOGGER.warning("--device %s ignored under torchrun: each process uses cuda:LOCAL_RANK", device_spec)
        device_spec = "cuda"
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over all processes (in place; returns `t`); the identity in a single process."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
