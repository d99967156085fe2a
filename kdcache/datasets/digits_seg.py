"""``digits-seg``: a segmentation set of real handwritten digits composed onto canvases, with exact pixel labels.

Each canvas (``size`` × ``size``, one channel, black background) holds 1 to ``max_digits`` UCI digits from
the shipped digits (``kdcache/datasets/digits.h5``), each bilinearly scaled from 8×8 to a random side in ``scale`` and placed at a random position
where its box overlaps no other digit's. Classes: 0 is background, ``1 + d`` is digit ``d`` (11 classes). A pixel's
label follows from the rendered intensity of the digit covering it: at least ``threshold`` is the digit's class,
below ``void`` is background, and the soft edge in between is ``ignore_index`` (like the "void" outlines of PASCAL
VOC), so labels are exact functions of the pixels and no blurred edge is forced into either class.

Canvas ``i`` of a split is drawn from a generator keyed by ``(seed, split, i)``: the set is deterministic, and its
first ``n`` canvases do not depend on the number of canvases asked for. Train canvases use only train digits and
test canvases only test digits, so no handwritten digit is seen in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.hdf5 import DIGITS_FILE, HDF5Dataset
from kdcache.errors import ConfigError

SPLIT_KEYS = {"train": 0, "test": 1}
PLACEMENT_TRIES = 20


class DigitsSegmentation(SampleDataset):
    """``train_samples`` (or ``test_samples``) canvases of the digits in ``split`` of ``path``, generated in memory.

    >>> data = DigitsSegmentation("train", train_samples=4)  # doctest: +SKIP
    >>> data.get_batch(np.arange(2))[1].shape  # labels: (2, 64, 64) int64 in {0..10, 255}
    """

    def __init__(
        self,
        split: str,
        *,
        path: str | Path = DIGITS_FILE,
        train_samples: int = 2048,
        test_samples: int = 512,
        size: int = 64,
        max_digits: int = 4,
        scale: tuple[int, int] = (12, 24),
        threshold: float = 0.5,
        void: float = 0.25,
        ignore_index: int = 255,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_KEYS:
            raise ConfigError(f"digits-seg has splits {sorted(SPLIT_KEYS)}, not {split!r}")
        low, high = scale
        if not 8 <= low <= high <= size:
            raise ConfigError(f"digits-seg scale must satisfy 8 <= low <= high <= size ({size}); got {scale}")
        if not 0 < void <= threshold <= 1:
            raise ConfigError(f"digits-seg needs 0 < void <= threshold <= 1; got void={void}, threshold={threshold}")
        if not 0 <= ignore_index <= 255 or ignore_index <= 10:
            raise ConfigError(f"digits-seg ignore_index must be in 11..255 (labels are uint8); got {ignore_index}")
        digits = HDF5Dataset(path, split)
        self.split = split
        self._digits, self._digit_labels = digits.get_batch(np.arange(len(digits)))
        count = train_samples if split == "train" else test_samples
        self.params: dict[str, Any] = {
            "samples": count,
            "size": size,
            "max_digits": max_digits,
            "scale": [low, high],
            "threshold": threshold,
            "void": void,
            "ignore_index": ignore_index,
            "seed": seed,
        }
        self._source = {"kind": "digits-seg", "file": Path(path).name, **self.params}
        images, labels = zip(*(self._canvas(i) for i in range(count)), strict=True)
        self._images = torch.from_numpy(np.stack(images))[:, None]
        self._labels = np.stack(labels)

    def _canvas(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        size, (low, high) = p["size"], p["scale"]
        rng = np.random.default_rng([p["seed"], SPLIT_KEYS[self.split], index])
        image = np.zeros((size, size), dtype=np.float32)
        label = np.zeros((size, size), dtype=np.uint8)
        boxes: list[tuple[int, int, int]] = []
        for _ in range(int(rng.integers(1, p["max_digits"] + 1))):
            digit = int(rng.integers(len(self._digit_labels)))
            side = int(rng.integers(low, high + 1))
            spot = _free_spot(rng, boxes, side, size)
            if spot is None:
                continue  # the canvas is too full for this digit: keep the ones placed
            y, x = spot
            boxes.append((y, x, side))
            ink = F.interpolate(self._digits[digit : digit + 1], size=(side, side), mode="bilinear")[0, 0].numpy()
            image[y : y + side, x : x + side] = ink
            patch = label[y : y + side, x : x + side]
            patch[ink >= p["void"]] = p["ignore_index"]
            patch[ink >= p["threshold"]] = 1 + int(self._digit_labels[digit])
        return image, label

    def __len__(self) -> int:
        return len(self._labels)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(indices, dtype=np.int64)
        return self._images[torch.from_numpy(index)], torch.from_numpy(self._labels[index].astype(np.int64))

    def describe(self) -> dict[str, Any]:
        return {**self._source, "split": self.split}

    def all_labels(self) -> np.ndarray:
        return self._labels


def _free_spot(
    rng: np.random.Generator, boxes: list[tuple[int, int, int]], side: int, size: int
) -> tuple[int, int] | None:
    """A top-left corner for a ``side`` box inside the canvas that overlaps none of ``boxes``, or None."""
    for _ in range(PLACEMENT_TRIES):
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(y + side <= by or by + bs <= y or x + side <= bx or bx + bs <= x for by, bx, bs in boxes):
            return y, x
    return None
