"""The storage breakdown behind ``kdcache inspect --png`` and ``storage.png``: every byte on disk, attributed."""

from __future__ import annotations

import pytest

from kdcache.pipeline.report import OVERHEAD, SHARED, plot_storage, storage_breakdown
from kdcache.store import open_store
from kdcache.targets import build_target
from tests.conftest import cache_digits


def test_breakdown_attributes_every_byte_and_plots(tmp_path, teacher, digits_small, views):
    path = tmp_path / "train.zarr"
    targets = [build_target("logits", {}), build_target("logits", {"encoding": "topk", "k": 3})]
    cache_digits(path, teacher, digits_small, views, targets)
    cache = open_store(str(path))
    n = cache.num_samples

    rows = storage_breakdown(cache)
    assert list(rows) == ["t8", SHARED]
    assert list(rows["t8"]) == ["logits", "logits_topk/indices", "logits_topk/lse", "logits_topk/values"]
    assert rows["t8"]["logits"] * n == cache.array_bytes("teachers/t8/logits")
    assert (
        set(rows[SHARED]) == {"samples/index", "samples/label", "samples/digest", "samples/view_digest", OVERHEAD}
        and rows[SHARED][OVERHEAD] > 0
    )
    total = sum(size for row in rows.values() for size in row.values())
    assert total * n == pytest.approx(cache.location.disk_usage(), abs=1e-6)  # the bars add up to the store

    png = plot_storage(cache, tmp_path / "plots" / "storage.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
