"""The arrays every store holds once for all its teachers (owner ``samples``): each row's dataset index, the label,
each sample's content digest and, with augmented views, the numbers each view was drawn with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.digest import DIGEST_BYTES, sample_digests
from kdcache.store import SAMPLE_DIGEST, VIEW_PARAMS, ArraySpec
from kdcache.views import ViewTransform
from kdcache.views.transform import sizes_of

INDEX, LABEL = "samples/index", "samples/label"


def pairs(lo: int, hi: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """All (sample, view) pairs of a range, sample-major, as two index arrays."""
    samples = np.repeat(np.arange(lo, hi, dtype=np.int64), count)
    views = np.tile(np.arange(count, dtype=np.int64), hi - lo)
    return samples, views


def sample_arrays(dataset: SampleDataset, view_count: int, param_names: list[str]) -> list[ArraySpec]:
    """Per-sample arrays: the index, the label (classification), the content digest and, when the store holds
    augmented views (V > 1 with augmentation ops, whose drawn numbers are ``param_names``), every view's numbers
    (zstd: small integers and repeats)."""
    specs = [ArraySpec(INDEX, (), "int64", attributes=_described(INDEX, ["sample"], "dataset index of each row"))]
    if dataset.all_labels().ndim == 1:
        specs.append(ArraySpec(LABEL, (), "int64", attributes=_described(LABEL, ["sample"], "ground-truth class")))
    digest = "BLAKE2b-128 of each sample's input (before views) and label: dtype, shape and bytes of each"
    specs.append(
        ArraySpec(
            SAMPLE_DIGEST, (DIGEST_BYTES,), "uint8", attributes=_described(SAMPLE_DIGEST, ["sample", "byte"], digest)
        )
    )
    if param_names and view_count > 1:
        meaning = "the numbers each view's augmentation was drawn with (view 0: the identity numbers)"
        attributes = _described(VIEW_PARAMS, ["sample", "view", "param"], meaning) | {"params": list(param_names)}
        specs.append(ArraySpec(VIEW_PARAMS, (len(param_names),), "float32", "zstd", views=view_count,
                               attributes=attributes))  # fmt: skip
    return specs


def _described(path: str, axes: list[str], meaning: str) -> dict[str, Any]:
    return {"array": path, "axes": axes, "meaning": meaning}


def select(raw: torch.Tensor | list[torch.Tensor], mask: np.ndarray) -> torch.Tensor | list[torch.Tensor]:
    """The rows of a batch of raw inputs (one stacked tensor or a list) where ``mask`` is set."""
    if isinstance(raw, torch.Tensor):
        return raw[torch.from_numpy(mask)]
    return [raw[k] for k in np.flatnonzero(mask)]


def read_facts(
    dataset: SampleDataset, views: ViewTransform, lo: int, hi: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The content digests ``(n, 16)`` and view numbers ``(n, V, P)`` of samples ``[lo, hi)``, from the dataset a
    batch at a time (no teacher, no pixels: what the samples owner needs when the teacher's shard is done)."""
    digests, params = [], []
    for start in range(lo, hi, batch_size):
        indices = np.arange(start, min(start + batch_size, hi))
        inputs, labels = dataset.get_batch(indices)
        digests.append(sample_digests(inputs, labels))
        samples, view_ids = pairs(int(indices[0]), int(indices[-1]) + 1, views.count)
        sizes = [size for size in sizes_of(inputs) for _ in range(views.count)]
        drawn = views.params(samples, view_ids, sizes, num_samples=len(dataset))
        params.append(drawn.reshape(len(indices), views.count, -1))
    return np.concatenate(digests), np.concatenate(params)


def sample_rows(
    dataset: SampleDataset, specs: list[ArraySpec], lo: int, hi: int, digests: np.ndarray, params: np.ndarray
) -> dict[str, np.ndarray]:
    """The rows of shard ``[lo, hi)`` of every sample array (``digests`` and view ``params`` of the same samples)."""
    rows = {INDEX: np.arange(lo, hi, dtype=np.int64), SAMPLE_DIGEST: digests}
    paths = {s.path for s in specs}
    if LABEL in paths:
        rows[LABEL] = dataset.all_labels()[lo:hi].astype(np.int64)
    if VIEW_PARAMS in paths:
        rows[VIEW_PARAMS] = params
    return rows
