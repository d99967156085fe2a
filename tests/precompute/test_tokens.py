"""Stage one over text: an interrupted run resumes byte-identical (top-k and sampled targets), and a real 2-worker
dask LocalCluster writes the same bytes as one process."""

from __future__ import annotations

import pytest

from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.precompute import precompute
from kdcache.store import read_manifest
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target
from kdcache.views import TokenViews
from tests.helpers import Interrupting, all_files, store_files
from tests.lmkit import lm_pipeline_dict

TARGETS = [{"k": 8, "temperatures": [1.0, 2.0]}, {"encoding": "sampled", "samples": 12, "seed": 3}]


def run(teacher, dataset, path):
    return precompute(teacher, dataset, str(path), targets=[build_target("token_logits", t) for t in TARGETS],
                      views=TokenViews(), num_classes=300, teacher_name="lm", shard_samples=64, batch_size=16,
                      progress=False)  # fmt: skip


@pytest.mark.parametrize(("stop_at", "committed"), [(80, 1), (128, 2)], ids=["mid-shard-1", "in-shard-2"])
def test_interrupted_stage_one_resumes_byte_identical(tmp_path, lm_teacher, lm_train, stop_at, committed):
    assert len(lm_train) == 129  # three shards of 64: the last one holds a single sequence
    run(lm_teacher, lm_train, tmp_path / "reference.zarr")
    resumed = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        run(lm_teacher, Interrupting(lm_train, stop_at), resumed)
    partial = read_manifest(StoreLocation(resumed))
    assert [c.index for c in partial.teachers["lm"].shards] == list(range(committed))
    report = run(lm_teacher, lm_train, resumed)
    assert (report.shards_skipped, report.shards_written, report.complete) == (committed, 3 - committed, True)
    files = store_files(resumed)
    assert "teachers/lm/token_logits_sampled/ids/c/2/0/0/0" in files
    assert files == store_files(tmp_path / "reference.zarr")
    assert read_manifest(StoreLocation(resumed)) == read_manifest(StoreLocation(tmp_path / "reference.zarr"))


@pytest.mark.distributed
def test_two_dask_workers_write_the_same_bytes_as_one_process(tmp_path, lm_corpus, lm_tokenizer):
    raw = lm_pipeline_dict(tmp_path, lm_corpus, lm_tokenizer)
    raw["teacher"]["checkpoint"] = str(tmp_path / "teacher.safetensors")
    single = run_precompute(parse_pipeline({**raw, "cache": {**raw["cache"], "store": str(tmp_path / "one.zarr")}}),
                            progress=False)  # fmt: skip
    dask = run_precompute(parse_pipeline({**raw, "cache": {**raw["cache"], "store": str(tmp_path / "two.zarr")}}),
                          progress=False, workers=2)  # fmt: skip
    assert (dask.shards_written, dask.complete, dask.accuracy) == (single.shards_written, True, single.accuracy)
    assert single.shards_written == 2
    assert all_files(tmp_path / "two.zarr") == all_files(tmp_path / "one.zarr")
