"""Language-model pipelines: planned bytes per token, the whole distill method on tokens (scratch, online, cached
top-k and sampled), refusals before any teacher runs, and the shipped stdlib_lm pipeline on a CI-sized subset."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from kdcache.errors import ConfigError
from kdcache.pipeline import load_pipeline, parse_pipeline, run_pipeline
from kdcache.pipeline.plan import plan_storage, token_budget
from tests.conftest import ROOT
from tests.helpers import kdcache
from tests.lmkit import SEQ_LEN, lm_pipeline_dict, save_teacher_dir, tiny_lm, train_bpe, write_corpus


@pytest.fixture
def lm_raw(tmp_path, lm_corpus, lm_tokenizer) -> dict:
    return lm_pipeline_dict(tmp_path, lm_corpus, lm_tokenizer)


def test_plan_gives_bytes_per_token_before_any_teacher_runs(lm_raw, tmp_path):
    cfg = parse_pipeline(lm_raw)
    rows = {r.array: r for r in plan_storage(cfg)}
    assert rows["token_logits_topk/values"].bytes_per_sample == SEQ_LEN * 8 * 2
    assert rows["token_logits_topk/indices"].dtype == "uint16"  # 300 tokens
    per_token = {a: r.bytes_per_token for a, r in rows.items()}
    assert sum(v for a, v in per_token.items() if a.startswith("token_logits_topk")) == 4 + 4 * 8
    assert sum(v for a, v in per_token.items() if a.startswith("token_logits_sampled")) == 8 * (2 + 1)
    megabytes = rows["token_logits_topk/values"].shape[0] * SEQ_LEN * 36 / 1e6  # every token of the split
    assert token_budget(cfg, list(rows.values())) == [
        f"token_logits_topk: 36.0 B/token at k=8, {megabytes:,.2f} MB for the dataset's tokens (goal ≤ 4 + 6·k = 52 B; DistillKit ≈ 300 B/token at k=128)"
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
    sets = [
        "data.max_train_samples=48",
        "data.max_test_samples=16",
        "teacher.train.stages.0.epochs=1",
        "student.train.stages.0.epochs=1",
        "compare.3.stages.0.epochs=1",
        f"output_dir={tmp_path}",
    ]
    summary = run_pipeline(load_pipeline(ROOT / "pipelines" / "stdlib_lm.yaml", sets), progress=False)
    assert set(summary["students"]) == {"scratch", "online", "cached-topk", "cached-sampled"}
    assert summary["store"]["tokens_per_sample"] == 128
    per_token = summary["store"]["target_bytes_per_sample"]["token_logits_topk"] / 128
    assert 4 + 4 * 32 <= per_token <= 4 + 6 * 32  # 132 B of fp16 log-probs, uint16 ids and one lse, plus padding
    for result in summary["students"].values():
        assert result["test"]["perplexity"] < 1024


@pytest.fixture
def hf_teacher_raw(lm_raw, tmp_path, lm_teacher, lm_tokenizer) -> dict:
    """The test pipeline with a save_pretrained directory (sharded, its own config and tokenizer) as the teacher,
    as it is: no teacher.train, no teacher.checkpoint."""
    directory = save_teacher_dir(lm_teacher, tmp_path / "hf-teacher", lm_tokenizer)
    lm_raw["teacher"] = {
        "name": "hf-gpt2",
        "model": {"arch": "causal-lm", "args": {"path": str(directory), "pad_token_id": 1}},
    }
    lm_raw["student"]["train"]["stages"][0]["epochs"] = 1
    lm_raw["cache"]["store"] = str(tmp_path / "train.zarr")
    return lm_raw


def test_a_transformers_directory_is_the_teacher_as_it_is_through_the_cli(hf_teacher_raw, tmp_path, lm_teacher):
    """precompute and a 1-epoch cached student from the directory alone; retrained in place, it is refused stale."""
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(hf_teacher_raw))
    done = kdcache("precompute", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "2 shard(s) written" in done.stdout and not (tmp_path / "run" / "teacher.safetensors").exists()
    trained = kdcache("train", str(path), "--variant", "cached", "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "student (cached): " in trained.stdout and "perplexity" in trained.stdout
    assert (tmp_path / "run" / "student-cached.safetensors").is_file()
    tiny_lm(300, seed=5, layers=2).model.save_pretrained(tmp_path / "hf-teacher", max_shard_size="50KB")
    refused = kdcache("train", str(path), "--variant", "cached", "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "teacher 'hf-gpt2' was cached from" in refused.stderr
    assert re.search(
        r"files changed since: model-00001-of-0000\d\.safetensors \(sha256 \w{12}… when cached", refused.stderr
    )
    assert "Its targets are stale" in refused.stderr


def test_a_directory_teacher_needs_no_checkpoint_and_its_own_weights_are_not_one(hf_teacher_raw, tmp_path):
    from kdcache.errors import CheckpointError
    from kdcache.pipeline.build import load_teacher
    from kdcache.pipeline.teacher import ensure_teacher

    teacher = ensure_teacher(parse_pipeline(hf_teacher_raw), progress=False)
    assert teacher.source["path"] == str(tmp_path / "hf-teacher")
    for weights in (tmp_path / "hf-teacher" / "model-00001-of-00004.safetensors", tmp_path / "hf-teacher"):
        raw = json.loads(json.dumps(hf_teacher_raw))
        raw["teacher"]["checkpoint"] = str(weights)
        with pytest.raises(
            CheckpointError,
            match=r"is in a transformers model directory .* Use the directory as it "
            r"is: remove teacher.checkpoint",
        ):
            load_teacher(parse_pipeline(raw))
    hf_teacher_raw["teacher"]["model"]["args"] = {"pad_token_id": 1, "config": {"model_type": "gpt2", "n_layer": 1}}
    with pytest.raises(
        CheckpointError,
        match=r"no teacher.train: point teacher.checkpoint at a kdcache checkpoint, "
        r"add teacher.train .* or use a transformers directory as it is",
    ):
        ensure_teacher(parse_pipeline(hf_teacher_raw), progress=False)


def test_a_directory_teacher_with_another_tokenizer_is_refused_unless_allowed(hf_teacher_raw, tmp_path, lm_corpus):
    from kdcache.errors import TokenAlignmentError
    from kdcache.pipeline.distill import run_precompute

    directory = tmp_path / "hf-teacher"
    train_bpe(write_corpus(tmp_path / "other", seed=3), directory / "tokenizer.json")  # the same width, other merges
    with pytest.raises(TokenAlignmentError, match=r"teacher 'hf-gpt2' ships another tokenizer than the data's"):
        run_precompute(parse_pipeline(hf_teacher_raw), progress=False)
    hf_teacher_raw["cache"]["allow_tokenizer_mismatch"] = True
    assert run_precompute(parse_pipeline(hf_teacher_raw), progress=False).complete
