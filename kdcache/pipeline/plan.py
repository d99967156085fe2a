"""``kdcache plan``: the bytes of every array a pipeline's stage one would write, before any teacher runs."""

from __future__ import annotations

from kdcache.pipeline.build import load_split, untrained_teacher
from kdcache.pipeline.config import PipelineConfig
from kdcache.pipeline.distill import stage_one_job
from kdcache.precompute import TeacherRun
from kdcache.store import plan_shard_samples


def plan_storage(cfg: PipelineConfig) -> list[dict]:
    """Bytes per sample and store size of every array the pipeline would write, before any teacher runs.

    Shapes come from one dummy forward pass of an untrained teacher of the configured architecture. Sizes are
    uncompressed (compressed arrays will be smaller on disk).
    """
    train = load_split(cfg, cfg.data.train_split)
    job = stage_one_job(cfg, teacher=untrained_teacher(cfg), dataset=train)
    with TeacherRun(job) as run:
        layouts = run.layouts
    specs = [(name, rel, spec) for name, layout in layouts.items() for rel, spec in layout.arrays.items()]
    n = len(train)
    shard = cfg.cache.shard_samples or plan_shard_samples([s.bytes_per_sample for _, _, s in specs], n)
    return [
        {
            "target": name,
            "array": rel,
            "shape": [n, *spec.shape(1)[1:]],
            "dtype": spec.dtype,
            "bytes_per_sample": spec.bytes_per_sample,
            "total_bytes": spec.bytes_per_sample * n,
            "chunk_samples": spec.chunk_samples(shard),
            "shard_samples": shard,
            "compressor": spec.compressor,
        }
        for name, rel, spec in specs
    ]
