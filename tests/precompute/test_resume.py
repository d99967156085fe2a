"""An interrupted precompute resumes at the first uncommitted shard and ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import pytest

from kdcache.precompute import precompute
from kdcache.store import read_manifest
from kdcache.store.location import StoreLocation
from tests.helpers import Interrupting, store_files


def run(teacher, dataset, path, views, target):
    return precompute(
        teacher,
        dataset,
        path,
        targets=[target],
        views=views,
        num_classes=10,
        teacher_name="t8",
        shard_samples=128,
        batch_size=16,
        progress=False,
    )


@pytest.mark.parametrize(("stop_at", "committed"), [(192, 1), (284, 2)], ids=["mid-shard-1", "mid-shard-2"])
def test_resume_gives_identical_bytes(tmp_path, teacher, digits_small, views, logits_target, stop_at, committed):
    reference = tmp_path / "reference.zarr"
    run(teacher, digits_small, reference, views, logits_target)

    resumed = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        run(teacher, Interrupting(digits_small, stop_at), resumed, views, logits_target)
    partial = read_manifest(StoreLocation(resumed))
    assert partial.status == "building"
    assert [c.index for c in partial.teachers["t8"].shards] == list(range(committed))

    report = run(teacher, digits_small, resumed, views, logits_target)
    assert report.shards_skipped == committed and report.shards_written == 3 - committed
    assert report.complete
    assert store_files(resumed) == store_files(reference)
    assert read_manifest(StoreLocation(resumed)) == read_manifest(StoreLocation(reference))


def test_rerun_of_a_complete_store_writes_nothing(tmp_path, teacher, digits_small, views, logits_target):
    path = tmp_path / "train.zarr"
    run(teacher, digits_small, path, views, logits_target)
    before = store_files(path)
    report = run(teacher, digits_small, path, views, logits_target)
    assert (report.shards_written, report.shards_skipped, report.complete) == (0, 3, True)
    assert store_files(path) == before
