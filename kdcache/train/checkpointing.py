"""What a training checkpoint holds, and how a run is checked against one before it resumes.

A checkpoint is one safetensors file written by rank 0 (:func:`kdcache.train.statefile.save_state`: tensors in the body,
the rest as JSON in the header): the student, the loss terms' parameters, the optimiser and LR schedule of the
current stage, the sampler position (:meth:`kdcache.train.sampler.EpochBatchSampler.state`), the partial loss sums of a
half-done epoch, and the history of finished epochs. Every rank of a resumed run reads the same file, so it must be
on storage they all see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcache.errors import CheckpointError, say
from kdcache.train.pinning import check_overrides, check_record
from kdcache.train.sampler import EpochBatchSampler
from kdcache.train.stages import StageConfig
from kdcache.train.statefile import load_state
from kdcache.train.world import World, all_reduce_sum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointing:
    """Where :func:`kdcache.train.fit` keeps its training state, how often it saves it, and whether it starts from it.

    The state is saved at the end of every epoch and, with ``every_steps``, after every ``every_steps`` optimiser
    steps (global batches) of an epoch. With ``resume`` an existing file is continued from; when there is none the
    run starts from the beginning. A run that differs from the one that wrote the file in a setting that decides the
    remaining steps is refused (:mod:`kdcache.train.pinning`), unless ``allow_changes`` names that kind of change
    (``"lr"``, ``"weight_decay"``, ``"store"``, ``"unpinned"``; each logged). Refusals name the settings as the
    caller writes them (:func:`kdcache.errors.say`): ``fit``'s parameters, or pipeline keys and flags.
    """

    path: Path
    every_steps: int = 0
    resume: bool = False
    allow_changes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_overrides(tuple(self.allow_changes))


class LossSums:
    """Loss (and each weighted part) times samples, summed over an epoch on this rank. A mid-epoch checkpoint keeps
    the sums over all ranks so far, and rank 0 of the resumed run starts from them: the resumed epoch reports the
    loss an uninterrupted one would."""

    def __init__(self, names: list[str], start: dict[str, float] | None = None) -> None:
        self.keys = ["count", "loss", *names]
        self.sums = dict.fromkeys(self.keys, 0.0) | (start or {})

    def add(self, loss: float, parts: dict[str, float], n: int) -> None:
        self.sums["count"] += n
        self.sums["loss"] += loss * n
        for name, value in parts.items():
            self.sums[name] += value * n

    def reduced(self, world: World) -> dict[str, float]:
        """The sums over every rank (a collective: all ranks call it)."""
        values = all_reduce_sum(world, torch.tensor([self.sums[k] for k in self.keys], dtype=torch.float64))
        return dict(zip(self.keys, values.tolist(), strict=True))


def stage_plan(stages: list[StageConfig]) -> list[list[Any]]:
    """(name, epochs) of every stage: what maps a checkpoint's epoch to a stage and sizes each LR schedule."""
    return [[stage.name, stage.epochs] for stage in stages]


def resume_state(
    checkpoint: Checkpointing | None,
    stages: list[StageConfig],
    student: nn.Module,
    sampler: EpochBatchSampler,
    record: dict[str, Any],
) -> dict[str, Any] | None:
    """The checkpoint to continue from, checked against this run (its pinned ``record`` first) and already loaded
    into ``student`` and ``sampler``; None for a run from the beginning."""
    if checkpoint is None or not checkpoint.resume:
        return None
    if not Path(checkpoint.path).is_file():
        log.warning("no training checkpoint at %s: training from the beginning", checkpoint.path)
        return None
    state = load_state(checkpoint.path)
    allowed = tuple(checkpoint.allow_changes)
    check_record(state.get("pinned"), record, path=str(checkpoint.path), allowed=allowed)
    if state["stages"] != stage_plan(stages):
        raise CheckpointError(
            f"cannot resume from {str(checkpoint.path)!r}: it was written for stages (name, epochs) "
            f"{state['stages']}, this run has {stage_plan(stages)}. Resume with the original stages or start a new "
            f"run ({say('resume=False (or a new Checkpointing path)', 'without --resume')})"
        )
    sampler.resume(state["sampler"])
    restore(state, student=student)
    log.info("resuming from %s at epoch %d, step %d", checkpoint.path, sampler.epoch, sampler.start_step)
    return state


def restore(state: dict[str, Any], **parts: Any) -> None:
    """Load each named part (``student=model``, ``optimizer=opt``, ...) from the checkpoint ``state``."""
    for name, part in parts.items():
        try:
            part.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the training checkpoint's {name} does not fit this run ({type(exc).__name__}: {exc}). Resume with "
                f"the same model, losses and optimiser, or start a new run ({say('resume=False (or a new Checkpointing path)', 'without --resume')})"
            ) from None
