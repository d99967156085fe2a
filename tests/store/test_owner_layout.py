"""The store layer's one spelling of owners, shard ranges and byte sizes, and what the typed fixes changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdcache import ViewTransform, build_target, precompute
from kdcache.datasets import TensorDataset
from kdcache.errors import ConfigError, StoreFormatError, UnsafeNameError
from kdcache.store import (
    SAMPLES_OWNER,
    ArraySpec,
    Owner,
    layouts_shard_samples,
    open_store,
    row_nbytes,
    shard_count,
    shard_range,
    shard_ranges,
    teacher_path,
)
from kdcache.store.layout import MANIFEST_KEY
from kdcache.store.manifest import ArrayRecord
from kdcache.store.writer import TargetLayout
from kdcache.targets.logits import LogitsParams
from kdcache.targets.tokens import TokenLogitsParams


def test_owners_are_the_strings_the_manifest_records() -> None:
    assert Owner.samples() == SAMPLES_OWNER == "samples"
    assert Owner.teacher("cnn16") == "teachers/cnn16"
    assert Owner.teacher("cnn16").path == "teachers/cnn16"
    assert Owner.teacher("cnn16").teacher_name == "cnn16"
    assert Owner.samples().teacher_name is None
    assert Owner.listed("cnn16") == Owner.teacher("cnn16")
    assert teacher_path("cnn16", "logits") == "teachers/cnn16/logits"
    assert json.dumps({Owner.teacher("a"): 1}) == '{"teachers/a": 1}'  # keys and values serialise as before


def test_a_teacher_owner_refuses_a_name_that_would_leave_its_folder() -> None:
    with pytest.raises(UnsafeNameError, match=r"\.\."):
        Owner.teacher("../x")


@pytest.mark.parametrize(("num_samples", "shard_samples"), [(0, 64), (64, 64), (65, 64), (620, 640), (1000, 128)])
def test_shard_ranges_are_shard_range_of_every_shard(num_samples: int, shard_samples: int) -> None:
    count = shard_count(num_samples, shard_samples)
    ranges = shard_ranges(num_samples, shard_samples)
    assert count == len(ranges) == (num_samples + shard_samples - 1) // shard_samples
    assert ranges == [shard_range(i, num_samples, shard_samples) for i in range(count)]
    assert sum(stop - start for start, stop in ranges) == num_samples
    if ranges:
        assert ranges[-1][1] == num_samples


def test_row_nbytes_is_every_size_of_an_array_spec() -> None:
    assert row_nbytes((), "int64") == 8
    assert row_nbytes((10, 3), "float16") == 60
    spec = ArraySpec("teachers/t/logits", (10, 3), "float16", views=4)
    assert spec.bytes_per_sample == 4 * 60


def test_layouts_shard_samples_sizes_shards_by_the_widest_target_array() -> None:
    wide = ArraySpec("teachers/t/logits", (2000,), "float16")  # 4,000 bytes per sample
    narrow = ArraySpec("teachers/t/lse", (1,), "float32")
    layout = TargetLayout("logits", {}, {"logits": wide, "lse": narrow}, (2000,))
    assert layouts_shard_samples([layout], 100_000) == 8192
    assert layouts_shard_samples([layout], 5000) == 5120


def test_params_built_around_the_validator_name_the_missing_field() -> None:
    topk = LogitsParams.model_construct(encoding="topk", k=None)
    with pytest.raises(ConfigError, match="encoding topk needs k"):
        _ = topk.top_k
    sampled = TokenLogitsParams.model_construct(encoding="sampled", samples=None)
    with pytest.raises(ConfigError, match="encoding sampled needs samples"):
        _ = sampled.draws
    assert LogitsParams(encoding="topk", k=3).top_k == 3
    assert TokenLogitsParams(encoding="sampled", samples=8).draws == 8


def test_a_store_read_by_owner_and_by_its_plain_string_holds_the_same_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((70, 1, 2, 2))).float()
    data = TensorDataset(images, torch.arange(70) % 3, split="train", source={"kind": "x"})
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    precompute(
        teacher,
        data,
        str(tmp_path / "s"),
        targets=[build_target("logits", {})],
        views=ViewTransform(count=1, seed=0),
        num_classes=3,
        teacher_name="lin",
        shard_samples=64,
        progress=False,
    )
    store = open_store(str(tmp_path / "s"))
    assert (tmp_path / "s" / MANIFEST_KEY).is_file()
    record = store.manifest.teachers["lin"].targets["logits"].arrays["logits"]
    by_owner = store.array_reader(record, Owner.teacher("lin"), in_memory=True).read_all()
    by_string = store.array_reader(record, "teachers/lin", in_memory=True).read_all()  # a caller's plain string
    np.testing.assert_array_equal(by_owner, by_string)
    assert by_owner.shape == (70, 1, 3)  # (samples, views, classes)
    with torch.no_grad():
        live = teacher(images).numpy()
    np.testing.assert_allclose(by_owner[:, 0].astype(np.float32), live, rtol=1e-3, atol=1e-3)  # fp16 storage
    assert sorted(store.owner_arrays()) == ["samples", "teachers/lin"]
    assert [c.owner for c in store.commits_of(Owner.teacher("lin"))] == ["teachers/lin", "teachers/lin"]


def test_a_record_names_only_a_compressor_kdcache_writes():
    record = ArrayRecord(
        path="teachers/t8/logits",
        shape=[4, 1, 10],
        dtype="float16",
        chunks=[4, 1, 10],
        shards=[4, 1, 10],
        compressor="zstd",
    )
    assert record.checked_compressor() == "zstd"
    damaged = record.model_copy(update={"compressor": "brotli"})
    with pytest.raises(
        StoreFormatError,
        match=r"records compressor 'brotli', which kdcache never writes \(it writes "
        r"none, lz4, zstd\)",
    ):
        damaged.checked_compressor()
