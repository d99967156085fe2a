"""Which process this is among the processes that train one student together (torch.distributed).

A :class:`World` is created once, from the launcher's environment (``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``), by the command line; everything below it receives the object. A single process is
``World()``: rank 0 of 1, and no process group is ever created for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kdcache.errors import ConfigError, say


@dataclass(frozen=True)
class World:
    """Rank of this process, number of processes, and the rank on this machine (which GPU it drives).

    >>> World()  # one process
    World(rank=0, world_size=1, local_rank=0)
    >>> World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).is_main
    False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(
                f"invalid process identity rank={self.rank}, world_size={self.world_size}, "
                f"local_rank={self.local_rank}: expected 0 <= rank < world_size and local_rank >= 0. Launch with "
                f"`torchrun --nproc-per-node N {say('your_script.py', '-m kdcache ...')}`, which sets RANK, "
                "WORLD_SIZE and LOCAL_RANK"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """The identity ``torchrun`` (or any launcher following its convention) put in the environment; a single
        process when ``WORLD_SIZE`` is not set."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            rank, size, local = int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            found = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers; found {found}") from None
        return cls(rank, size, local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, results and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device | str) -> torch.device:
        """The device this rank trains on: ``cuda`` becomes ``cuda:<local_rank>`` when several processes share a
        machine; other devices are used as given."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device


@contextmanager
def process_group(
    world: World, device: torch.device | str, *, timeout: timedelta = timedelta(minutes=10)
) -> Iterator[torch.device]:
    """Join the default process group for the duration of the block (gloo on CPU, nccl on CUDA) and yield this
    rank's device. A single process joins nothing. A group that the caller already initialised is used as is and
    left open. ``timeout`` bounds every wait on the other ranks.

    Rendezvous follows torch's ``env://`` convention (``MASTER_ADDR``/``MASTER_PORT``, set by ``torchrun``).
    """
    device = world.device(device)
    if not world.distributed:
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        check_group(world)
        yield device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size, timeout=timeout)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def check_group(world: World) -> None:
    """Refuse to train as part of ``world`` unless the default process group is that world."""
    if not world.distributed:
        return
    found = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else None
    if found != (world.rank, world.world_size):
        raise ConfigError(
            f"training as rank {world.rank} of {world.world_size} needs the default process group of that world; "
            f"found {'none' if found is None else f'rank {found[0]} of {found[1]}'}. Wrap the call in "
            "`with kdcache.train.process_group(world, device):` or launch with torchrun"
        )


def all_reduce_sum(world: World, values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every rank (returned unchanged for one process); the result is on ``values``' device.

    NCCL reduces only CUDA tensors, so the sum travels through this rank's GPU there.
    """
    if not world.distributed:
        return values
    work = (
        values.to(torch.device("cuda", torch.cuda.current_device())) if dist.get_backend() == "nccl" else values.clone()
    )
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(values.device)
