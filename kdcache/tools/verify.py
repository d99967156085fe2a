"""Replay fidelity: re-run the teacher on random cached (sample, view) pairs and compare with what the store holds.

This is a stage-one-side check (it needs the teacher). For each pair the exact view is regenerated from
(seed, sample, view), the teacher is run on it, and every cached target is compared with the live value *stored the
way the cache stores it* (encoded, then decoded): on the machine and library versions that built the store an exact
replay gives an error of 0 and a cosine of 1, whatever the encoding. The encoding's own rounding (live float32 vs
cache) is reported beside it. Stored view parameters (``views/params``) are compared bit for bit with the
regenerated ones, and the teacher's fingerprint with the store's.
"""

from __future__ import annotations

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
from kdcache.pipeline import PipelineConfig
from kdcache.pipeline.build import device_of, load_split, load_teacher, model_spec, view_transform
from kdcache.store import SAMPLES_OWNER, VIEW_PARAMS, Cache, Requirements, open_cache
from kdcache.store.layout import owner_of_teacher
from kdcache.targets import Target, TargetExtractor, build_target
from kdcache.views import ViewTransform


@dataclass(frozen=True)
class Tolerance:
    """A target passes when every element satisfies ``|cached - live| <= atol + rtol * |live|`` and every pair's
    cosine similarity is at least ``min_cosine`` (live = the teacher's output stored the way the cache stores it)."""

    atol: float = 1e-3
    rtol: float = 1e-2
    min_cosine: float = 0.999


@dataclass
class TargetFidelity:
    """How one cached target compares with the live teacher over the checked pairs."""

    target: str
    max_abs_error: float = 0.0
    encoding_error: float = 0.0
    min_cosine: float = 1.0
    cosine_sum: float = 0.0
    exact: int = 0
    pairs: int = 0
    within_tolerance: bool = True

    @property
    def mean_cosine(self) -> float:
        return self.cosine_sum / max(self.pairs, 1)

    def passed(self, tolerance: Tolerance) -> bool:
        return self.within_tolerance and self.min_cosine >= tolerance.min_cosine


