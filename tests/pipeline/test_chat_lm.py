"""The shipped chat_lm pipeline on a CI-sized subset: chat data rendered with the shipped tokenizer's template, the
teacher cached once, every student variant trained and evaluated on the held-out conversations' assistant tokens."""

from __future__ import annotations

import hashlib

from kdcache.pipeline import load_pipeline, run_pipeline
from kdcache.store import open_cache
from tests.conftest import ROOT


def test_chat_lm_runs_on_a_subset(tmp_path):
    sets = ["data.max_train_samples=32", "data.max_test_samples=16", "teacher.train.stages.0.epochs=1",
            "student.train.stages.0.epochs=1", "compare.3.stages.0.epochs=1", f"output_dir={tmp_path}"]  # fmt: skip
    summary = run_pipeline(load_pipeline(ROOT / "pipelines" / "chat_lm.yaml", sets), progress=False)
    assert set(summary["students"]) == {"scratch", "online", "cached-topk", "cached-sampled"}
    assert summary["store"]["tokens_per_sample"] == 192
    for result in summary["students"].values():
        assert result["test"]["perplexity"] < 1024  # over assistant tokens only: the test labels hold no others
    stores = [p for p in tmp_path.rglob("*.zarr") if (p / "zarr.json").is_file()]
    source = open_cache(str(stores[0])).manifest.dataset["source"]
    assert source["kind"] == "chat" and source["packing"]["train_on"] == "assistant"
    template = (ROOT / "data" / "chat" / "tokenizer" / "chat_template.jinja").read_bytes()
    assert source["packing"]["chat_template_sha256"] == hashlib.sha256(template).hexdigest()
