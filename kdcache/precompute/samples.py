"""The arrays every store holds once for all its teachers (owner ``samples``): each row's dataset index, the label,
each sample's content digest, each view's input digest, with augmented views the numbers each view was drawn
with and, with ``store_tokens``, a token dataset's packed ids, labels and lengths (:mod:`kdcache.datasets.packed`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.digest import DIGEST_BYTES, DIGEST_HASH, Inputs, sample_digests
from kdcache.datasets.packed import TOKENS, token_array_facts, token_rows
from kdcache.store import SAMPLE_DIGEST, SAMPLE_INDEX, SAMPLE_LABEL, VIEW_DIGEST, VIEW_PARAMS, ArraySpec
from kdcache.views import ViewBatch, Views
from kdcache.views.digest import VIEW_DIGEST_BYTES, VIEW_DIGEST_HASH, view_digests


def pairs(lo: int, hi: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """All (sample, view) pairs of a range, sample-major, as two index arrays."""
    samples = np.repeat(np.arange(lo, hi, dtype=np.int64), count)
    views = np.tile(np.arange(count, dtype=np.int64), hi - lo)
    return samples, views


def sample_arrays(
    dataset: SampleDataset, view_count: int, param_names: list[str], *, store_tokens: bool = False
) -> list[ArraySpec]:
    """Per-sample arrays: the index, the label (classification), the content digest, every view's input digest,
    when the store holds augmented views (V > 1 with augmentation ops, whose drawn numbers are ``param_names``)
    every view's numbers (zstd: small integers and repeats) and, with ``store_tokens`` (token datasets only), the
    sequences themselves: ``samples/tokens``, ``samples/labels`` and ``samples/lengths``."""
    specs = [
        ArraySpec(
            SAMPLE_INDEX, (), "int64", attributes=_described(SAMPLE_INDEX, ["sample"], "dataset index of each row")
        )
    ]
    if _one_label_per_sample(dataset):
        specs.append(
            ArraySpec(SAMPLE_LABEL, (), "int64", attributes=_described(SAMPLE_LABEL, ["sample"], "ground-truth class"))
        )
    digest = f"{DIGEST_HASH} of each sample's input (before views) and label: dtype, shape and bytes of each"
    specs.append(
        ArraySpec(
            SAMPLE_DIGEST, (DIGEST_BYTES,), "uint8", attributes=_described(SAMPLE_DIGEST, ["sample", "byte"], digest)
        )
    )
    meaning = f"{VIEW_DIGEST_HASH}: the exact tensor the teacher was given for (sample, view)"
    specs.append(
        ArraySpec(
            VIEW_DIGEST,
            (VIEW_DIGEST_BYTES,),
            "uint8",
            views=view_count,
            attributes=_described(VIEW_DIGEST, ["sample", "view", "byte"], meaning),
        )
    )
    if param_names and view_count > 1:
        meaning = "the numbers each view's augmentation was drawn with (view 0: the identity numbers)"
        attributes = _described(VIEW_PARAMS, ["sample", "view", "param"], meaning) | {"params": list(param_names)}
        specs.append(
            ArraySpec(VIEW_PARAMS, (len(param_names),), "float32", "zstd", views=view_count, attributes=attributes)
        )
    if store_tokens:
        specs += [
            ArraySpec(path, shape, dtype, codec, attributes=attrs)
            for path, shape, dtype, codec, attrs in token_array_facts(dataset)
        ]
    return specs


def _one_label_per_sample(dataset: SampleDataset) -> bool:
    """Whether each sample has one label (classification), from one sample's labels: building every label only to
    learn their rank would hold a token corpus's labels in RAM (one per token)."""
    if len(dataset) == 0:
        return dataset.all_labels().ndim == 1
    return dataset.get_batch(np.zeros(1, dtype=np.int64))[1].ndim == 1


def _described(path: str, axes: list[str], meaning: str) -> dict[str, Any]:
    return {"array": path, "axes": axes, "meaning": meaning}


def select(raw: Inputs, mask: np.ndarray) -> Inputs:
    """The rows of a batch of raw inputs (one stacked tensor or a list) where ``mask`` is set (``raw`` itself when
    every row is: one view per sample)."""
    if mask.all():
        return raw
    rows = np.flatnonzero(mask)
    if isinstance(raw, torch.Tensor):
        return raw.index_select(0, torch.from_numpy(rows))  # a gather: several times faster than a mask
    return [raw[int(k)] for k in rows]


def read_facts(dataset: SampleDataset, views: Views, lo: int, hi: int, batch_size: int) -> SampleFacts:
    """The content digests ``(n, 16)``, view input digests ``(n, V, 16)`` and view numbers ``(n, V, P)`` of samples
    ``[lo, hi)``, made from the dataset a batch at a time with no teacher (what the samples owner needs when the
    teacher's shard is committed already)."""
    facts = SampleFacts.empty(hi - lo, views)
    step = max(1, batch_size // views.count)
    for start in range(lo, hi, step):
        samples, view_ids = pairs(start, min(start + step, hi), views.count)
        facts.record(start - lo, views.batch(dataset, samples, view_ids), view_ids)
    return facts


class SampleFacts:
    """What stage one learns of the samples of one shard from the reads it does anyway: each sample's content digest,
    each view's input digest and drawn numbers (rows of the shard, sample-major)."""

    def __init__(self, digests: np.ndarray, inputs: np.ndarray, params: np.ndarray) -> None:
        self.digests, self.inputs, self.params = digests, inputs, params

    @classmethod
    def empty(cls, count: int, views: Views) -> SampleFacts:
        v = views.count
        return cls(
            np.empty((count, DIGEST_BYTES), dtype=np.uint8),
            np.empty((count, v, VIEW_DIGEST_BYTES), dtype=np.uint8),
            np.empty((count, v, len(views.param_names)), dtype=np.float32),
        )

    def record(self, row: int, made: ViewBatch, view_ids: np.ndarray) -> None:
        """Record a batch of whole samples (every view of each, sample-major) starting at shard row ``row``."""
        v = self.inputs.shape[1]
        rows = slice(row, row + len(view_ids) // v)
        first = view_ids == 0  # one content digest per sample: it does not depend on the view
        self.digests[rows] = sample_digests(select(made.raw, first), made.labels[torch.from_numpy(first)])
        self.inputs[rows] = view_digests(made.inputs).reshape(len(view_ids) // v, v, VIEW_DIGEST_BYTES)
        self.params[rows] = made.params.reshape(len(view_ids) // v, v, self.params.shape[2])


def sample_rows(
    dataset: SampleDataset, specs: list[ArraySpec], lo: int, hi: int, facts: SampleFacts
) -> dict[str, np.ndarray]:
    """The rows of shard ``[lo, hi)`` of every sample array (``facts`` of the same samples)."""
    rows = {SAMPLE_INDEX: np.arange(lo, hi, dtype=np.int64), SAMPLE_DIGEST: facts.digests, VIEW_DIGEST: facts.inputs}
    paths = {s.path for s in specs}
    if SAMPLE_LABEL in paths:
        rows[SAMPLE_LABEL] = dataset.all_labels()[lo:hi].astype(np.int64)
    if VIEW_PARAMS in paths:
        rows[VIEW_PARAMS] = facts.params
    if TOKENS in paths:
        rows |= token_rows(dataset, lo, hi)
    return rows
