"""The training loop: stages of (losses, optimiser, epochs), teacher targets cached or live.

The loop never builds a teacher for cached KD: targets arrive with the batch. For the online baseline a
:class:`LiveTeacher` computes the same targets each step with the same extraction code, so both feed the losses
identical kinds of tensors.

The same loop runs in one process or in each of W processes under torch.distributed (DDP, see
docs/distributed-training.md): ``batch_size`` is the global batch, each rank trains on its part of it
(:mod:`kdcache.train.sampler`) and DDP averages the gradients, each rank's loss weighted by its share of the batch, so a
step equals one process's step on the whole global batch (BatchNorm statistics aside: they stay per rank). With
:class:`Checkpointing` the loop saves its whole state (student, loss-term parameters, optimiser, LR schedule, sampler
position, history) and resumes from it mid-epoch, on the same or another number of processes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.losses import LossSetup, StepOutputs, build_objective, check_task_classes
from kdcache.metrics import task_metric
from kdcache.train.checkpointing import Checkpointing, LossSums, restore, resume_state, stage_plan
from kdcache.train.data import ViewDataset
from kdcache.train.evaluate import EpochLog, TrainResult, evaluate
from kdcache.train.live import TargetSource, batch_targets
from kdcache.train.loader import batch_loader, set_loader_epoch
from kdcache.train.pinning import run_record
from kdcache.train.samplelog import SampleLog
from kdcache.train.sampler import EpochBatchSampler
from kdcache.train.stages import StageConfig, build_optimizer, build_schedule, freeze, retune
from kdcache.train.statefile import save_state
from kdcache.train.world import World, check_group

log = logging.getLogger(__name__)


def fit(
    student: nn.Module,
    train_data: ViewDataset,
    test_data: ViewDataset | None,
    *,
    stages: list[StageConfig],
    setup: LossSetup,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    targets: TargetSource = batch_targets,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "train",
    world: World | None = None,
    checkpoint: Checkpointing | None = None,
    sample_log: str | Path | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train ``student`` through ``stages`` in order, evaluating on ``test_data`` after every epoch.

    ``batch_size`` is the global batch. With ``world`` of several processes (inside
    :func:`kdcache.train.process_group`) every rank calls ``fit`` with the same arguments and trains on its part of
    each batch under DDP. ``checkpoint`` saves (and with ``resume`` restores) the training state, refusing to resume
    into a run that differs in a setting that decides the remaining steps (:mod:`kdcache.train.pinning`); ``sample_log``
    names a directory where each rank logs the sample indices of every step (:mod:`kdcache.train.samplelog`);
    ``stop_after_steps`` kills the process with SIGKILL after that many steps of this call, like a crash, to drill
    recovery.
    """
    world = world or World()
    check_group(world)
    device = torch.device(device)
    student.to(device)
    loader = batch_loader(
        train_data,
        batch_size=batch_size,
        seed=seed,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        world=world,
    )
    record = run_record(student, train_data, stages=stages, setup=setup, batch_size=batch_size, seed=seed,
                        targets=targets)  # fmt: skip
    state = resume_state(checkpoint, stages, student, loader.sampler, record)
    trainer = _Trainer(student, loader, world=world, device=device, targets=targets, seed=seed,
                       plan=stage_plan(stages), state=state, checkpoint=checkpoint,
                       stop_after_steps=stop_after_steps)  # fmt: skip
    trainer.pinned = record
    if sample_log is not None:
        epoch, step = trainer.position
        trainer.sample_log = SampleLog(sample_log, world, fresh=state is None, epoch=epoch, step=step)
    trainer.run(stages, setup, test_data, eval_batch=max(batch_size, 256), desc=desc, progress=progress)
    return trainer.result


@dataclass
class _Stage:
    """What one stage trains with: objective, optimiser, schedule, frozen modules and the (DDP-wrapped) step."""

    index: int
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    frozen: list[nn.Module]
    module: nn.Module


