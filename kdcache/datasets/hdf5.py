"""HDF5 adapter: any file with an images array and a labels array per split (names configurable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError

Layout = Literal["NHW", "NHWC", "NCHW"]
DIGITS_FILE = Path(__file__).with_name("digits.h5")  # the UCI digits, shipped with the package (data/make_digits.py)


class HDF5Dataset(SampleDataset):
    """One split of an HDF5 file, e.g. the shipped digits (:data:`DIGITS_FILE`) with ``{split}/images`` and
    ``{split}/labels``.

    The arrays are read into memory once (h5py handles are not fork-safe and these files are small); images are
    scaled to [0, 1] by ``pixel_max`` (the file's ``pixel_max`` attribute, else 255 for integer images).
    """

    def __init__(
        self,
        path: str | Path,
        split: str,
        *,
        images: str = "{split}/images",
        labels: str = "{split}/labels",
        layout: Layout = "NHW",
        pixel_max: float | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        self.split = split
        self.keys = {"images": images.format(split=split), "labels": labels.format(split=split)}
        self.layout = layout
        if not self.path.is_file():
            raise ConfigError(f"HDF5 file {str(self.path)!r} does not exist; check data.args.path in the pipeline")
        with h5py.File(self.path, "r") as f:
            for role, key in self.keys.items():
                if key not in f:
                    raise ConfigError(
                        f"{self.path} has no {role} array {key!r} for split {split!r}; arrays present: "
                        f"{_list_arrays(f)}. Set data.args.{role} to the right name ('{{split}}' is substituted)"
                    )
            raw = f[self.keys["images"]][()]
            self._labels = np.asarray(f[self.keys["labels"]][()], dtype=np.int64)
            scale = pixel_max or f.attrs.get("pixel_max") or (255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0)
        if len(raw) != len(self._labels):
            raise ConfigError(f"{self.path}: {len(raw)} images but {len(self._labels)} labels in split {split!r}")
        self.pixel_max = float(scale)
        self._images = torch.from_numpy(_to_nchw(np.asarray(raw), layout)).float().div_(self.pixel_max)
        self._label_tensor = torch.from_numpy(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self._images[index], self._label_tensor[index]

    def describe(self) -> dict[str, Any]:
        return {"kind": "hdf5", "file": self.path.name, "split": self.split, **self.keys, "layout": self.layout}

    def all_labels(self) -> np.ndarray:
        return self._labels


def _to_nchw(images: np.ndarray, layout: Layout) -> np.ndarray:
    expected = {"NHW": 3, "NHWC": 4, "NCHW": 4}[layout]
    if images.ndim != expected:
        raise ConfigError(f"images have shape {images.shape}, which is not layout {layout!r}; set data.args.layout")
    channels = {"NHWC": images.shape[-1], "NCHW": images.shape[1]}.get(layout)
    other = {"NHWC": ("NCHW", images.shape[1]), "NCHW": ("NHWC", images.shape[-1])}.get(layout)
    if channels is not None and other is not None and channels not in (1, 3, 4) and other[1] in (1, 3, 4):
        raise ConfigError(
            f"images have shape {images.shape}: as layout {layout!r} that is {channels} channels, but it looks like "
            f"{other[0]} ({other[1]} channels); set data.args.layout: {other[0]}"
        )
    if layout == "NHW":
        return images[:, None]
    if layout == "NHWC":
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return images


def _list_arrays(f: Any) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names
