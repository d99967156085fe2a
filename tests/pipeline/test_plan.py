"""`kdcache plan` predicts the arrays precompute writes; `kdcache fidelity` measures encodings on real stores."""

from __future__ import annotations

import pytest

from kdcache.pipeline import load_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.pipeline.plan import plan_storage
from kdcache.store import open_store
from kdcache.tools.fidelity import measure
from tests.conftest import ROOT

SMALL = ["data.max_train_samples=200", "teacher.train.stages.0.epochs=1", "cache.shard_samples=128"]


def test_plan_matches_the_arrays_precompute_writes(tmp_path):
    cfg = load_pipeline(ROOT / "pipelines/digits_fsp.yaml", [*SMALL, f"output_dir={tmp_path}"])
    plan = {row.array: row for row in plan_storage(cfg)}
    assert plan["fsp/stem__layer1"].bytes_per_sample == 16 * 16 * 2  # (c_a, c_b) = (16, 16) in float16
    assert plan["fsp/layer2__layer3"].bytes_per_sample == 32 * 64 * 2
    assert plan["fsp/layer2__layer3"].total_bytes == 200 * 32 * 64 * 2
    # every store's per-sample arrays: index and label (int64), the 16-byte content digest and one per view
    samples = {a: r.bytes_per_sample for a, r in plan.items() if r.target == "samples"}
    assert samples == {"samples/index": 8, "samples/label": 8, "samples/digest": 16, "samples/view_digest": 16}
    assert not (tmp_path / "teacher.safetensors").exists()  # planning never trains or loads a teacher
    run_precompute(cfg, progress=False)
    cache = open_store(cfg.store_url)
    written = [a for t in cache.teacher(cfg.teacher.name).targets.values() for a in t.arrays.values()]
    written += cache.manifest.samples.arrays.values()
    prefix = f"teachers/{cfg.teacher.name}/"
    assert sorted(a.path.removeprefix(prefix) for a in written) == sorted(plan)
    for array in written:
        row = plan[array.path.removeprefix(prefix)]
        assert tuple(array.shape) == row.shape and array.dtype == row.dtype
        assert array.chunks[0] == row.chunk_samples and array.shards[0] == row.shard_samples


def test_plan_counts_the_view_numbers_of_augmented_views(tmp_path):
    views = "views={count: 4, augment: [{op: random_crop, padding: 1}]}"
    cfg = load_pipeline(ROOT / "pipelines/digits_kd.yaml", [*SMALL, views, f"output_dir={tmp_path}"])
    plan = {row.array: row for row in plan_storage(cfg)}
    # (4 views, 2 numbers: the crop's top and left) float32 per sample; the fp16 logits are (4 views, 10 classes)
    assert plan["views/params"].bytes_per_sample == 4 * 2 * 4 and plan["views/params"].target == "samples"
    assert plan["logits"].bytes_per_sample == 4 * 10 * 2


@pytest.mark.slow
def test_fidelity_orders_encodings_by_size_and_error(tmp_path):
    rows = {r["encoding"]: r for r in measure(10, tmp_path, samples=512)}
    assert list(rows) == ["dense fp16", "int8", "top-1", "top-5"]
    assert [rows[e]["raw_bytes_per_sample"] for e in rows] == [
        20,
        18,
        12,
        28,
    ]  # fp16·10; 10 + 8; (2+2)·k + 4·2 temperatures
    assert rows["dense fp16"]["kl_T1"] < 1e-5
    assert rows["int8"]["kl_T1"] < 1e-3
    for t in ("T1", "T4"):
        assert rows["top-1"][f"kl_{t}"] > rows["top-5"][f"kl_{t}"] > rows["dense fp16"][f"kl_{t}"]
        assert 0 < rows["top-1"][f"mass_{t}"] < rows["top-5"][f"mass_{t}"] <= 1
