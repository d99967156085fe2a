"""Stage one over text: an interrupted run resumes byte-identical (top-k and sampled targets), and a real 2-worker
dask LocalCluster writes the same bytes as one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from kdcache import CachedTokenDataset, batch_loader, open_store
from kdcache.errors import StaleTeacherError, TargetMismatchError, TokenAlignmentError
from kdcache.losses import token_kd_divergence
from kdcache.models import CausalLM
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.precompute import precompute
from kdcache.store import read_manifest
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target
from kdcache.train import require_fresh_teacher
from kdcache.views import TokenViews
from tests.helpers import Interrupting, all_files, store_files
from tests.lmkit import SEQ_LEN, lm_pipeline_dict, save_teacher_dir, tiny_lm, train_bpe, train_wordlevel, write_corpus

TARGETS = [{"k": 8, "temperatures": [1.0, 2.0]}, {"encoding": "sampled", "samples": 12, "seed": 3}]


def run(teacher, dataset, path):
    return precompute(
        teacher,
        dataset,
        str(path),
        targets=[build_target("token_logits", t) for t in TARGETS],
        views=TokenViews(),
        num_classes=300,
        teacher_name="lm",
        shard_samples=64,
        batch_size=16,
        progress=False,
    )


@pytest.mark.parametrize(("stop_at", "committed"), [(80, 1), (128, 2)], ids=["mid-shard-1", "in-shard-2"])
def test_interrupted_stage_one_resumes_byte_identical(tmp_path, lm_teacher, lm_train, stop_at, committed):
    assert len(lm_train) == 129  # three shards of 64: the last one holds a single sequence
    run(lm_teacher, lm_train, tmp_path / "reference.zarr")
    resumed = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        run(lm_teacher, Interrupting(lm_train, stop_at), resumed)
    partial = read_manifest(StoreLocation(resumed))
    assert [c.index for c in partial.teachers["lm"].shards] == list(range(committed))
    report = run(lm_teacher, lm_train, resumed)
    assert (report.shards_skipped, report.shards_written, report.complete) == (committed, 3 - committed, True)
    files = store_files(resumed)
    assert "teachers/lm/token_logits_sampled/ids/c/2/0/0/0" in files
    assert files == store_files(tmp_path / "reference.zarr")
    assert read_manifest(StoreLocation(resumed)) == read_manifest(StoreLocation(tmp_path / "reference.zarr"))


@pytest.mark.distributed
def test_two_dask_workers_write_the_same_bytes_as_one_process(tmp_path, lm_corpus, lm_tokenizer):
    raw = lm_pipeline_dict(tmp_path, lm_corpus, lm_tokenizer)
    raw["teacher"]["checkpoint"] = str(tmp_path / "teacher.safetensors")
    single = run_precompute(
        parse_pipeline({**raw, "cache": {**raw["cache"], "store": str(tmp_path / "one.zarr")}}), progress=False
    )
    dask = run_precompute(
        parse_pipeline({**raw, "cache": {**raw["cache"], "store": str(tmp_path / "two.zarr")}}),
        progress=False,
        workers=2,
    )
    assert (dask.shards_written, dask.complete, dask.accuracy) == (single.shards_written, True, single.accuracy)
    assert single.shards_written == 2
    assert all_files(tmp_path / "two.zarr") == all_files(tmp_path / "one.zarr")


def topk_store(teacher, dataset, path, **options):
    return precompute(
        teacher,
        dataset,
        str(path),
        targets=[build_target("token_logits", {"k": 8})],
        views=TokenViews(),
        shard_samples=64,
        batch_size=32,
        progress=False,
        **options,
    )


def test_a_raw_transformers_model_is_a_teacher_as_it_is(tmp_path, lm_teacher, lm_train, lm_tokenizer):
    """AutoModelForCausalLM.from_pretrained(dir) itself, no adapter: its output's .logits are cached, the same
    numbers as the kdcache adapter's over the same directory; the tokenizer its directory ships (re-saved by
    transformers, the same ids) is the data's, so it is accepted; the decoded target knows the vocabulary."""
    from transformers import AutoModelForCausalLM

    directory = save_teacher_dir(lm_teacher, tmp_path / "teacher", lm_tokenizer)
    (directory / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")  # unused
    raw = AutoModelForCausalLM.from_pretrained(directory)
    assert type(raw).__name__ == "GPT2LMHeadModel"
    topk_store(raw, lm_train, tmp_path / "raw.zarr")
    topk_store(CausalLM(300, path=str(directory)), lm_train, tmp_path / "adapter.zarr")
    group = {name: zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r") for name in ("raw", "adapter")}
    for array in ("values", "indices", "lse"):
        path = f"teachers/teacher/token_logits_topk/{array}"
        assert np.array_equal(group["raw"][path][:], group["adapter"][path][:])
    record = read_manifest(StoreLocation(tmp_path / "raw.zarr")).teachers["teacher"].fingerprint
    assert record["spec"] == {"class": "GPT2LMHeadModel"} and record["source"]["path"] == str(directory)
    assert record["source"]["tokenizer"] == lm_train.describe()["tokenizer"] and "files" not in record["source"]
    assert record["source"]["chat_template_sha256"] is not None  # recorded apart: plain text uses no template
    data = CachedTokenDataset(
        lm_train, open_store(str(tmp_path / "raw.zarr")), teacher="teacher", targets=["token_logits_topk"]
    )
    batch = next(iter(batch_loader(data, batch_size=8, seed=0))).to("cpu")
    target = batch.targets["token_logits_topk"]
    assert target.vocab_size == 300
    with pytest.raises(TargetMismatchError, match="vocabulary of 300 tokens, but the student's logits are 320"):
        token_kd_divergence(torch.randn(8, SEQ_LEN, 320), batch.labels, target)
    assert token_kd_divergence(lm_teacher(batch.inputs), batch.labels, target).item() < 0.01  # the teacher itself


def test_a_directory_changed_in_place_makes_its_store_stale(tmp_path, lm_teacher, lm_train, lm_tokenizer):
    directory = save_teacher_dir(lm_teacher, tmp_path / "teacher", lm_tokenizer)
    topk_store(CausalLM(300, path=str(directory), pad_token_id=1), lm_train, tmp_path / "train.zarr")
    cache = open_store(str(tmp_path / "train.zarr"))
    files = cache.teacher("teacher").fingerprint["source"]["files"]
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(files) and len(files) >= 7
    require_fresh_teacher(cache, "teacher", directory)  # as cached
    tiny_lm(300, seed=5, layers=2).model.save_pretrained(directory, max_shard_size="50KB")  # retrained in place
    with pytest.raises(StaleTeacherError, match=r"whose files changed since: model-00001-of-0000\d.safetensors"):
        CachedTokenDataset(lm_train, cache, teacher="teacher", targets=["token_logits_topk"], teacher_dir=directory)


@pytest.mark.parametrize("width", [300, 2048], ids=["same-width", "other-width"])
def test_a_teacher_shipping_another_tokenizer_is_refused(tmp_path, lm_train, width, caplog):
    """A teacher whose directory holds another tokenizer than the data's would cache targets for other tokens,
    silently: refused before it runs, naming both tokenizers; allow_tokenizer_mismatch caches anyway, logged."""
    other = write_corpus(tmp_path / "other", documents=4, seed=7)
    if width == 300:
        tokenizer = train_bpe(other, tmp_path / "bpe" / "tokenizer.json", vocab_size=300)
    else:
        tokenizer = train_wordlevel(other, tmp_path / "words.json")
    directory = save_teacher_dir(tiny_lm(width), tmp_path / "teacher", tokenizer)
    teacher = CausalLM(width, path=str(directory))
    with pytest.raises(
        TokenAlignmentError,
        match=r"teacher 'teacher' ships another tokenizer than the data's "
        r"\(they differ in (vocab_size, )?vocab_sha256.*\): the teacher's, in '.*teacher'",
    ):
        topk_store(teacher, lm_train, tmp_path / "refused.zarr")
    assert not (tmp_path / "refused.zarr").exists()
    report = topk_store(teacher, lm_train, tmp_path / "allowed.zarr", allow_tokenizer_mismatch=True)
    assert report.complete and "caching anyway because allow_tokenizer_mismatch is set" in caplog.text


def test_a_teacher_narrower_than_the_token_ids_is_refused(tmp_path, lm_train):
    """A 200-token teacher over text of a 300-token tokenizer: a typed error before it runs, not an IndexError."""
    with pytest.raises(
        TokenAlignmentError,
        match=r"takes 200 token ids \(its input embedding\), but the data's "
        r"tokenizer produces 300",
    ):
        topk_store(tiny_lm(200).model, lm_train, tmp_path / "narrow.zarr")
