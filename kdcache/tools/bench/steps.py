"""Figure 1: stage-two step time of one student trained three ways on the same batches.

Variants, interleaved in rounds (:mod:`kdcache.tools.bench.rounds`), each a fresh copy of the same initial student
trained by :func:`kdcache.train.fit` for one epoch of ``steps`` batches (the library's own loop, so its per-step
costs count):

* ``student-only``: cross-entropy, no teacher;
* ``cached KD``: CE + KD with targets from the store as the library configures it (in RAM when they fit the budget);
* ``cached KD (streamed)``: the same, forced to stream chunks from the store (``ram_budget_bytes=0``; fresh
  readers each round, so the per-shard digest check and chunk reads are paid as in a first epoch);
* ``online KD``: CE + KD with a :class:`~kdcache.train.LiveTeacher` running the teacher every step;
* ``teacher forward``, the two ``fetch`` and the two ``loss`` variants are parts, not trainings: the teacher's
  forward pass over the same batches; producing one epoch of batches without and with targets; and the forward and
  backward of each variant's objective alone on logits of the batch's shape. They give the expected online/cached
  ratio (1 + teacher forward / student step) and, when cached KD costs more than student-only, how much of the
  difference is fetching targets and how much is the KD loss itself. ``digest check`` is the per-sample content
  digest stage two computes of every loaded batch (the join proof), ``view digest check`` the per-view input digest
  of every batch's model inputs (the replay proof), each timed alone.

With targets in RAM both loaders draw the same uniform permutation (same seed, block 1), so all variants see the
same batches; the streamed loader block-shuffles the same samples (its order differs, its shapes do not).
The goal's expectation is ``1 + teacher forward / student-only step``; ``ideal`` divides by the cached step
instead, which is what online/cached would be if the teacher's forward were the only difference.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from kdcache.datasets.digest import sample_digests
from kdcache.losses import StepOutputs, build_objective
from kdcache.store import open_store
from kdcache.tools.bench.rounds import Samples, interleave, spread, timed
from kdcache.tools.bench.settings import BenchSettings
from kdcache.tools.bench.workloads import TEACHER, Workload
from kdcache.train import (
    CachedDataset,
    LiveTeacher,
    StageConfig,
    TargetSource,
    ViewDataset,
    batch_loader,
    batch_targets,
    set_loader_epoch,
)
from kdcache.train.sampler import steps_per_epoch
from kdcache.views.digest import view_digests


def measure_steps(w: Workload, store: str, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Seconds per step of every variant, their paired ratios and the online-KD expectation."""
    run = _StepVariants(w, store, torch.device(settings.device))
    samples = interleave(
        {
            "student-only": lambda: run.train(run.plain, w.student_only),
            "cached KD": lambda: run.train(run.in_ram, w.distill),
            "cached KD (streamed)": lambda: run.train(run.streamed(), w.distill),
            "online KD": lambda: run.train(run.plain, w.distill, run.live),
            "teacher forward": run.teacher_forward,
            "fetch, inputs only": lambda: timed(lambda: run.epoch_of_batches(run.plain)) / run.steps,
            "fetch, inputs + targets": lambda: timed(lambda: run.epoch_of_batches(run.in_ram)) / run.steps,
            "loss, student-only": lambda: run.objective_alone(w.student_only, run.batches),
            "loss, KD": lambda: run.objective_alone(w.distill, run.cached_batches),
            "digest check": run.digest_check,
            "view digest check": run.view_digest_check,
        },
        rounds=settings.step_rounds,
        warmup=settings.warmup,
        desc=f"fig 1 {w.name}",
        progress=progress,
    )
    return _summary(samples, w, run.steps)


