"""Batched view numbers: the Philox words of a whole batch, and every op's numbers drawn from them, are bit for bit the
per-(sample, view) definition (one ``KeyedRandom`` stream per view, ``op.draw`` after ``op.draw``) that stage one
stored in ``views/params`` and that existing stores are checked against."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from kdcache.datasets import Subset
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset
from kdcache.train.epochs import EpochIndex
from kdcache.train.seeded import keyed_integers
from kdcache.views import KeyedRandom, ViewTransform
from kdcache.views.rng import keyed_words, uniforms_of
from kdcache.views.transform import EVAL_VIEW
from tests.views.test_views import ALL_OPS, transform

FIXED_DRAWS = [op for op in ALL_OPS if op[0] != "random_resized_crop"]  # ops that draw a fixed number of uniforms
VIEWS = 4


def one_by_one(views: ViewTransform, samples: np.ndarray, view_ids: np.ndarray, sizes: list) -> np.ndarray:
    """The per-view definition of ``views/params``: a keyed stream per (sample, view), each op drawing from it."""
    out = np.empty((len(samples), len(views.param_names)), dtype=np.float32)
    for row, (i, v, size) in enumerate(zip(samples.tolist(), view_ids.tolist(), sizes, strict=True)):
        if v == EVAL_VIEW:
            out[row] = [x for op in views.augment for x in op.identity(size)]
        else:
            rng = KeyedRandom(views.seed, sample=i, view=v)
            out[row] = [x for op in views.augment for x in op.draw(rng, size)]
    return out


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("seed", [0, 3, 2**64 + 5, 2**128 - 1])
@pytest.mark.parametrize("stream", [0, 1])
def test_keyed_words_are_numpys_philox_stream_of_every_pair(seed, stream):
    rng = np.random.default_rng(seed % 2**32)
    samples = rng.integers(0, 2**63, 64, dtype=np.int64).astype(np.uint64)
    view_ids = rng.integers(0, 2**63, 64, dtype=np.int64).astype(np.uint64)
    samples[:3], view_ids[:3] = [0, 2**64 - 1, 7], [2**64 - 1, 0, 3]  # the ends of both counter words
    for count in (0, 1, 5, 9):
        words = keyed_words(seed, samples, view_ids, count, stream=stream)
        assert words.shape == (64, count) and words.dtype == np.uint64
        for row in range(64):
            counter = np.array([0, stream, view_ids[row], samples[row]], dtype=np.uint64)
            expected = np.random.Philox(key=seed, counter=counter).random_raw(count) if count else []
            np.testing.assert_array_equal(words[row], expected)
    draws = KeyedRandom(seed, sample=7, view=3, stream=stream)
    assert uniforms_of(keyed_words(seed, [7], [3], 3, stream=stream))[0].tolist() == [draws.uniform() for _ in range(3)]


@pytest.mark.parametrize("ops", [FIXED_DRAWS, ALL_OPS], ids=["fixed draws (batched)", "with a retry loop"])
def test_batched_params_equal_the_view_by_view_definition(ops):
    views = transform(count=8, seed=11, ops=ops)
    rng = np.random.default_rng(0)
    samples, view_ids = rng.integers(0, 10**6, 500), rng.integers(0, 8, 500)
    one_size = views.params(samples, view_ids, (12, 9))
    np.testing.assert_array_equal(bits(one_size), bits(one_by_one(views, samples, view_ids, [(12, 9)] * 500)))
    sizes = [(int(h), int(w)) for h, w in rng.integers(6, 40, (500, 2))]  # images of different sizes
    np.testing.assert_array_equal(
        bits(views.params(samples, view_ids, sizes)), bits(one_by_one(views, samples, view_ids, sizes))
    )
    assert (one_size[view_ids != EVAL_VIEW] != one_size[view_ids == EVAL_VIEW][0]).any(axis=1).mean() > 0.9


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small) -> tuple[str, Subset]:
    """A real store of 4 views of kdcache's fixed-draw ops over 150 digits, cached by an echo teacher."""
    data = Subset(digits_small, np.arange(150), tag="first-150")
    path = str(tmp_path_factory.mktemp("draws") / "train.zarr")
    precompute(
        nn.Flatten(),
        data,
        path,
        targets=[build_target("logits", {"dtype": "float32"})],
        views=transform(count=VIEWS, ops=FIXED_DRAWS),
        teacher_name="echo",
        shard_samples=64,
        progress=False,
    )
    return path, data


def test_a_real_stores_params_are_the_batched_and_the_view_by_view_draws(store):
    path, _data = store
    stored = zarr.open_group(path, mode="r")["views/params"][:]
    views = transform(count=VIEWS, ops=FIXED_DRAWS)
    samples, view_ids = np.repeat(np.arange(150), VIEWS), np.tile(np.arange(VIEWS), 150)
    flat = stored.reshape(-1, stored.shape[-1])
    np.testing.assert_array_equal(bits(flat), bits(views.params(samples, view_ids, (8, 8))))
    np.testing.assert_array_equal(bits(flat), bits(one_by_one(views, samples, view_ids, [(8, 8)] * len(samples))))


@pytest.mark.parametrize("policy", ["cycle", "random"])
def test_a_batchs_view_ids_params_and_inputs_are_those_of_each_sample_read_alone(store, policy):
    path, data = store
    views = transform(count=VIEWS, ops=FIXED_DRAWS)
    train = CachedDataset(data, open_store(path), teacher="echo", targets=["logits"], views=views, policy=policy)
    indices = np.random.default_rng(1).permutation(150)[:60]
    for epoch in (0, 3):
        batch = train.batch_of(indices, epoch=epoch)  # every check passes: params, digests, values
        items = [train[EpochIndex(int(i), epoch)] for i in indices]
        definition = [
            (i + epoch) % VIEWS if policy == "cycle" else np.random.default_rng([views.seed, epoch, i]).integers(VIEWS)
            for i in indices.tolist()
        ]
        assert batch.views.tolist() == [int(item["view"]) for item in items] == [int(v) for v in definition]
        np.testing.assert_array_equal(bits(batch.params.numpy()), bits(torch.stack([x["params"] for x in items])))
        torch.testing.assert_close(batch.inputs, torch.stack([x["inputs"] for x in items]), rtol=0, atol=0)
        echo = batch.stored["logits"]["logits"].numpy()
        np.testing.assert_array_equal(bits(batch.inputs.flatten(1).numpy()), bits(echo))  # the teacher's inputs


@pytest.mark.parametrize("seed", [0, 3, 2**32 + 9, 2**127 + 12345])
def test_random_policy_view_ids_are_numpys_keyed_generators_for_every_sample(seed):
    rng = np.random.default_rng(seed % 2**32)
    for epoch in (0, 5, 2**32 + 1):  # an epoch numpy splits into two words is drawn by numpy itself
        for count in (2, 3, 8, 100, 2**31 + 11):  # large counts: rows Lemire would redraw go to numpy too
            samples = rng.integers(0, 2**33, 50)
            samples[:2] = [0, 2**32 - 1]
            expected = [np.random.default_rng([seed, epoch, int(i)]).integers(count) for i in samples]
            found = keyed_integers(seed, epoch, samples, count)
            assert found.dtype == np.int64 and found.tolist() == [int(x) for x in expected]
