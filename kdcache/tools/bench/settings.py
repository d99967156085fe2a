"""What one bench run measures and how big: the full preset and the ``--quick`` one, plus the thread settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch


def default_threads() -> int:
    """Compute threads for torch: every core but one, which stays free for the shard writer or reader thread
    (PERFORMANCE.md: one compute thread plus one writer thread hid 87-89% of the writes on 2 cores)."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of every figure. ``full()`` is ``make bench``; ``quick()`` runs the same code on smaller inputs."""

    quick: bool
    threads: int
    device: str = "cpu"
    seed: int = 0
    # figure 1: stage-two steps
    resnet_batch: int = 256
    resnet_steps: int = 2
    resnet_classes: int = 100
    digits_samples: int | None = None  # None: the whole digits train split
    step_rounds: int = 5
    # figure 2: stage one
    stage_one_samples: int = 1024
    stage_one_batch: int = 256
    stage_one_shard: int = 256
    stage_one_rounds: int = 3
    # figures 3 and 5: target reads
    read_classes: int = 1000
    read_batch: int = 256
    read_sizes: tuple[int, int] = (32768, 262144)
    read_rounds: int = 3
    peer_batches: int = 32  # figure 8: batches of each order every format reads
    # figure 4: bytes and memory
    bytes_samples: int = 256
    memory_repeats: int = 2
    warmup: int = 1
    # figure 6: token-level stage one (sequences of the stdlib_lm pipeline's length) and stage-two steps
    token_sequences: int = 512
    token_batch: int = 32
    token_shard: int = 128
    token_step_rounds: int = 3
    # figure 10: start time of commands that need no torch
    startup_rounds: int = 5

    @classmethod
    def full(cls, *, threads: int | None = None, device: str = "cpu") -> BenchSettings:
        return cls(quick=False, threads=threads or default_threads(), device=device)

    @classmethod
    def quick_preset(cls, *, threads: int | None = None, device: str = "cpu") -> BenchSettings:
        return replace(
            cls.full(threads=threads, device=device),
            quick=True,
            resnet_batch=32,
            digits_samples=640,
            step_rounds=3,
            stage_one_samples=128,
            stage_one_batch=32,
            stage_one_shard=64,
            stage_one_rounds=2,
            read_sizes=(4096, 16384),
            read_rounds=2,
            peer_batches=8,
            bytes_samples=64,
            memory_repeats=1,
            token_sequences=64,
            token_shard=32,
            token_step_rounds=2,
            startup_rounds=3,
        )

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def thread_settings(threads: int) -> Iterator[None]:
    """Pin torch (and, through the environment, subprocesses' OpenMP/MKL) to ``threads``; restore on exit.

    HELPERS.md: several processes each using torch's default threads on 2 shared cores make small ops ~100x
    slower, so the bench never leaves the thread count to chance.
    """
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_threads = torch.get_num_threads()
    os.environ.update({k: str(threads) for k in keys})
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