class _StepVariants:
    """The students, data and teacher of figure 1; each method measures one variant once (seconds per step)."""

    def __init__(self, w: Workload, store: str, device: torch.device) -> None:
        self.w, self.store, self.device = w, store, device
        self.student = w.make_student()
        self.live = LiveTeacher(w.make_teacher(), w.targets, device)
        self.plain = ViewDataset(w.train, w.views)
        self.in_ram = CachedDataset(w.train, open_store(store), teacher=TEACHER, targets=w.target_names, views=w.views)
        self.steps = steps_per_epoch(len(w.train), w.batch_size)
        self.batches = self.epoch_of_batches(self.plain)
        self.cached_batches = self.epoch_of_batches(self.in_ram)

    def train(self, data: ViewDataset, stages: list[StageConfig], targets: TargetSource = batch_targets) -> float:
        """One epoch of ``fit`` on a fresh copy of the initial student."""
        student = copy.deepcopy(self.student)
        start = time.perf_counter()
        self.w.fit_one_epoch(student, data, stages, self.device, targets)
        return (time.perf_counter() - start) / self.steps

    def streamed(self) -> CachedDataset:
        """The targets streamed from the store by fresh readers (nothing verified or cached yet)."""
        w = self.w
        return CachedDataset(
            w.train, open_store(self.store), teacher=TEACHER, targets=w.target_names, views=w.views, ram_budget_bytes=0
        )

    def epoch_of_batches(self, data: ViewDataset) -> list[Any]:
        loader = batch_loader(data, batch_size=self.w.batch_size, seed=self.w.seed)
        set_loader_epoch(loader, 0)
        return [batch.to(self.device) for batch in loader]

    def objective_alone(self, stages: list[StageConfig], data: list[Any]) -> float:
        """Forward and backward of a stage's objective on logits of the batches' shape: the loss's own cost."""
        setup = self.w.setup
        objective = build_objective([(x.name, x.weight, x.params) for x in stages[0].losses], setup).to(self.device)
        logits = [torch.randn(*_logits_shape(b.labels, setup), device=self.device, requires_grad=True) for b in data]
        start = time.perf_counter()
        for batch, out in zip(data, logits, strict=True):
            loss, _ = objective(StepOutputs(logits=out, labels=batch.labels, teacher=batch.targets))
            loss.backward()
        _sync(self.device)
        return (time.perf_counter() - start) / self.steps

    def digest_check(self) -> float:
        """The per-sample content digests stage two computes of every batch it loads, alone (seconds per step)."""
        raw = [self.w.train.get_batch(batch.indices.numpy()) for batch in self.batches]
        start = time.perf_counter()
        for inputs, labels in raw:
            sample_digests(inputs, labels)
        return (time.perf_counter() - start) / self.steps

    def view_digest_check(self) -> float:
        """The per-view input digests stage two computes of every batch's model inputs, alone (seconds per step)."""
        inputs = [batch.inputs.cpu() for batch in self.batches]
        start = time.perf_counter()
        for batch in inputs:
            view_digests(batch)
        return (time.perf_counter() - start) / self.steps

    def teacher_forward(self) -> float:
        start = time.perf_counter()
        for batch in self.batches:
            self.live(batch)
        _sync(self.device)
        return (time.perf_counter() - start) / self.steps


def _summary(samples: Samples, w: Workload, steps: int) -> dict[str, Any]:
    per_step = {name: samples.summary(name) for name in samples.values}
    forward = samples.values["teacher forward"]
    expected = [1 + f / step for f, step in zip(forward, samples.values["student-only"], strict=True)]
    ideal = [1 + f / step for f, step in zip(forward, samples.values["cached KD"], strict=True)]
    return {
        "workload": w.label,
        "batch_size": w.batch_size,
        "steps_per_round": steps,
        "seconds_per_step": per_step,
        "student_samples_per_second": w.batch_size / per_step["student-only"]["median"],
        "ratios": {
            "cached / student-only": samples.ratio("cached KD", "student-only"),
            "cached (streamed) / student-only": samples.ratio("cached KD (streamed)", "student-only"),
            "online / cached": samples.ratio("online KD", "cached KD"),
            "teacher forward / student step": samples.ratio("teacher forward", "student-only"),
        },
        "expected_online_over_cached": spread(expected),
        "ideal_online_over_cached": spread(ideal),
        "target_fetch_share_of_step": spread(_share(samples, "fetch, inputs + targets", "fetch, inputs only")),
        "kd_loss_share_of_step": spread(_share(samples, "loss, KD", "loss, student-only")),
        "digest_check_share_of_step": samples.ratio("digest check", "student-only"),
        "view_digest_check_share_of_step": samples.ratio("view digest check", "student-only"),
    }


def measure_digests_at(size: int = 224, batch: int = 256, rounds: int = 5) -> dict[str, Any]:
    """Milliseconds per batch of both content checks at a real image size: the per-sample digest of ``batch`` uint8
    ``3×size×size`` images and the per-view digest of their float32 model inputs (best of ``rounds``)."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    inputs, labels = raw.float() / 255, torch.zeros(batch, dtype=torch.int64)
    sample = min(timed(lambda: sample_digests(raw, labels)) for _ in range(rounds))
    view = min(timed(lambda: view_digests(inputs)) for _ in range(rounds))
    return {
        "images": f"{batch} x 3x{size}x{size}",
        "sample_digest_ms_per_batch": 1000 * sample,
        "view_digest_ms_per_batch": 1000 * view,
        "view_digest_gb_per_s": inputs.numel() * 4 / view / 1e9,
    }


def _share(samples: Samples, more: str, less: str) -> list[float]:
    """Per round, what ``more`` costs beyond ``less`` as a fraction of the student-only step."""
    values = samples.values
    return [(b - a) / s for a, b, s in zip(values[less], values[more], values["student-only"], strict=True)]


def _logits_shape(labels: torch.Tensor, setup: Any) -> tuple[int, ...]:
    """A batch's logits: ``(B, C)`` for classes, ``(B, L, V)`` for a language model's tokens."""
    if setup.task == "language-model":
        return (*labels.shape, setup.num_classes)
    return (len(labels), setup.num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
