"""`kdcache plan` predicts the arrays precompute writes; `kdcache fidelity` measures encodings on real stores."""

from __future__ import annotations

import pytest

from kdcache.pipeline import load_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.pipeline.plan import plan_storage
from kdcache.store import open_cache
from kdcache.tools.fidelity import measure
from tests.conftest import ROOT

SMALL = ["data.max_train_samples=200", "teacher.train.stages.0.epochs=1", "cache.shard_samples=128"]


def test_plan_matches_the_arrays_precompute_writes(tmp_path):
    cfg = load_pipeline(ROOT / "pipelines/digits_fsp.yaml", [*SMALL, f"output_dir={tmp_path}"])
    plan = {row["array"]: row for row in plan_storage(cfg)}
    assert plan["fsp/stem__layer1"]["bytes_per_sample"] == 16 * 16 * 2  # (c_a, c_b) = (16, 16) in float16
    assert plan["fsp/layer2__layer3"]["bytes_per_sample"] == 32 * 64 * 2
    assert plan["fsp/layer2__layer3"]["total_bytes"] == 200 * 32 * 64 * 2
    assert not (tmp_path / "teacher.safetensors").exists()  # planning never trains or loads a teacher
    run_precompute(cfg, progress=False)
    record = open_cache(cfg.store_url).teacher(cfg.teacher.name)
    for target in record.targets.values():
        for rel, array in target.arrays.items():
            assert array.shape == plan[rel]["shape"] and array.dtype == plan[rel]["dtype"]
            assert array.chunks[0] == plan[rel]["chunk_samples"] and array.shards[0] == plan[rel]["shard_samples"]


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