@dataclass
class FidelityReport:
    """The outcome of :func:`recompute_check`; ``passed`` is what ``kdcache verify --recompute`` exits on."""

    store: str
    teacher: str
    pairs: int
    tolerance: Tolerance
    fingerprint_matches: bool | None
    params_mismatches: int | None = None
    targets: dict[str, TargetFidelity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        params_ok = self.params_mismatches in (None, 0)
        return params_ok and all(t.passed(self.tolerance) for t in self.targets.values())


def sample_pairs(num_rows: int, views: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct random (row, view) pairs of a store, sorted by row (chunk-sequential reads)."""
    total = num_rows * views
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    return flat // views, flat % views


def recompute_check(
    cache: Cache,
    teacher: nn.Module,
    dataset: SampleDataset | Dataset,
    views: ViewTransform,
    *,
    teacher_name: str,
    pairs: int,
    fingerprint: dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    tolerance: Tolerance = Tolerance(),
    progress: bool = True,
) -> FidelityReport:
    """Re-run ``teacher`` on ``pairs`` random (sample, view) pairs of ``cache`` and compare every cached target.

    >>> report = recompute_check(open_cache(url), teacher, train, views, teacher_name="cnn64", pairs=256)  # doctest: +SKIP
    >>> report.passed, report.targets["logits"].max_abs_error
    (True, 0.0)
    """
    cache.require(Requirements(teachers=(teacher_name,), views=views.spec()))
    dataset = as_sample_dataset(dataset)
    record = cache.teacher(teacher_name)
    targets = {name: build_target(t.kind, t.params) for name, t in record.targets.items()}
    readers = {
        name: {
            rel: cache.array_reader(a, owner_of_teacher(teacher_name), in_memory=False) for rel, a in t.arrays.items()
        }
        for name, t in record.targets.items()
    }
    params_record = cache.manifest.samples.arrays.get(VIEW_PARAMS)
    params_reader = None if params_record is None else cache.array_reader(params_record, SAMPLES_OWNER, in_memory=False)
    rows, view_ids = sample_pairs(cache.num_samples, views.count, pairs, seed)
    index = cache.sample_index()
    matches = None if fingerprint is None else fingerprint.get("digest") == record.fingerprint.get("digest")
    report = FidelityReport(cache.url, teacher_name, len(rows), tolerance, matches, 0 if params_reader else None)
    report.targets = {name: TargetFidelity(name) for name in targets}
    with TargetExtractor(teacher, list(targets.values()), device) as extract:
        for b in tqdm(range(0, len(rows), batch_size), desc="verify", unit="batch", disable=not progress):
            r, v = rows[b : b + batch_size], view_ids[b : b + batch_size]
            made = views.batch(dataset, index[r], v)
            if params_reader is not None:
                stored = params_reader.read_rows(r, v)
                drawn = made.params
                report.params_mismatches += int((drawn.view(np.uint32) != stored.view(np.uint32)).any(axis=1).sum())
            _, live = extract(made.inputs)
            for name, target in targets.items():
                cached = target.decode({rel: torch.from_numpy(rd.read_rows(r, v)) for rel, rd in readers[name].items()})
                _compare(report.targets[name], target, cached, live[name].cpu(), tolerance)
    return report


def _compare(
    out: TargetFidelity, target: Target, cached: torch.Tensor, live: torch.Tensor, tolerance: Tolerance
) -> None:
    """Fold one batch of (cached, live) values of a target into ``out``."""
    if not isinstance(cached, torch.Tensor):  # top-k or sampled encodings: no elementwise comparison to make
        raise ConfigError(
            f"verify --recompute compares targets stored as one dense array; {target.name!r} is stored as "
            f"{type(cached).__name__}. Check its files with `kdcache verify STORE` (sizes and SHA-256) instead"
        )
    stored_live = target.decode({k: torch.from_numpy(v) for k, v in target.encode(live).items()}).float()
    cached = cached.float()
    a, b = cached.reshape(len(cached), -1), stored_live.reshape(len(cached), -1)
    diff = (a - b).abs()
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)
    out.max_abs_error = max(out.max_abs_error, float(diff.max()))
    out.encoding_error = max(out.encoding_error, float((a - live.reshape(len(live), -1).float()).abs().max()))
    out.min_cosine = min(out.min_cosine, float(cosine.min()))
    out.cosine_sum += float(cosine.sum())
    out.exact += int((diff == 0).all(dim=1).sum())
    out.pairs += len(a)
    out.within_tolerance &= bool((diff <= tolerance.atol + tolerance.rtol * b.abs()).all())


def recompute_pipeline_store(
    cfg: PipelineConfig,
    store: str,
    *,
    pairs: int,
    seed: int = 0,
    tolerance: Tolerance = Tolerance(),
    progress: bool = True,
) -> FidelityReport:
    """:func:`recompute_check` of ``store`` with the teacher (loaded from its checkpoint, never trained), train split
    and views of pipeline ``cfg``."""
    cache = open_cache(store)
    teacher = load_teacher(cfg)
    targets = [build_target(t.kind, t.params) for t in cache.teacher(cfg.teacher.name).targets.values()]
    layers = sorted({layer for t in targets for layer in t.teacher_layers()})
    fingerprint = teacher_fingerprint(teacher, spec=model_spec(cfg, "teacher"), layers=layers)
    return recompute_check(
        cache,
        teacher,
        load_split(cfg, cfg.data.train_split),
        view_transform(cfg),
        teacher_name=cfg.teacher.name,
        pairs=pairs,
        fingerprint=fingerprint,
        seed=seed,
        batch_size=cfg.cache.batch_size,
        device=device_of(cfg),
        tolerance=tolerance,
        progress=progress,
    )
