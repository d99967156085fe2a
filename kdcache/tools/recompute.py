"""Replay fidelity: re-run the teacher on random cached (sample, view) pairs and compare with what the store holds.

This is a stage-one-side check (it needs the teacher). For each pair the exact view is regenerated from
(seed, sample, view), the teacher is run on it, and every cached target (or those named by ``targets``) is compared
with the live value *stored the way the cache stores it* (encoded, then decoded; sampled tokens re-drawn from the
same keyed uniforms): on the machine and library versions that built the store an exact replay gives an error of 0,
whatever the encoding. The encoding's own rounding (live float32 vs cache) is reported beside it. The comparison of
each kind (dense, int8, top-k with its tail, sampled tokens) is in :mod:`kdcache.tools.recompute_kinds`. Stored view
parameters (``views/params``) are compared bit for bit with the regenerated ones, and the teacher's fingerprint with
the store's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.items import as_sample_dataset
from kdcache.errors import ConfigError
from kdcache.models.fingerprint import teacher_fingerprint
from kdcache.pipeline import DistillConfig
from kdcache.pipeline.build import device_of, load_teacher, model_spec, view_transform
from kdcache.pipeline.cached import cached_train_split
from kdcache.store import SAMPLES_OWNER, VIEW_DIGEST, VIEW_PARAMS, Requirements, StoreReader, open_store
from kdcache.store.layout import owner_of_teacher
from kdcache.targets import Target, TargetExtractor, build_target
from kdcache.tools.recompute_kinds import TargetFidelity, Tolerance, compare, kind_label
from kdcache.views import Views
from kdcache.views.digest import view_digests

DEFAULT_TOLERANCE = Tolerance()


@dataclass
class FidelityReport:
    """The outcome of :func:`recompute_check`; ``passed`` is what ``kdcache verify --recompute`` exits on."""

    store: str
    teacher: str
    pairs: int
    tolerance: Tolerance
    fingerprint_matches: bool | None
    params_mismatches: int | None = None
    input_mismatches: int = 0
    targets: dict[str, TargetFidelity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        params_ok = self.params_mismatches in (None, 0)
        return params_ok and self.input_mismatches == 0 and all(t.passed(self.tolerance) for t in self.targets.values())


def sample_pairs(num_rows: int, views: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct random (row, view) pairs of a store, sorted by row (chunk-sequential reads)."""
    total = num_rows * views
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    return flat // views, flat % views


def recompute_check(
    cache: StoreReader,
    teacher: nn.Module,
    dataset: SampleDataset | Dataset,
    views: Views,
    *,
    teacher_name: str,
    pairs: int,
    fingerprint: dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    targets: Sequence[str] | None = None,
    progress: bool = True,
) -> FidelityReport:
    """Re-run ``teacher`` on ``pairs`` random (sample, view) pairs of ``cache`` and compare every cached target, or
    only those named in ``targets``.

    >>> report = recompute_check(open_store(url), teacher, train, views, teacher_name="cnn64", pairs=256)  # doctest: +SKIP
    >>> report.passed, report.targets["logits"].max_abs_error
    (True, 0.0)
    """
    cache.require(Requirements(teachers=(teacher_name,), views=views.spec()))
    dataset = as_sample_dataset(dataset)
    record = cache.teacher(teacher_name)
    chosen = select_targets(cache, teacher_name, targets)
    readers = {
        name: {
            rel: cache.array_reader(a, owner_of_teacher(teacher_name), in_memory=False)
            for rel, a in record.targets[name].arrays.items()
        }
        for name in chosen
    }
    inputs_reader = cache.array_reader(cache.manifest.samples.arrays[VIEW_DIGEST], SAMPLES_OWNER, in_memory=False)
    params_record = cache.manifest.samples.arrays.get(VIEW_PARAMS)
    params_reader = None if params_record is None else cache.array_reader(params_record, SAMPLES_OWNER, in_memory=False)
    rows, view_ids = sample_pairs(cache.num_samples, views.count, pairs, seed)
    index = cache.sample_index()
    matches = None if fingerprint is None else same_teacher(fingerprint, record.fingerprint)
    report = FidelityReport(cache.url, teacher_name, len(rows), tolerance, matches, 0 if params_reader else None)
    report.targets = {name: TargetFidelity(name, kind_label(target)) for name, target in chosen.items()}
    with TargetExtractor(teacher, list(chosen.values()), device) as extract:
        for b in tqdm(range(0, len(rows), batch_size), desc="verify", unit="batch", disable=not progress):
            r, v = rows[b : b + batch_size], view_ids[b : b + batch_size]
            made = views.batch(dataset, index[r], v)
            if params_reader is not None and report.params_mismatches is not None:
                stored = params_reader.read_rows(r, v)
                drawn = made.params
                report.params_mismatches += int((drawn.view(np.uint32) != stored.view(np.uint32)).any(axis=1).sum())
            stored_inputs = inputs_reader.read_rows(r, v)
            report.input_mismatches += int((view_digests(made.inputs) != stored_inputs).any(axis=1).sum())
            _, live = extract(made.inputs)
            for name, target in chosen.items():
                cached = {rel: rd.read_rows(r, v) for rel, rd in readers[name].items()}
                compare(report.targets[name], target, cached, live[name], index[r], v, tolerance, made.labels)
    return report


