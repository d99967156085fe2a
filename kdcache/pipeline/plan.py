"""``kdcache plan``: the bytes of every array a pipeline's stage one would write, before any teacher runs."""

from __future__ import annotations

from dataclasses import dataclass

from kdcache.datasets.text import tokens_per_sample
from kdcache.pipeline.build import load_split, untrained_teacher
from kdcache.pipeline.config import DistillConfig
from kdcache.pipeline.distill import stage_one_job
from kdcache.precompute import TeacherRun
from kdcache.store import SAMPLES_OWNER, layouts_shard_samples
from kdcache.store.layout import Compressor

DISTILLKIT_BYTES_PER_TOKEN = 300
"""DistillKit's compressed top-k logits at k = 128, as its authors state it (~300 B/token), for comparison."""


@dataclass(frozen=True)
class ArrayPlan:
    """One array stage one would write: its ``target`` (``samples`` for the per-sample arrays every store holds),
    path ``array`` under it, full ``shape`` and ``dtype``, uncompressed bytes per sample, per token (text only,
    else ``None``) and in all, and its chunk and shard sizes in samples and codec."""

    target: str
    array: str
    shape: tuple[int, ...]
    dtype: str
    bytes_per_sample: int
    bytes_per_token: float | None
    total_bytes: int
    chunk_samples: int
    shard_samples: int
    compressor: Compressor


def plan_storage(cfg: DistillConfig) -> list[ArrayPlan]:
    """Bytes per sample (and per token, for text) and store size of every array the pipeline would write, before
    any teacher runs: each target's arrays, and the ``samples/*`` arrays every store holds once (index, label,
    16-byte content digest and, with augmented views, the numbers each view was drawn with), as target ``samples``.

    Shapes come from one dummy forward pass of an untrained teacher of the configured architecture. Sizes are
    uncompressed (compressed arrays will be smaller on disk).
    """
    train = load_split(cfg, cfg.data.train_split)
    job = stage_one_job(cfg, teacher=untrained_teacher(cfg), dataset=train)
    with TeacherRun(job) as run:
        layouts, sample_arrays = run.layouts, run.sample_arrays
    specs = [(name, rel, spec) for name, layout in layouts.items() for rel, spec in layout.arrays.items()]
    n = len(train)
    shard = cfg.cache.shard_samples or layouts_shard_samples(layouts.values(), n)  # what stage one will choose
    specs += [(SAMPLES_OWNER, spec.path, spec) for spec in sample_arrays]
    tokens = tokens_per_sample(train.describe())
    return [
        ArrayPlan(
            target=name,
            array=rel,
            shape=(n, *spec.shape(1)[1:]),
            dtype=spec.dtype,
            bytes_per_sample=spec.bytes_per_sample,
            bytes_per_token=None if tokens is None else spec.bytes_per_sample / tokens,
            total_bytes=spec.bytes_per_sample * n,
            chunk_samples=spec.chunk_samples(shard),
            shard_samples=shard,
            compressor=spec.compressor,
        )
        for name, rel, spec in specs
    ]


def token_budget(cfg: DistillConfig, rows: list[ArrayPlan]) -> list[str]:
    """One line per cached top-k token target: its bytes per token and in all against the goal of 4 + 6·k bytes (fp16 values,
    k ≤ 64) and DistillKit's ~300 B/token at k = 128."""
    lines = []
    for target in cfg.cache.targets:
        if target.kind != "token_logits" or target.params.get("encoding", "topk") != "topk":
            continue
        name, k = target.target_name, int(target.params["k"])
        per_token = sum(r.bytes_per_token or 0 for r in rows if r.target == name)
        total = sum(r.total_bytes for r in rows if r.target == name)
        lines.append(
            f"{name}: {per_token:,.1f} B/token at k={k}, {total / 1e6:,.2f} MB for the dataset's tokens (goal ≤ 4 + 6·k = {4 + 6 * k} B; DistillKit ≈ "
            f"{DISTILLKIT_BYTES_PER_TOKEN} B/token at k=128)"
        )
    return lines
