"""PASCAL VOC 2012 segmentation from disk, in torchvision's ``VOCSegmentation`` layout (optionally SBD-augmented).

Expected under ``root`` (what ``torchvision.datasets.VOCSegmentation(root, download=True)`` leaves, or the VOC
tarball unpacked)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG: class indices 0..20, 255 on object outlines
    VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt one image id per line (train, val, trainval)

SBD augmentation ("train_aug", 10,582 images): put the converted SBD masks (index PNGs) in
``VOCdevkit/VOC2012/SegmentationClassAug`` and the list in ``ImageSets/Segmentation/train_aug.txt``, and pass
``mask_dirs: [SegmentationClass, SegmentationClassAug]``: each image's mask is taken from the first folder that has
it, so official VOC masks win over SBD's.

Samples must share one shape for batching and caching, so each image is resized (bilinear, antialiased) so that its
longer side is ``size`` and padded at the bottom and right to ``size`` × ``size``; its mask is resized with nearest
neighbour and padded with ``ignore_index``, so padding never counts in losses or metrics. Files are read per batch;
:meth:`all_labels` reads every mask once (``N × size²`` bytes) and keeps them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError

VOC_CLASSES = 21


class VOCSegmentation(SampleDataset):
    """One split of PASCAL VOC 2012 segmentation (``train``, ``val``, ``trainval``, or ``train_aug`` with SBD).

    >>> val = VOCSegmentation("val", root="/data/voc", size=512)  # doctest: +SKIP
    >>> images, masks = val.get_batch(np.arange(4))  # (4, 3, 512, 512) in [0, 1]; (4, 512, 512) in {0..20, 255}
    """

    def __init__(
        self,
        split: str,
        *,
        root: str | Path,
        year: str = "2012",
        size: int = 512,
        mask_dirs: tuple[str, ...] = ("SegmentationClass",),
        ignore_index: int = 255,
    ) -> None:
        self.split = split
        self.base = Path(root) / "VOCdevkit" / f"VOC{year}"
        self.size = size
        self.ignore_index = ignore_index
        self.mask_dirs = tuple(mask_dirs)
        listing = self.base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise ConfigError(
                f"VOC split list {str(listing)!r} does not exist. Expected torchvision's VOCSegmentation layout "
                "under data.args.root (VOCdevkit/VOC<year>/ImageSets/Segmentation/<split>.txt); check root, year and "
                "the split name (train, val, trainval, or train_aug with SBD)"
            )
        self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ConfigError(f"VOC split list {str(listing)!r} is empty; it must list one image id per line")
        self._masks = [self._mask_path(i) for i in self.ids]
        self._labels: np.ndarray | None = None

    def _mask_path(self, image_id: str) -> Path:
        for folder in self.mask_dirs:
            path = self.base / folder / f"{image_id}.png"
            if path.is_file():
                return path
        raise ConfigError(
            f"no mask for VOC image {image_id!r} of split {self.split!r} in {list(self.mask_dirs)} under "
            f"{str(self.base)!r}. For SBD-augmented lists add the converted SBD folder to data.args.mask_dirs"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._read(int(i)) for i in np.asarray(indices, dtype=np.int64)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path = self.base / "JPEGImages" / f"{self.ids[index]}.jpg"
        if not image_path.is_file():
            raise ConfigError(f"VOC image {str(image_path)!r} listed in split {self.split!r} does not exist")
        with Image.open(image_path) as img:
            image = TF.pil_to_tensor(img.convert("RGB"))
        return self._fit(image, InterpolationMode.BILINEAR, 0).float().div_(255), self._mask(index).long()

    def _mask(self, index: int) -> torch.Tensor:
        with Image.open(self._masks[index]) as img:
            if img.mode not in ("P", "L"):
                raise ConfigError(
                    f"VOC mask {str(self._masks[index])!r} has mode {img.mode!r}; expected a palette ('P') or "
                    "grayscale ('L') PNG of class indices, as VOC and converted SBD masks are"
                )
            mask = torch.from_numpy(np.array(img, dtype=np.uint8))[None]
        return self._fit(mask, InterpolationMode.NEAREST, self.ignore_index)[0]

    def _fit(self, image: torch.Tensor, interpolation: InterpolationMode, fill: int) -> torch.Tensor:
        """Resize so the longer side is ``size``, then pad bottom and right to ``size`` × ``size`` with ``fill``."""
        h, w = image.shape[-2:]
        scale = self.size / max(h, w)
        shape = [max(1, round(h * scale)), max(1, round(w * scale))]
        if shape != [h, w]:
            image = TF.resize(image, shape, interpolation=interpolation, antialias=True)
        return TF.pad(image, [0, 0, self.size - shape[1], self.size - shape[0]], fill=fill)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "voc",
            "base": self.base.name,
            "split": self.split,
            "size": self.size,
            "mask_dirs": list(self.mask_dirs),
            "ids_sha256": hashlib.sha256("\n".join(self.ids).encode()).hexdigest(),
        }

    def all_labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.stack([self._mask(i).numpy() for i in range(len(self))])
        return self._labels
