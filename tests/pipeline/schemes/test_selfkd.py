"""Born-again generations: one store with a teacher per generation, each generation trained from its predecessor's
cache alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcache.checkpoint import load_model
from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.models import DigitsCNN
from kdcache.pipeline import load_pipeline
from kdcache.pipeline.build import load_split
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.schemes.selfkd import SelfKDPipeline, cache_generation, train_generation
from kdcache.store import open_store
from tests.conftest import ROOT
from tests.helpers import kdcache, with_sets

PIPELINE = ROOT / "pipelines" / "digits_selfkd.yaml"
SMALL = [
    "data.max_train_samples=300",
    "data.max_test_samples=200",
    "selfkd.train.stages.0.epochs=15",
    "selfkd.distill.0.epochs=15",
    "cache.shard_samples=128",
]


def small_selfkd(out, *extra: str) -> SelfKDPipeline:
    return load_pipeline(PIPELINE, [*SMALL, f"output_dir={out}", *extra])


def test_generations_must_read_a_cached_target(tmp_path):
    with pytest.raises(ConfigError, match=r"selfkd.distill reads no teacher target"):
        small_selfkd(tmp_path, "selfkd.distill.0.losses=[{name: ce}]")
    with pytest.raises(ConfigError, match=r"selfkd.distill reads \['logits_topk'\], but cache.targets produces"):
        small_selfkd(tmp_path, "selfkd.distill.0.losses=[{name: kd, target: logits_topk}]")


@pytest.mark.slow
def test_each_generation_is_cached_and_the_next_learns_from_that_cache_alone(tmp_path):
    out = tmp_path / "run"
    result = kdcache("run", str(PIPELINE), "--quiet", *with_sets([*SMALL, f"output_dir={out}"]))
    assert result.returncode == 0, result.stderr
    for row in ("generation 0 (labels only)", "generation 3 (from the cache of gen2)", "ensemble of generations 0..3"):
        assert row in result.stdout
    summary = json.loads((out / "results.json").read_text())
    assert sorted(summary["generations"]) == ["gen0", "gen1", "gen2", "gen3"]
    assert all(g["test"] > 0.6 for g in summary["generations"].values()) and summary["ensemble"] > 0.6

    cfg = small_selfkd(out)
    cache = open_store(cfg.store_url)  # one store, a teacher per generation
    assert cache.teachers == ["gen0", "gen1", "gen2", "gen3"]
    train_set = load_split(cfg, "train")
    for k in range(4):  # generation k's cached logits are its saved weights' outputs
        model = load_model(DigitsCNN(10, width=4), out / f"gen{k}.safetensors").eval()
        data = cached_data(cfg, train_set, ["logits"], StoredTeacher(f"gen{k}"))
        batch = data[np.arange(len(data))].to("cpu")
        with torch.no_grad():
            assert torch.equal(batch.targets["logits"], model(batch.inputs).half().float()), k

    # generation 2 again, with generation 1's weights gone: the same weights, so it read only gen1's cache
    trained = {
        k: v.clone() for k, v in load_model(DigitsCNN(10, width=4), out / "gen2.safetensors").state_dict().items()
    }
    (out / "gen1.safetensors").unlink()
    again = train_generation(cfg, 2, train_set, None, progress=False).model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in again.items())

    # ... and without gen1 in the store it cannot train at all
    other = small_selfkd(out, f"cache.store={tmp_path / 'gen0-only.zarr'}")
    cache_generation(other, 0, load_model(DigitsCNN(10, width=4), out / "gen0.safetensors"), train_set, progress=False)
    with pytest.raises(StoreMismatchError, match=r"has no teacher 'gen1'; it holds \['gen0'\]"):
        train_generation(other, 2, train_set, None, progress=False)
