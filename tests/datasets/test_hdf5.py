"""HDF5 files from a pipeline file: ``dataset: hdf5`` with the file's own keys and layout, and the shipped digits
with HDF5 options; errors name the key and the fix."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from kdcache.errors import ConfigError
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import load_split
from tests.conftest import pipeline_dict


def test_an_nhwc_hdf5_file_from_yaml(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        for split in ("train", "test"):
            f[f"{split}/x"] = images
            f[f"{split}/y"] = np.arange(12) % 3
    data = {
        "dataset": "hdf5",
        "args": {
            "path": str(tmp_path / "mine.h5"),
            "images": "{split}/x",
            "labels": "{split}/y",
            "layout": "NHWC",
            "pixel_max": 255,
        },
        "num_classes": 3,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    cfg = parse_pipeline(pipeline_dict(tmp_path, data=data))
    train = load_split(cfg, "train")
    raw, labels = train.get_batch(np.array([0, 11]))
    assert raw.shape == (2, 3, 10, 10) and labels.tolist() == [0, 2]
    np.testing.assert_allclose(raw[1].permute(1, 2, 0).numpy(), images[11] / 255, rtol=0, atol=1e-7)
    wrong = {**data, "args": {**data["args"], "layout": "NCHW"}}
    with pytest.raises(ConfigError, match=r"looks like NHWC \(3 channels\); set data.args.layout: NHWC"):
        load_split(parse_pipeline(pipeline_dict(tmp_path, data=wrong)), "train").get_batch(np.array([0]))


def test_the_shipped_digits_take_hdf5_options(tmp_path):
    data = {"dataset": "digits", "args": {"layout": "NHW", "pixel_max": 16}, "num_classes": 10}
    train = load_split(parse_pipeline(pipeline_dict(tmp_path, data=data)), "train")
    raw, _ = train.get_batch(np.arange(4))
    assert len(train) == 1257 and raw.shape == (4, 1, 8, 8) and float(raw.max()) <= 1.0
