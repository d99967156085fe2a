"""The shipped chat_lm pipeline on a CI-sized subset: chat data rendered with the shipped tokenizer's template, the
shipped teacher directory (``save_pretrained``, sharded, with its tokenizer) used as it is and cached once, every
student variant trained and evaluated on the held-out conversations' assistant tokens."""

from __future__ import annotations

import hashlib

import pytest

from kdcache.errors import CheckpointError
from kdcache.models.hfdir import file_sha256, fingerprinted_files
from kdcache.pipeline import load_pipeline, run_pipeline
from kdcache.store import open_store
from tests.conftest import ROOT

PIPELINE = ROOT / "pipelines" / "chat_lm.yaml"
TEACHER_DIR = ROOT / "data" / "chat" / "teacher"


def test_chat_lm_runs_on_a_subset_from_the_teacher_directory(tmp_path):
    sets = [
        "data.max_train_samples=32",
        "data.max_test_samples=16",
        "student.train.stages.0.epochs=1",
        "compare.3.stages.0.epochs=1",
        f"output_dir={tmp_path}",
    ]
    summary = run_pipeline(load_pipeline(PIPELINE, sets), progress=False)
    assert set(summary["students"]) == {"scratch", "online", "cached-topk", "cached-sampled"}
    assert summary["store"]["tokens_per_sample"] == 192
    assert summary["teacher"]["test"]["perplexity"] < 400  # trained: far below the 1,024 of a uniform guess
    for result in summary["students"].values():
        assert result["test"]["perplexity"] < 1024  # over assistant tokens only: the test labels hold no others
    assert not (tmp_path / "teacher.safetensors").exists()  # the directory is the teacher: nothing trained or saved
    stores = [p for p in tmp_path.rglob("*.zarr") if (p / "zarr.json").is_file()]
    cache = open_store(str(stores[0]))
    source = cache.manifest.dataset["source"]
    assert source["kind"] == "chat" and source["packing"]["train_on"] == "assistant"
    template = (ROOT / "data" / "chat" / "tokenizer" / "chat_template.jinja").read_bytes()
    assert source["packing"]["chat_template_sha256"] == hashlib.sha256(template).hexdigest()
    teacher = cache.teacher("gpt2-4x128-chat").fingerprint["source"]
    shards = sorted(p.name for p in TEACHER_DIR.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and set(shards) | {"model.safetensors.index.json", "config.json"} <= set(teacher["files"])
    assert teacher["files"] == {p.name: file_sha256(p) for p in fingerprinted_files(TEACHER_DIR)}  # as on disk now
    assert teacher["tokenizer"] == source["tokenizer"]  # the directory ships the data's tokenizer


def test_a_missing_teacher_directory_names_the_script_that_writes_it(tmp_path):
    cfg = load_pipeline(PIPELINE, [f"teacher.model.args.path={tmp_path / 'teacher'}", f"output_dir={tmp_path}"])
    with pytest.raises(
        CheckpointError,
        match=r"'gpt2-4x128-chat' is the transformers directory .*teacher'.*does not "
        r"exist: run `python data/make_chat_teacher.py` to write it",
    ):
        run_pipeline(cfg, progress=False)
    assert not any(tmp_path.iterdir())  # refused before any data is rendered or store written
