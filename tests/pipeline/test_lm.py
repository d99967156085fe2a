"""Language-model pipelines: planned bytes per token, the whole distill method on tokens (scratch, online, cached
top-k and sampled), refusals before any teacher runs, and the shipped stdlib_lm pipeline on a CI-sized subset."""

from __future__ import annotations

import json

import pytest
import yaml

from kdcache.errors import ConfigError
from kdcache.pipeline import load_pipeline, parse_pipeline, run_pipeline
from kdcache.pipeline.plan import plan_storage, token_budget
from tests.conftest import ROOT
from tests.helpers import kdcache
from tests.lmkit import SEQ_LEN, lm_pipeline_dict


@pytest.fixture
def lm_raw(tmp_path, lm_corpus, lm_tokenizer) -> dict:
    return lm_pipeline_dict(tmp_path, lm_corpus, lm_tokenizer)


def test_plan_gives_bytes_per_token_before_any_teacher_runs(lm_raw, tmp_path):
    cfg = parse_pipeline(lm_raw)
    rows = {r["array"]: r for r in plan_storage(cfg)}
    assert rows["token_logits_topk/values"]["bytes_per_sample"] == SEQ_LEN * 8 * 2
    assert rows["token_logits_topk/indices"]["dtype"] == "uint16"  # 300 tokens
    per_token = {a: r["bytes_per_token"] for a, r in rows.items()}
    assert sum(v for a, v in per_token.items() if a.startswith("token_logits_topk")) == 4 + 4 * 8
    assert sum(v for a, v in per_token.items() if a.startswith("token_logits_sampled")) == 8 * (2 + 1)
    assert token_budget(cfg, list(rows.values())) == [
        "token_logits_topk: 36.0 B/token at k=8 (goal ≤ 4 + 6·k = 52 B; DistillKit ≈ 300 B/token at k=128)"
    ]
    assert not (tmp_path / "run" / "teacher.safetensors").exists()


@pytest.mark.slow
def test_the_distill_method_runs_on_tokens(lm_raw, tmp_path):
    summary = run_pipeline(parse_pipeline(lm_raw), progress=False)
    students = summary["students"]
    assert set(students) == {"scratch", "online", "cached", "cached-sampled"}
    for result in students.values():
        assert result["test"]["perplexity"] < 300  # better than uniform over the vocabulary
        assert 0 < result["test"]["token_accuracy"] < 1 and len(result["curve"]) == 2
    assert summary["teacher"]["test"]["perplexity"] < 300 and 0 < summary["teacher"]["cached_samples_accuracy"] < 1
    store = summary["store"]
    assert store["tokens_per_sample"] == SEQ_LEN
    assert store["target_bytes_per_sample"]["token_logits_topk"] / SEQ_LEN >= 4 + 4 * 8  # + edge-chunk padding
    report = (tmp_path / "run" / "results.md").read_text()
    assert "test perplexity" in report and "/token)" in report and "tokens/s)" in report
    assert json.loads((tmp_path / "run" / "results.json").read_text())["pipeline"] == "test_lm"


def test_stage_two_refuses_a_store_of_other_packing_through_the_cli(lm_raw, tmp_path):
    lm_raw["cache"]["store"] = str(tmp_path / "train.zarr")
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(lm_raw))
    done = kdcache("precompute", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "2 shard(s) written" in done.stdout
    refused = kdcache("train", str(path), "--quiet", "--set", "data.args.seq_len=12")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "packed another way (seq_len: store 16, dataset 12" in refused.stderr
    refused = kdcache("train", str(path), "--quiet", "--set", "data.num_classes=320")  # a wider student
    assert refused.returncode == 2
    assert "teacher 'gpt2-2x32' has a vocabulary of 300 tokens, but the student's is 320" in refused.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scratch_losses": [{"name": "ce"}]}, "scratch_losses: loss 'ce' is for classifiers .* use 'next_token'"),
        ({"views": {"count": 2}}, "one view per sequence"),
        ({"num_classes": 200}, "produces 300 token ids but data.num_classes .* is 200"),
    ],
    ids=["classifier-loss", "views", "small-vocabulary"],
)
def test_language_model_mistakes_are_refused_before_training(lm_raw, change, message):
    if "num_classes" in change:
        lm_raw["data"]["num_classes"] = change["num_classes"]
    else:
        lm_raw.update(change)
    from kdcache.pipeline.build import load_split

    with pytest.raises(ConfigError, match=message):
        load_split(parse_pipeline(lm_raw), "train")


@pytest.mark.slow
def test_stdlib_lm_runs_on_a_subset(tmp_path):
    """The shipped pipeline on 48 training sequences and one epoch each: the real stdlib files (pinned), the shipped
    tokenizer, every variant; the full run's figures are in pipelines/README.md."""
    sets = ["data.max_train_samples=48", "data.max_test_samples=16", "teacher.train.stages.0.epochs=1",
            "student.train.stages.0.epochs=1", "compare.3.stages.0.epochs=1", f"output_dir={tmp_path}"]  # fmt: skip
    summary = run_pipeline(load_pipeline(ROOT / "pipelines" / "stdlib_lm.yaml", sets), progress=False)
    assert set(summary["students"]) == {"scratch", "online", "cached-topk", "cached-sampled"}
    assert summary["store"]["tokens_per_sample"] == 128
    per_token = summary["store"]["target_bytes_per_sample"]["token_logits_topk"] / 128
    assert 4 + 4 * 32 <= per_token <= 4 + 6 * 32  # 132 B of fp16 log-probs, uint16 ids and one lse, plus padding
    for result in summary["students"].values():
        assert result["test"]["perplexity"] < 1024
