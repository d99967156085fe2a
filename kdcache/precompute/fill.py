"""Filling one shard's rows from the teacher's batches: every check, encoding, digest and count of stage one.

The teacher's forward pass is the only per-batch work that must run where the teacher runs (the main thread); what
follows it — the finite/overflow refusal, each target's encoding, the sample and view digests, the accuracy counts —
is :meth:`ShardFill.add`, which the single-process writer runs on its background thread, overlapped with the next
forward pass (:mod:`kdcache.precompute.local`), and a dask task runs right after the forward pass, in order. On
CUDA the encodings run on the device where the values are, queued behind the forward pass that made them, and the
writer thread, not the teacher's, waits for their copy to the host. Nothing is committed before every batch of the
shard has been checked: :meth:`ShardFill.rows` hands the rows on only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ViewMismatchError
from kdcache.metrics import Accuracy
from kdcache.precompute.job import StageOneJob
from kdcache.precompute.samples import SampleFacts, read_facts, sample_rows
from kdcache.store import SAMPLES_OWNER, VIEW_DIGEST, ArraySpec, Owner, StoreBuilder, TargetLayout
from kdcache.targets import Target
from kdcache.views import ViewBatch, Views

ShardRows = tuple[Owner, int, dict[str, np.ndarray], dict[str, float]]
"""``(owner, shard index, rows by array path, stats)``: the arguments of :meth:`StoreBuilder.commit`."""


class ShardRange(Protocol):
    """What a fill reads of its :class:`~kdcache.precompute.engine.ShardWork`: shard ``index``, samples
    ``[start, stop)``, the owners still missing it (read-only: a frozen ShardWork fits)."""

    @property
    def index(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int: ...
    @property
    def owners(self) -> tuple[Owner, ...]: ...


class FillSource(Protocol):
    """What a fill reads of its :class:`~kdcache.precompute.engine.TeacherRun`: the teacher's name and owner, its
    targets and their layouts, the views, the dataset, the sample arrays and the job."""

    name: str
    owner: Owner
    targets: list[Target]
    layouts: dict[str, TargetLayout]
    views: Views
    dataset: SampleDataset
    sample_arrays: list[ArraySpec]
    job: StageOneJob


@dataclass(frozen=True)
class TeacherBatch:
    """One forward pass as the teacher's thread hands it on: the (sample, view) pairs, starting at shard row
    ``row`` (whole samples), the views made for them, the teacher's logits and every target's value."""

    row: int
    samples: np.ndarray
    view_ids: np.ndarray
    made: ViewBatch
    logits: torch.Tensor
    values: dict[str, torch.Tensor]


class ShardFill:
    """The rows of one shard range for the owners ``work`` names, filled a batch at a time by :meth:`add`."""

    def __init__(self, run: FillSource, work: ShardRange, builder: StoreBuilder) -> None:
        self.run, self.work, self.builder = run, work, builder
        n = work.stop - work.start
        self.teacher = run.owner in work.owners
        self.buffers = (
            {
                spec.path: np.empty(spec.shape(n), dtype=spec.dtype)
                for layout in run.layouts.values()
                for spec in layout.arrays.values()
            }
            if self.teacher
            else {}
        )
        self.facts = SampleFacts.empty(n, run.views)
        self.accuracy = Accuracy(run.job.ignore_index)

    @torch.no_grad()
    def add(self, batch: TeacherBatch) -> None:
        """Check, encode and record one batch: a non-finite or overflowing value raises its typed error here,
        before anything of the shard is committed."""
        v = self.run.views.count
        rows = slice(batch.row, batch.row + len(batch.samples) // v)
        for target in self.run.targets:
            value = batch.values[target.name]
            target.check(value, batch.samples)
            for rel, array in target.encode_at(value, batch.samples, batch.view_ids, labels=batch.made.labels).items():
                path = self.run.layouts[target.name].arrays[rel].path
                self.buffers[path][rows] = array.reshape(len(batch.samples) // v, v, *array.shape[1:])
        self.facts.record(batch.row, batch.made, batch.view_ids)
        self.accuracy.update(batch.logits, batch.made.labels.to(batch.logits.device))

    def rows(self) -> list[ShardRows]:
        """What to commit for the shard, once every batch was added: the teacher's rows with its accuracy counts,
        then the sample arrays' rows. A teacher joining a store whose sample arrays are committed already must
        have been given the inputs those arrays record: its view digests are compared with the store's first."""
        work, run = self.work, self.run
        out: list[ShardRows] = []
        facts = self.facts
        if self.teacher:
            if SAMPLES_OWNER not in work.owners:
                self._require_store_inputs(self.builder.committed_rows(VIEW_DIGEST, work.index))
            stats = {"correct": float(self.accuracy.correct), "count": float(self.accuracy.count)}
            out.append((run.owner, work.index, self.buffers, stats))
        elif SAMPLES_OWNER in work.owners:  # the teacher's shard is committed already: read the samples once more
            facts = read_facts(run.dataset, run.views, work.start, work.stop, run.job.batch_size)
        if SAMPLES_OWNER in work.owners:
            out.append(
                (
                    SAMPLES_OWNER,
                    work.index,
                    sample_rows(run.dataset, run.sample_arrays, work.start, work.stop, facts),
                    {},
                )
            )
        return out

    def _require_store_inputs(self, stored: np.ndarray) -> None:
        bad = np.argwhere((self.facts.inputs != stored).any(axis=2))
        if len(bad):
            work = self.work
            pairs = [(int(work.start + i), int(v)) for i, v in bad[:8]]
            raise ViewMismatchError(
                f"store {self.builder.location.url!r}: teacher {self.run.name!r} was given other inputs than the "
                f"store's other teacher(s) for (sample, view) {pairs} ({len(bad)} in shard {work.index}; "
                "samples/view_digest): its views replay differently here (another machine's CPU kernels, other "
                "library versions, or a step with its own random source). Run it where the store was built, or "
                "build a new store"
            )