class _Step(nn.Module):
    """The student and the objective as one module, so DDP averages the gradients of both (loss terms can learn)."""

    def __init__(self, student: nn.Module, objective: nn.Module, capture: LayerCapture) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.capture = capture

    def forward(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        teacher: dict[str, Any],
        mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = forward_with_capture(self.student, inputs, self.capture)
        return self.objective(StepOutputs(outputs.logits, labels, outputs.features, teacher, mix))


class _Trainer:
    """The state shared by the stages and epochs of one :func:`fit` call."""

    def __init__(
        self,
        student: nn.Module,
        loader: Any,
        *,
        world: World,
        device: torch.device,
        targets: TargetSource,
        seed: int,
        plan: list[list[Any]],
        state: dict[str, Any] | None,
        checkpoint: Checkpointing | None,
        stop_after_steps: int | None,
    ) -> None:
        self.student, self.loader, self.world, self.device = student, loader, world, device
        self.targets, self.seed, self.plan, self.state = targets, seed, plan, state
        self.checkpoint, self.stop_after_steps = checkpoint, stop_after_steps
        self.sampler: EpochBatchSampler = loader.sampler
        self.position = (self.sampler.epoch, self.sampler.start_step) if state else (0, 0)
        history = [EpochLog(**h) for h in state["history"]] if state else []
        self.result = TrainResult(history, state["seconds"] if state else 0.0)
        self.sample_log: SampleLog | None = None
        self.pinned: dict[str, Any] = {}  # the run's settings that a resume must find unchanged (train.pinning)
        self.steps_run = 0
        self.started = time.perf_counter()

    def run(
        self,
        stages: list[StageConfig],
        setup: LossSetup,
        test: ViewDataset | None,
        *,
        eval_batch: int,
        desc: str,
        progress: bool,
    ) -> None:
        """Train every stage not finished before the checkpoint this run resumed from."""
        first = 0
        for index, stage in enumerate(stages):
            epochs = range(first, first + stage.epochs)
            first = epochs.stop
            if self.position[0] >= epochs.stop:
                continue  # done before the checkpoint this run resumed from
            bar = tqdm(
                range(max(self.position[0], epochs.start), epochs.stop),
                desc=f"{desc}:{stage.name}",
                unit="epoch",
                disable=not (progress and self.world.is_main),
                leave=False,
            )
            self.run_stage(index, stage, bar, setup, test, eval_batch)
        if self.sample_log is not None:
            self.sample_log.close()
        self.result.seconds += time.perf_counter() - self.started

    def run_stage(
        self, index: int, stage: StageConfig, bar: Any, setup: LossSetup, test: ViewDataset | None, eval_batch: int
    ) -> None:
        """Train one stage over the epochs of ``bar`` (a tqdm over epoch numbers), checkpointing each epoch."""
        objective = build_objective([(l.name, l.weight, l.params) for l in stage.losses], setup).to(self.device)
        frozen = freeze(self.student, stage.freeze)
        with LayerCapture(self.student, objective.student_layers()) as capture:
            self.preflight(objective, capture, bar.iterable[0], setup)  # bar iterates this stage's remaining epochs
            params = [p for p in [*self.student.parameters(), *objective.parameters()] if p.requires_grad]
            optimizer = build_optimizer(params, stage.optimizer)
            schedule = build_schedule(optimizer, stage.optimizer, stage.epochs * len(self.loader))
            if self.state is not None and self.state["stage"] == index:
                restore(self.state, objective=objective, optimizer=optimizer, scheduler=schedule)
                retune(optimizer, schedule, stage.optimizer)  # an allowed lr / weight-decay change takes effect
            step = _Step(self.student, objective, capture)
            module = DistributedDataParallel(step) if self.world.distributed else step
            current = _Stage(index, objective, optimizer, schedule, frozen, module)
            for epoch in bar:
                start = self.position[1] if epoch == self.position[0] else 0
                loss, parts, seconds = self.run_epoch(current, epoch, start)
                tick = time.perf_counter()
                _sync_buffers(self.student, self.world)  # BatchNorm statistics: rank 0's, as saved
                metrics = {}
                if test is not None:
                    metrics = evaluate(
                        self.student,
                        test,
                        batch_size=eval_batch,
                        device=self.device,
                        world=self.world,
                        metric=task_metric(setup.task, setup.num_classes, setup.ignore_index),
                    )
                seconds += time.perf_counter() - tick
                self.result.history.append(EpochLog(stage.name, epoch, loss, parts, metrics, seconds))
                bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.4f}" for k, v in metrics.items()})
                self.save(current, len(self.loader), None)
        freeze(self.student, [])

    @torch.no_grad()
    def preflight(self, objective: nn.Module, capture: LayerCapture, epoch: int, setup: LossSetup) -> None:
        """Evaluate the objective on one batch before any parameter moves (student in eval mode, no gradients).

        Terms build their data-shaped parameters here (a hint regressor) before the optimiser and DDP see the
        parameters, and a student or a target that does not fit the task (the student's class count against
        ``setup.num_classes`` and the labels, a target's shape, channels or classes) fails now, with a message that
        names both sides, instead of after a partial epoch.
        """
        set_loader_epoch(self.loader, epoch)
        batch = next(iter(self.loader)).to(self.device)
        self.student.eval()
        outputs = forward_with_capture(self.student, batch.inputs, capture)
        check_task_classes(outputs.logits, batch.labels, setup)
        step = StepOutputs(outputs.logits, batch.labels, outputs.features, self.targets(batch), batch.mix)
        objective.prepare(step)
        objective(step)

    def run_epoch(self, st: _Stage, epoch: int, start: int) -> tuple[float, dict[str, float], float]:
        """Train epoch ``epoch`` from global batch ``start``; its loss and weighted parts (means over all ranks'
        samples) and the seconds it took."""
        tick = time.perf_counter()
        set_loader_epoch(self.loader, epoch, start_step=start)
        resumed = self.state is not None and (epoch, start) == self.position and self.world.is_main
        meter = LossSums(list(st.objective.weights), self.state.get("epoch_sums") if resumed else None)
        self.student.train()
        st.objective.train()
        for module in st.frozen:
            module.eval()
        for step, batch in enumerate(self.loader, start=start):
            batch = batch.to(self.device)
            torch.manual_seed(_step_seed(self.seed, epoch, step, self.world.rank))  # dropout replays on resume
            loss, parts = st.module(batch.inputs, batch.labels, self.targets(batch), batch.mix)
            n = len(batch.indices)
            share = n * self.world.world_size / self.sampler.global_size(step)
            st.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()
            st.optimizer.step()
            st.schedule.step()
            meter.add(float(loss.detach()), parts, n)
            if self.sample_log is not None:
                self.sample_log.record(epoch, step, batch.indices.numpy())
            done = step + 1
            every = self.checkpoint.every_steps if self.checkpoint else 0
            if every and done % every == 0 and done < len(self.loader):
                self.save(st, done, meter)
            self.steps_run += 1
            if self.stop_after_steps is not None and self.steps_run >= self.stop_after_steps:
                _kill_self()
        totals = meter.reduced(self.world)
        count = max(totals.pop("count"), 1.0)
        return totals.pop("loss") / count, {k: v / count for k, v in totals.items()}, time.perf_counter() - tick

    def save(self, st: _Stage, step: int, meter: LossSums | None) -> None:
        """Checkpoint after ``step`` global batches of the current epoch (all ranks call; rank 0 writes)."""
        if self.checkpoint is None:
            return
        sums = meter.reduced(self.world) if meter is not None else None
        if not self.world.is_main:
            return
        state = {
            "student": self.student.state_dict(),
            "objective": st.objective.state_dict(),
            "optimizer": st.optimizer.state_dict(),
            "scheduler": st.schedule.state_dict(),
            "stage": st.index,
            "stages": self.plan,
            "pinned": self.pinned,
            "sampler": self.sampler.state(step),
            "epoch_sums": sums,
            "history": [asdict(h) for h in self.result.history],
            "seconds": self.result.seconds + time.perf_counter() - self.started,
        }
        save_state(self.checkpoint.path, state)


def _sync_buffers(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics diverge by the last batch of each rank)."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed of one step of one rank: random layers (dropout) draw the same numbers when a step is
    replayed after a resume."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, np.uint64)[0])


def _kill_self() -> None:
    """End this process as a crash would: no cleanup, no final checkpoint, no flush beyond what is written."""
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
