"""Data-parallel training with ``torch.distributed``, as ``torchrun`` starts it.

``torchrun --nproc_per_node N train.py --config ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; each joins one process group (NCCL on
GPUs, gloo on CPUs) and trains a copy of the model wrapped in ``DistributedDataParallel``,
which averages the gradients during the backward pass. Every process walks the same batch
order (same seed); an update takes ``N × accumulate_steps`` consecutive batches and process r
trains on batches r, r + N, ... of them — so the token budget is per process, N processes make
updates N times larger, and the order of the data does not depend on N. Rank 0 alone writes
checkpoints, metrics and logs and runs validation; the others wait for its decisions.
Without torchrun the world is one process and nothing here talks to anyone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from s2s.errors import ConfigError

T = TypeVar("T")


@dataclass
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def share(self, group: Sequence[T]) -> list[T]:
        """This process's batches of an update's ``group``: r, r + N, ..."""
        return list(group[self.rank::self.size])

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true in any process (one small all-reduce)."""
        if not self.active:
            return tuple(flags)
        tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32,
                              device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tuple(bool(value) for value in tensor.tolist())

    def any_on_device(self, flag: torch.Tensor) -> torch.Tensor:
        """A 0-d bool tensor, true where ``flag`` is true in any process; not read on the host."""
        if not self.active:
            return flag
        reduced = flag.to(torch.int32)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return reduced.bool()

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the processes."""
        if not self.active:
            return tuple(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tuple(tensor.tolist())

    def decided(self, flag: bool) -> bool:
        """Rank 0's ``flag``, in every process."""
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int32, device=self._device())
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's weights broadcast to all)."""
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, wrapped: nn.Module, last: bool) -> ContextManager[object]:
        """Skip the gradient all-reduce for all but the ``last`` batch of an update."""
        if self.active and not last:
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        return (torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl" else torch.device("cpu"))


def join_world(device: torch.device) -> tuple[World, torch.device]:
    """The world torchrun's environment describes (one process without it), the process group
    joined, and the device of this process: on CUDA, GPU ``LOCAL_RANK`` of its node."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank} but this node has "
                              f"{torch.cuda.device_count()} GPUs; start at most that many "
                              f"processes per node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device
