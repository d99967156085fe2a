"""digits-seg (deterministic canvases, exact labels, disjoint digit splits) and the VOC adapter on a generated
VOC-layout fixture (JPEG images and palette / grayscale PNG masks written by the test)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from kdcache.datasets import DigitsSegmentation, VOCSegmentation, build_dataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.errors import ConfigError
from tests.conftest import DIGITS


@pytest.fixture(scope="module")
def canvases() -> DigitsSegmentation:
    return DigitsSegmentation("train", train_samples=64)


def test_labels_are_exact_functions_of_the_rendered_pixels(canvases):
    images, labels = canvases.get_batch(np.arange(len(canvases)))
    ink, labels = images[:, 0], labels
    assert images.shape == (64, 1, 64, 64) and labels.dtype == torch.int64
    assert torch.equal(labels == 0, ink < 0.25)  # background below void
    assert torch.equal(labels == 255, (ink >= 0.25) & (ink < 0.5))  # the soft edge is ignored
    assert torch.equal((labels >= 1) & (labels <= 10), ink >= 0.5)  # digit classes 1..10 at full ink
    per_canvas = [set(torch.unique(lab).tolist()) - {0, 255} for lab in labels]
    assert all(1 <= len(c) <= 4 for c in per_canvas)  # 1 to 4 digits (a repeated digit shares its class)
    assert set().union(*per_canvas) == set(range(1, 11))


def test_canvases_are_deterministic_and_independent_of_the_set_size(canvases):
    again = build_dataset("digits-seg", "train", {"train_samples": 16})
    x, y = again.get_batch(np.arange(16))
    x0, y0 = canvases.get_batch(np.arange(16))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    other = DigitsSegmentation("train", train_samples=16, seed=1)
    assert not torch.equal(other.get_batch(np.arange(16))[0], x)
    a, b = dataset_fingerprint(again, num_classes=11), dataset_fingerprint(canvases, num_classes=11)
    assert a["digest"] != b["digest"]  # the size is part of the identity


def test_train_and_test_canvases_use_their_own_digits(tmp_path):
    blank_train = tmp_path / "digits.h5"
    shutil.copy(DIGITS, blank_train)
    with h5py.File(blank_train, "r+") as f:
        f["train/images"][...] = 0  # no ink in any train digit
    test_before = DigitsSegmentation("test", test_samples=8)
    test_after = DigitsSegmentation("test", path=blank_train, test_samples=8)
    assert torch.equal(test_before.get_batch(np.arange(8))[0], test_after.get_batch(np.arange(8))[0])
    train_after = DigitsSegmentation("train", path=blank_train, train_samples=8)
    assert float(train_after.get_batch(np.arange(8))[0].abs().sum()) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"scale": (4, 12)}, "8 <= low <= high <= size"),
        ({"void": 0.6}, "void <= threshold"),
        ({"ignore_index": 5}, "11..255"),
    ],
    ids=["scale", "void", "ignore-index"],
)
def test_bad_digits_seg_parameters_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        DigitsSegmentation("train", train_samples=2, **args)


# ---------------------------------------------------------------------------------------------- VOC
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]  # classes 0..2 and 255 (void)


def write_voc(root, images: dict[str, tuple[np.ndarray, np.ndarray]], lists: dict[str, list[str]], aug=()) -> None:
    """A VOC 2012 tree: JPEGs, palette masks (SBD-style grayscale masks for ids in ``aug``) and split lists."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (pixels, mask) in images.items():
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        if image_id in aug:
            Image.fromarray(mask, mode="L").save(base / "SegmentationClassAug" / f"{image_id}.png")
        else:
            png = Image.fromarray(mask, mode="P")
            png.putpalette(PALETTE)
            png.save(base / "SegmentationClass" / f"{image_id}.png")
    for split, ids in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture
def voc_root(tmp_path):
    rng = np.random.default_rng(0)
    wide_mask = np.zeros((24, 32), dtype=np.uint8)
    wide_mask[4:12, 6:20] = 1
    wide_mask[3, 5:21] = 255  # void outline
    tall_mask = np.full((40, 20), 2, dtype=np.uint8)
    tall_mask[:, :10] = 0
    images = {
        "2007_000001": (rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), wide_mask),
        "2007_000002": (np.full((40, 20, 3), 200, dtype=np.uint8), tall_mask),
        "2008_000003": (np.full((16, 16, 3), 50, dtype=np.uint8), np.ones((16, 16), dtype=np.uint8)),
    }
    lists = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000002"], "train_aug": list(images)}
    write_voc(tmp_path, images, lists, aug=["2008_000003"])
    return tmp_path, images


def test_voc_images_and_masks_are_resized_and_padded_to_a_square(voc_root):
    root, images = voc_root
    train = build_dataset("voc", "train", {"root": str(root), "size": 32})
    x, y = train.get_batch(np.array([0, 1]))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and y.dtype == torch.int64
    _wide_pixels, wide_mask = images["2007_000001"]
    assert torch.equal(y[0, :24], torch.from_numpy(wide_mask).long())  # longer side already 32: mask as written
    assert bool((y[0, 24:] == 255).all())  # padding is ignored
    decoded = np.array(Image.open(root / "VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg").convert("RGB"))
    assert torch.allclose(x[0, :, :24], torch.from_numpy(decoded).permute(2, 0, 1).float() / 255)
    assert float(x[0, :, 24:].abs().sum()) == 0.0
    # the 40x20 image becomes 32x16 (nearest for the mask), padded on the right
    assert bool((y[1, :, :8] == 0).all()) and bool((y[1, :, 8:16] == 2).all()) and bool((y[1, :, 16:] == 255).all())
    assert np.array_equal(train.all_labels(), y.numpy())


def test_voc_sbd_augmented_list_takes_masks_from_the_aug_folder(voc_root):
    root, _ = voc_root
    with pytest.raises(ConfigError, match=r"no mask for VOC image '2008_000003'.*mask_dirs"):
        VOCSegmentation("train_aug", root=root, size=16)
    aug = VOCSegmentation("train_aug", root=root, size=16, mask_dirs=("SegmentationClass", "SegmentationClassAug"))
    assert len(aug) == 3
    assert bool((aug.get_batch(np.array([2]))[1] == 1).all())  # the grayscale SBD-style mask, read as indices
    assert aug.describe()["mask_dirs"] == ["SegmentationClass", "SegmentationClassAug"]


def test_voc_layout_errors_name_the_missing_path_and_the_fix(voc_root, tmp_path):
    root, _ = voc_root
    with pytest.raises(ConfigError, match=r"ImageSets/Segmentation/test\.txt' does not exist.*layout"):
        VOCSegmentation("test", root=root)
    (root / "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg").unlink()
    val = VOCSegmentation("val", root=root, size=16)
    with pytest.raises(ConfigError, match=r"2007_000002\.jpg' listed in split 'val' does not exist"):
        val.get_batch(np.array([0]))
