"""``kdcache run`` with compare entries: the views pipeline on a subset trains every entry and reports a store per V."""

from __future__ import annotations

import pytest

from kdcache.errors import ConfigError
from kdcache.pipeline import load_pipeline, parse_pipeline, run_pipeline, with_overrides
from kdcache.pipeline.distill import variant_config
from tests.conftest import pipeline_dict

SUBSET = [
    "data.max_train_samples=240",
    "data.max_test_samples=120",
    "teacher.train.stages.0.epochs=4",
    "student.train.stages.0.epochs=10",
    "cache.shard_samples=128",
    "views.count=3",
]


def test_compare_entries_derive_their_configs(tmp_path):
    raw = pipeline_dict(tmp_path, views={"count": 8, "augment": [{"op": "horizontal_flip"}]})
    raw["compare"] = ["scratch", {"name": "one", "source": "cached", "set": ["views.count=1"]}]
    cfg = parse_pipeline(raw)
    scratch, one = cfg.compare
    assert variant_config(cfg, scratch) is cfg
    single = variant_config(cfg, one)
    assert one.name == "one" and single.views.count == 1 and single.views.augment == cfg.views.augment
    assert cfg.store_url.endswith("cache/train-8views.zarr") and single.store_url.endswith("cache/train.zarr")
    assert with_overrides(cfg, ["seed=5"]).seed == 5 and with_overrides(cfg, ["seed=5"]).compare == cfg.compare
    raw["compare"] = ["cached", {"name": "cached", "source": "cached"}]
    with pytest.raises(ConfigError, match=r"compare has repeated variant names \['cached', 'cached'\]"):
        parse_pipeline(raw)
    raw["compare"] = [{"name": "x", "source": "online", "set": ["views.count"]}]
    with pytest.raises(ConfigError, match=r"override 'views.count' must look like key.sub=value"):
        parse_pipeline(raw)


@pytest.mark.slow
def test_views_pipeline_compares_single_view_many_views_online_and_scratch(tmp_path):
    cfg = load_pipeline("pipelines/digits_kd_views.yaml", [*SUBSET, f"output_dir={tmp_path / 'run'}"])
    summary = run_pipeline(cfg, progress=False)
    students = summary["students"]
    assert list(students) == ["scratch", "online", "cached-1view", "cached-4views", "cached-16views"]
    assert [students[k]["views"]["policy"] for k in students] == ["fresh", "fresh", "cycle", "cycle", "cycle"]
    assert [students[k]["views"]["count"] for k in students] == [3, 3, 1, 4, 3]  # the subset caches 3, not 16
    assert summary["teacher"]["test"]["accuracy"] > 0.75
    assert all(s["test"]["accuracy"] > 0.3 for s in students.values())  # 10 classes: chance is 0.1

    many, single, four = summary["stores"]
    assert (many["views"], single["views"], four["views"]) == (3, 1, 4)
    for store, views in ((many, 3), (four, 4)):  # fp16 logits: 20 B per view, plus per-shard index bytes
        ratio = store["target_bytes_per_sample"]["logits"] / single["target_bytes_per_sample"]["logits"]
        assert views - 0.1 < ratio <= views
        assert store["params_bytes_per_sample"] > 0 and store["bytes"] > single["bytes"]
    assert single["params_bytes_per_sample"] == 0
    report = (tmp_path / "run" / "results.md").read_text()
    for text in ("student (cached-16views)", "fresh view each epoch", "3 views, cycle", "params B / sample"):
        assert text in report
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
