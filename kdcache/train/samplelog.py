"""An audit log of the samples each training step consumed, per rank: the evidence that resume is exact.

Each rank appends JSON lines to ``<dir>/rank<r>.jsonl``: a ``start`` record when a run begins (the run's id and the
epoch and step it starts at) and one record per completed optimiser step (run, epoch, step, the sample indices this
rank trained on). A run killed after its last checkpoint has logged steps whose effect the checkpoint does not hold;
the next run restarts at or before them and logs them again. :func:`consumed_samples` drops those undone records,
so what it returns is what the final model was trained on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from kdcache.train.world import World, all_reduce_sum


class SampleLog:
    """This rank's log file; ``fresh`` starts a new log (a new run), otherwise records are appended (a resumed run).

    Constructing it is a collective: the ranks agree on the run id (rank 0's clock), so a later run always has a
    larger id than an earlier one.
    """

    def __init__(self, directory: str | Path, world: World, *, fresh: bool, epoch: int, step: int) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if fresh and world.is_main:  # files of ranks a previous, larger run had
            for stale in path.glob("rank*.jsonl"):
                if int(stale.stem.removeprefix("rank")) >= world.world_size:
                    stale.unlink()
        clock = torch.tensor([time.time() if world.is_main else 0.0], dtype=torch.float64)
        self.run = float(all_reduce_sum(world, clock).item())
        self._file = open(path / f"rank{world.rank}.jsonl", "w" if fresh else "a", buffering=1)  # noqa: SIM115  (open for the run; close() closes it)
        self._write({"event": "start", "epoch": epoch, "step": step, "world_size": world.world_size})

    def record(self, epoch: int, step: int, indices: np.ndarray) -> None:
        """Step ``step`` of epoch ``epoch`` trained this rank on ``indices`` (written and flushed at once)."""
        self._write({"event": "step", "epoch": epoch, "step": step, "indices": np.asarray(indices).tolist()})

    def close(self) -> None:
        self._file.close()

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps({"run": self.run, **record}) + "\n")


def consumed_samples(directory: str | Path) -> dict[int, np.ndarray]:
    """The samples each epoch trained on, over every rank and run, in (step, rank) order.

    A step record is undone when a later run started at or before its (epoch, step): that run restored a checkpoint
    taken before the step and trained it again. Every epoch's array is a permutation of the training set when
    nothing was skipped or repeated (less at most ``world_size - 1`` tail samples: see :mod:`kdcache.train.sampler`).
    """
    records = []
    for path in sorted(Path(directory).glob("rank*.jsonl")):
        rank = int(path.stem.removeprefix("rank"))
        records += [{**r, "rank": rank} for r in _read_lines(path)]
    starts = {r["run"]: (r["epoch"], r["step"]) for r in records if r["event"] == "start"}
    kept: dict[int, list[tuple[int, int, list[int]]]] = {}
    for r in records:
        position = (r["epoch"], r["step"])
        if r["event"] != "step" or any(run > r["run"] and at <= position for run, at in starts.items()):
            continue
        kept.setdefault(r["epoch"], []).append((r["step"], r["rank"], r["indices"]))
    return {
        epoch: np.asarray([i for _, _, indices in sorted(steps) for i in indices], dtype=np.int64)
        for epoch, steps in sorted(kept.items())
    }


def _read_lines(path: Path) -> list[dict]:
    """The records of one file; a last line cut short by a crash in mid-write is left out."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
    return records
