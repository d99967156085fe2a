"""Any map-style ``torch.utils.data.Dataset`` of ``(image, label)`` items, in kdcache's batched contract.

``torchvision.datasets.ImageFolder``, ``CIFAR10``, a user's own dataset: items are read one by one and their images
— PIL images, uint8 or float tensors, or numpy arrays, of any size — become tensors ``(C, H, W)`` as they are, before
any view: uint8 images stay uint8 (the view transform scales them), nothing is resized. A batch of equally sized images
is one stacked tensor; images of different sizes come as a list, and the view transform makes them the model's size.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError

Images = torch.Tensor | list[torch.Tensor]


class ItemDataset(SampleDataset):
    """``dataset``'s items as kdcache samples.

    Its description (part of a store's dataset fingerprint) is what the data *is* — the dataset class, its length
    and, for datasets that list their files (``ImageFolder``'s ``samples``), a digest of the ``class/file`` names —
    not how it was built or where it lives: a store made from a pipeline file serves the same data opened from
    Python, and a dataset moved to another mount still matches (its content digests check every sample anyway)."""

    def __init__(self, dataset: Dataset, *, split: str = "train") -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ConfigError(
                f"{type(dataset).__name__} is not a map-style dataset (it needs __getitem__ and __len__); kdcache reads "
                "samples by index. Wrap an iterable dataset in a map-style one"
            )
        self.dataset = dataset
        self.split = split
        self._labels: np.ndarray | None = None
        self.class_names = _class_names(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, indices: np.ndarray) -> tuple[Images, torch.Tensor]:
        items = [self._item(int(i)) for i in np.asarray(indices, dtype=np.int64)]
        images = [image for image, _ in items]
        labels = torch.stack([label for _, label in items]) if items else torch.empty(0, dtype=torch.int64)
        if images and all(x.shape == images[0].shape for x in images):
            return torch.stack(images), labels
        return images, labels

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ConfigError(
                f"item {index} of {type(self.dataset).__name__} is a {type(item).__name__}; kdcache needs (image, "
                "label) items. Return (image, label) from __getitem__ (extra fields after them are ignored)"
            )
        return image_tensor(item[0], f"item {index}"), label_tensor(item[1], f"item {index}")

    def describe(self) -> dict[str, Any]:
        kind = type(self.dataset)
        described: dict[str, Any] = {"kind": f"{kind.__module__}.{kind.__qualname__}", "length": len(self)}
        files = getattr(self.dataset, "samples", None) or getattr(self.dataset, "imgs", None)
        if isinstance(files, list) and files and isinstance(files[0], tuple | list):
            names = "\n".join(str(path).rsplit("/", 2)[-2] + "/" + str(path).rsplit("/", 1)[-1] for path, *_ in files)
            described["files_sha256"] = hashlib.sha256(names.encode()).hexdigest()
        return described

    def all_labels(self) -> np.ndarray:
        if self._labels is None:
            targets = getattr(self.dataset, "targets", None)
            if targets is not None and len(targets) == len(self):
                self._labels = np.asarray(torch.as_tensor(np.asarray(targets)), dtype=np.int64)
            else:  # read every item once (the labels are needed for the fingerprint and samples/label)
                self._labels = torch.stack([self._item(i)[1] for i in range(len(self))]).numpy()
        return self._labels


def as_sample_dataset(dataset: Any, *, split: str = "train") -> SampleDataset:
    """``dataset`` itself when it already follows kdcache's contract, else an :class:`ItemDataset` over it."""
    if isinstance(dataset, SampleDataset):
        return dataset
    if isinstance(dataset, Dataset) or (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return ItemDataset(dataset, split=split)
    raise ConfigError(
        f"expected a dataset (a torch.utils.data.Dataset of (image, label) items), got {type(dataset).__name__}"
    )


def image_tensor(image: Any, where: str) -> torch.Tensor:
    """An image as a ``(C, H, W)`` tensor of its own dtype: PIL images and ``HWC`` arrays are transposed."""
    from PIL import Image

    if isinstance(image, Image.Image):
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        array = image[None] if image.ndim == 2 else image
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
            array = array.transpose(2, 0, 1)
        image = torch.from_numpy(np.ascontiguousarray(array))
    if isinstance(image, torch.Tensor):
        tensor = image.as_subclass(torch.Tensor)  # a tv_tensors.Image becomes a plain tensor
        tensor = tensor[None] if tensor.dim() == 2 else tensor
        if tensor.dim() == 3 and (tensor.dtype == torch.uint8 or tensor.is_floating_point()):
            return tensor
        raise ConfigError(
            f"{where}: an image must be 2-D or 3-D, uint8 or float; got {tuple(tensor.shape)} {tensor.dtype}"
        )
    raise ConfigError(
        f"{where}: the image is a {type(image).__name__}; kdcache reads PIL images, numpy arrays and tensors. Drop the "
        "dataset's own transform= (kdcache's views transform the images) or convert the item"
    )


def label_tensor(label: Any, where: str) -> torch.Tensor:
    """A class label as an int64 scalar tensor (or an integer mask as an int64 tensor)."""
    tensor = torch.as_tensor(np.asarray(label)) if not isinstance(label, torch.Tensor) else label
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ConfigError(f"{where}: the label {label!r} is not an integer class (or an integer mask)")
    return tensor.to(torch.int64)


def _class_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "classes", None)
    return [str(n) for n in names] if isinstance(names, list | tuple) else None
