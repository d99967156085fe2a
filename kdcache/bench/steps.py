"""Figure 1: stage-two step time of one student trained three ways on the same batches.

Variants, interleaved in rounds (:mod:`kdcache.bench.rounds`), each a fresh copy of the same initial student
trained by :func:`kdcache.train.fit` for one epoch of ``steps`` batches (the library's own loop, so its per-step
costs count):

* ``student-only``: cross-entropy, no teacher;
* ``cached KD``: CE + KD with targets from the store as the library configures it (in RAM when they fit the budget);
* ``cached KD (streamed)``: the same, forced to stream chunks from the store (``ram_budget_bytes=0``; fresh
  readers each round, so the per-shard digest check and chunk reads are paid as in a first epoch);
* ``online KD``: CE + KD with a :class:`~kdcache.train.LiveTeacher` running the teacher every step;
* ``teacher forward`` and the two ``fetch`` variants are parts, not trainings: the teacher's forward pass over the
  same batches, and producing one epoch of batches without and with targets. They give the expected online/cached
  ratio (1 + teacher forward / student step) and the reason when cached KD costs more than student-only.

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

from kdcache.bench.rounds import interleave, spread, timed
from kdcache.bench.settings import BenchSettings
from kdcache.bench.workloads import TEACHER, Workload
from kdcache.config import StageConfig
from kdcache.sampler import steps_per_epoch
from kdcache.store import open_cache
from kdcache.stream import CachedDataset, ViewDataset, batch_loader, set_loader_epoch
from kdcache.train import LiveTeacher, TargetSource, cached_targets, fit


def measure_steps(w: Workload, store: str, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Seconds per step of every variant, their paired ratios and the online-KD expectation."""
    device = torch.device(settings.device)
    student0 = w.make_student()
    live = LiveTeacher(w.make_teacher(), w.targets, device)
    plain = ViewDataset(w.train, w.views)
    in_ram = CachedDataset(w.train, open_cache(store), teacher=TEACHER, targets=w.target_names, views=w.views)
    steps = steps_per_epoch(len(w.train), w.batch_size)

    def train(data: ViewDataset, stages: list[StageConfig], targets: TargetSource = cached_targets) -> float:
        student = copy.deepcopy(student0)
        start = time.perf_counter()
        fit(
            student,
            data,
            None,
            stages=stages,
            setup=w.setup,
            batch_size=w.batch_size,
            seed=w.seed,
            device=device,
            targets=targets,
            progress=False,
        )
        return (time.perf_counter() - start) / steps

    def streamed() -> float:
        data = CachedDataset(
            w.train, open_cache(store), teacher=TEACHER, targets=w.target_names, views=w.views, ram_budget_bytes=0
        )
        return train(data, w.distill)

    def epoch_of_batches(data: ViewDataset) -> list[Any]:
        loader = batch_loader(data, batch_size=w.batch_size, seed=w.seed)
        set_loader_epoch(loader, 0)
        return [batch.to(device) for batch in loader]

    batches = epoch_of_batches(plain)

    def teacher_forward() -> float:
        start = time.perf_counter()
        for batch in batches:
            live(batch)
        _sync(device)
        return (time.perf_counter() - start) / steps

    samples = interleave(
        {
            "student-only": lambda: train(plain, w.student_only),
            "cached KD": lambda: train(in_ram, w.distill),
            "cached KD (streamed)": streamed,
            "online KD": lambda: train(plain, w.distill, live),
            "teacher forward": teacher_forward,
            "fetch, inputs only": lambda: timed(lambda: epoch_of_batches(plain)) / steps,
            "fetch, inputs + targets": lambda: timed(lambda: epoch_of_batches(in_ram)) / steps,
        },
        rounds=settings.step_rounds,
        warmup=settings.warmup,
        desc=f"fig 1 {w.name}",
        progress=progress,
    )
    per_step = {name: samples.summary(name) for name in samples.values}
    forward = samples.values["teacher forward"]
    expected = [1 + f / step for f, step in zip(forward, samples.values["student-only"], strict=True)]
    ideal = [1 + f / step for f, step in zip(forward, samples.values["cached KD"], strict=True)]
    fetch_extra = [
        (b - a) / s
        for a, b, s in zip(
            samples.values["fetch, inputs only"],
            samples.values["fetch, inputs + targets"],
            samples.values["student-only"],
            strict=True,
        )
    ]
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
        "target_fetch_share_of_step": spread(fetch_extra),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
