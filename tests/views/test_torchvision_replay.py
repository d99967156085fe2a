"""The open world end to end: an ImageFolder of PNGs of varying sizes, a torchvision v2 pipeline (RandomResizedCrop,
RandAugment) with CutMix, a torchvision ResNet teacher. Stage two's inputs are, bit for bit, what stage one fed the
teacher (an echo teacher records them), and its cached targets are the live teacher's on those inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from kdcache.errors import ConfigError
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import BlockShuffleSampler, CachedDataset, LiveTeacher, batch_loader, set_loader_epoch
from kdcache.views import Mix, ViewTransform
from tests.helpers import write_image_folder

VIEWS, SIZE = 3, 32


def views() -> ViewTransform:
    return ViewTransform(
        count=VIEWS,
        seed=11,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        pipeline=v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandAugment()]),
        eval=v2.Compose([v2.Resize(SIZE + 4, antialias=True), v2.CenterCrop(SIZE)]),
        mix=Mix("cutmix", alpha=1.0, p=0.5),
    )


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> torchvision.datasets.ImageFolder:
    return torchvision.datasets.ImageFolder(write_image_folder(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="module")
def stores(tmp_path_factory, folder) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stores")
    made = {}
    for name, teacher, dtype in (("echo", nn.Flatten(), "float32"), ("resnet18", resnet(), "float16")):
        made[name] = str(root / f"{name}.zarr")
        precompute(
            teacher,
            folder,
            made[name],
            targets=[build_target("logits", {"dtype": dtype})],
            views=views(),
            teacher_name=name,
            shard_samples=10,
            batch_size=7,
            progress=False,
        )
    return made


def as_bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().numpy().view(np.uint32)


@pytest.mark.parametrize("workers", [0, 2])
def test_student_inputs_are_the_cached_teacher_inputs_bitwise(stores, folder, workers):
    train = CachedDataset(folder, open_store(stores["echo"]), views=views(), policy="random")
    loader = batch_loader(train, batch_size=8, seed=1, num_workers=workers)
    seen_views, mixed = set(), 0
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            batch = batch.to("cpu")
            assert batch.inputs.shape[1:] == (3, SIZE, SIZE)
            np.testing.assert_array_equal(as_bits(batch.inputs.flatten(1)), as_bits(batch.targets["logits"]))
            seen_views |= set(batch.views.tolist())
            mixed += int((batch.mix[1] < 1).sum())
    assert seen_views == set(range(VIEWS)) and mixed > 0  # every view, and CutMix did mix some


def test_cached_targets_are_the_live_teachers_on_the_same_inputs(stores, folder):
    train = CachedDataset(folder, open_store(stores["resnet18"]), teacher="resnet18", views=views())
    live = LiveTeacher(resnet(), [build_target("logits", {"dtype": "float16"})], "cpu")
    for epoch in range(VIEWS):  # the cycle policy visits every cached view
        train.set_epoch(epoch)
        batch = train[np.arange(len(folder))].to("cpu")
        expected = live(batch)["logits"]
        # another batch composition changes float32 sums in the last bits: equal up to one float16 rounding step
        torch.testing.assert_close(batch.targets["logits"], expected, rtol=2**-10, atol=1e-5)


def test_a_pipeline_store_asks_for_its_views(stores, folder):
    with pytest.raises(ConfigError, match=r"made by a torchvision pipeline .* pass views= the ViewTransform"):
        CachedDataset(folder, open_store(stores["echo"]))


def test_a_plain_dataloader_loop_gets_the_same_pairs(stores, folder):
    train = CachedDataset(folder, open_store(stores["echo"]), views=views(), policy="random")
    sampler = BlockShuffleSampler(train, seed=3)
    sampler.set_epoch(2)
    for items in DataLoader(train, batch_size=5, sampler=sampler, num_workers=2):
        batch = train.as_batch(items).to("cpu")
        np.testing.assert_array_equal(as_bits(batch.inputs.flatten(1)), as_bits(batch.targets["logits"]))
        reference = train[batch.indices.numpy()].to("cpu")  # the batch path, same samples and epoch
        for got, want in zip(batch.mix, reference.mix, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert batch.views.tolist() == reference.views.tolist()


def test_pipelines_that_cannot_replay_or_give_varying_sizes_are_refused(tmp_path, folder):
    unseeded = np.random.default_rng()

    def noisy(image: torch.Tensor) -> torch.Tensor:
        return image + torch.from_numpy(unseeded.integers(0, 2, size=image.shape)).to(image.dtype)

    cases = {
        "not replayable": ViewTransform(
            count=2, seed=0, pipeline=v2.Compose([v2.Resize((SIZE, SIZE)), noisy]), eval=v2.Resize((SIZE, SIZE))
        ),
        "different sizes": ViewTransform(count=2, seed=0, pipeline=v2.RandomCrop(16), eval=None),
    }
    for expected, bad in cases.items():
        path = tmp_path / f"{expected.replace(' ', '_')}.zarr"
        with pytest.raises(ConfigError, match=expected if expected != "not replayable" else "is not replayable"):
            precompute(nn.Flatten(), folder, path, targets=[build_target("logits", {})], views=bad, progress=False)
        assert not path.exists() or not any(path.rglob("c/*"))  # nothing cached