def same_teacher(live: dict, stored: dict) -> bool:
    """The same weights (every tensor's name, shape, dtype and bytes), captured layers and dtypes: content, not the
    architecture's description, which a Python run and a pipeline run write differently."""
    keys = ("state_sha256", "layers", "dtypes")
    return all(live.get(k) == stored.get(k) for k in keys)


def select_targets(cache: StoreReader, teacher_name: str, names: Sequence[str] | None = None) -> dict[str, Target]:
    """The targets of ``teacher_name`` to check, by name: every one when ``names`` is None, else those named,
    refusing a name the teacher does not store with the list of those it does."""
    stored = cache.teacher(teacher_name).targets
    wanted = list(stored) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in stored]
    if unknown or not wanted:
        raise ConfigError(
            f"verify --recompute: teacher {teacher_name!r} of {cache.url} stores no target named {unknown or '(none given)'}; "
            f"its targets are {sorted(stored)}. Name some of those with --targets a,b (targets=[...])"
        )
    return {name: build_target(stored[name].kind, stored[name].params) for name in wanted}


def pipeline_teacher(cfg: DistillConfig, cache: StoreReader) -> tuple[nn.Module, dict]:
    """The teacher of pipeline ``cfg`` loaded from its checkpoint (never trained here), and its fingerprint over every
    layer the targets ``cache`` stores for it capture: what :func:`same_teacher` compares with the store's."""
    teacher = load_teacher(cfg)
    stored = [build_target(t.kind, t.params) for t in cache.teacher(cfg.teacher.name).targets.values()]
    layers = sorted({layer for t in stored for layer in t.teacher_layers()})  # the fingerprint covers every target
    return teacher, teacher_fingerprint(teacher, spec=model_spec(cfg, "teacher"), layers=layers)


def recompute_pipeline_store(
    cfg: DistillConfig,
    store: str,
    *,
    pairs: int,
    seed: int = 0,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    targets: Sequence[str] | None = None,
    progress: bool = True,
) -> FidelityReport:
    """:func:`recompute_check` of ``store`` with the teacher (loaded from its checkpoint, never trained), train split
    and views of pipeline ``cfg``; ``targets`` as for :func:`recompute_check`."""
    cache = open_store(store)
    teacher, fingerprint = pipeline_teacher(cfg, cache)
    return recompute_check(
        cache,
        teacher,
        cached_train_split(cfg, cache),
        view_transform(cfg),
        teacher_name=cfg.teacher.name,
        pairs=pairs,
        fingerprint=fingerprint,
        seed=seed,
        batch_size=cfg.cache.batch_size,
        device=device_of(cfg),
        tolerance=tolerance,
        targets=targets,
        progress=progress,
    )
