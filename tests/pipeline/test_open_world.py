"""A user's own world from a pipeline file, no kdcache internals touched: an ImageFolder of PNGs, a torchvision
ResNet teacher from a plain ``torch.save(state_dict)`` or safetensors checkpoint, a torchvision v2 view pipeline,
a torchvision student; and the errors a user meets on the way name the thing and the fix."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
import yaml
from PIL import Image
from torchvision.transforms.v2 import functional as F

from kdcache.datasets import as_sample_dataset, build_dataset
from kdcache.errors import ConfigError
from kdcache.store import open_store
from tests.helpers import kdcache, write_image_folder


def user_pipeline(root: Path, checkpoint: Path) -> Path:
    raw = {
        "name": "imagefolder_kd",
        "seed": 0,
        "output_dir": str(root / "run"),
        "data": {
            "dataset": "torchvision.datasets:ImageFolder",
            "splits": {"train": {"root": str(root / "train")}, "test": {"root": str(root / "test")}},
            "num_classes": 3,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "views": {
            "count": 2,
            "pipeline": [
                {"name": "RandomResizedCrop", "size": 32, "scale": [0.5, 1.0]},
                {"name": "RandomHorizontalFlip"},
            ],
            "eval": [{"name": "Resize", "size": 36}, {"name": "CenterCrop", "size": 32}],
        },
        "teacher": {
            "name": "resnet18",
            "model": {"arch": "torchvision.models:resnet18"},
            "checkpoint": str(checkpoint),
        },
        "student": {
            "model": {"arch": "torchvision.models:mobilenet_v3_small"},
            "train": {
                "batch_size": 8,
                "stages": [{"epochs": 1, "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]}],
            },
        },
        "cache": {"targets": [{"kind": "logits", "dtype": "float32"}], "batch_size": 8},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    write_image_folder(root / "train", per_class=6, seed=0)
    write_image_folder(root / "test", per_class=3, seed=1)
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=3)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    safetensors.torch.save_file(teacher.state_dict(), root / "teacher.safetensors")
    return root


@pytest.mark.parametrize("checkpoint", ["teacher.pt", "teacher.safetensors"])
def test_a_torchvision_teacher_and_imagefolder_from_a_pipeline_file(world, checkpoint, tmp_path):
    root = tmp_path
    for name in ("train", "test", checkpoint):
        (root / name).symlink_to(world / name)
    path = user_pipeline(root, root / checkpoint)
    store = str(root / "run" / "cache" / "train-2views.zarr")
    outputs = {}
    commands = (
        ["precompute", str(path), "--quiet"],
        ["train", str(path), "--quiet"],
        ["inspect", store],
        ["verify", store, "--recompute", "6", "--pipeline", str(path), "--quiet"],
    )
    for command in commands:
        done = kdcache(*command)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[command[0]] = done.stdout + done.stderr
    cache = open_store(store)
    dataset = cache.manifest.dataset
    assert dataset["length"] == 18 and dataset["class_names"] == ["class_0", "class_1", "class_2"]
    assert dataset["source"]["kind"] == "torchvision.datasets.folder.ImageFolder"  # what it is, not where it lives
    # the cached eval view is what the teacher gives on Resize + CenterCrop of the PNG, normalised
    teacher = torchvision.models.resnet18(num_classes=3)
    teacher.load_state_dict(torch.load(world / "teacher.pt", weights_only=True))
    image = F.pil_to_tensor(Image.open(sorted((world / "train" / "class_0").glob("*.png"))[0]).convert("RGB"))
    view = F.center_crop(F.resize(image, 36, antialias=True), 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        live = teacher.eval()((view.float() / 255 - mean).div(std)[None])
    stored = cache.open_array("teachers/resnet18/logits")[0, 0]
    np.testing.assert_allclose(stored, live[0].numpy(), rtol=1e-4, atol=1e-4)
    assert (root / "run" / "student-cached.safetensors").exists()
    assert "samples per class: class_0 6, class_1 6, class_2 6" in outputs["inspect"]
    assert "6/6" in outputs["verify"] and "FAIL" not in outputs["verify"]  # every re-run pair equals the cache bitwise


def write_mnist(root: Path, *, train: int = 40, test: int = 10) -> Path:
    """torchvision's MNIST on-disk layout (idx files under MNIST/raw), with random digits: a dataset in a
    library's own format, opened by import path as a user would open the real one."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, count) + labels.tobytes())
    return root


def test_a_library_dataset_by_import_path_with_per_split_arguments(tmp_path):
    root = write_mnist(tmp_path / "mnist")
    args = {"root": str(root), "download": False}
    train = build_dataset("torchvision.datasets:MNIST", "train", {**args, "train": True})
    images, labels = train.get_batch(np.array([0, 39]))
    assert len(train) == 40 and images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == train.dataset.targets[[0, 39]].tolist()
    assert torch.equal(images[1, 0], train.dataset.data[39])  # the library's pixels, untouched
    assert train.class_names is not None and len(train.class_names) == 10
    assert len(build_dataset("torchvision.datasets:MNIST", "test", {**args, "train": False})) == 10


class SyntheticCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's own CIFAR-10 reader with the published MD5s dropped: the test writes the exact on-disk format
    (pickled batches in cifar-10-batches-py) with random pixels, which cannot match the real files' checksums."""

    train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def write_cifar10(root: Path, *, per_batch: int = 10) -> Path:
    """CIFAR-10 as torchvision finds it on disk: five pickled training batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "filenames": [f"{k}.png" for k in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def test_cifar10_on_disk_with_train_and_test_splits(tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    args = {"root": str(root), "download": False}
    name = f"{__name__}:SyntheticCIFAR10"
    train = build_dataset(name, "train", {**args, "train": True})
    images, labels = train.get_batch(np.array([0, 49]))
    assert len(train) == 50 and images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    np.testing.assert_array_equal(images[1].permute(1, 2, 0).numpy(), train.dataset.data[49])  # HWC -> CHW, as is
    assert labels.tolist() == [train.dataset.targets[0], train.dataset.targets[49]]
    assert train.class_names[:2] == ["airplane", "automobile"]
    assert len(build_dataset(name, "test", {**args, "train": False})) == 10
    with pytest.raises(ConfigError, match=r"CIFAR10' with .* could not be opened: Dataset not found or corrupted"):
        build_dataset("torchvision.datasets:CIFAR10", "train", args)  # the real reader checks the real MD5s


def test_user_errors_name_the_thing_and_the_fix(world, tmp_path):
    for name in ("train", "test"):
        (tmp_path / name).symlink_to(world / name)
    path = user_pipeline(tmp_path, world / "teacher.pt")
    raw = yaml.safe_load(path.read_text())
    cases = {  # a typo in a user's import path is a config error that names it, never a traceback
        ("teacher", "model", "arch"): ("torchvision.models:resnet180", "resnet180"),
        ("data", "dataset"): ("torchvision.dataset:ImageFolder", "torchvision.dataset"),
        ("views", "pipeline"): ([{"name": "RandomResizedCrp", "size": 32}], "Did you mean RandomResizedCrop"),
    }
    for keys, (bad, named) in cases.items():
        edited = json.loads(json.dumps(raw))
        node = edited
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = bad
        path.write_text(yaml.safe_dump(edited))
        done = kdcache("precompute", str(path), "--quiet")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert named in done.stderr, done.stderr[-2000:]
    with pytest.raises(ConfigError, match="could not be opened"):
        build_dataset("torchvision.datasets:ImageFolder", "train", {"root": str(tmp_path / "nowhere")})


def test_a_student_typo_is_refused_before_any_teacher_runs(world, tmp_path):
    """``kdcache plan`` builds the student too, and ``kdcache run`` builds every variant's student before the
    teacher trains or stage one writes: a typo costs nothing, and nothing is written."""
    for name in ("train", "test"):
        (tmp_path / name).symlink_to(world / name)
    path = user_pipeline(tmp_path, world / "teacher.pt")
    typo = ("--set", "student.model.arch=torchvision.models:mobilenet_v3_smal")
    for command in ("plan", "run"):
        done = kdcache(command, str(path), *typo, "--quiet")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "has no attribute 'mobilenet_v3_smal'. Did you mean 'mobilenet_v3_small'" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"item 0 of list is a dict; kdcache needs \(image, label\) items"):
        as_sample_dataset([{"image": torch.zeros(3, 4, 4), "label": 1}]).get_batch(np.array([0]))
    with pytest.raises(ConfigError, match=r"Drop the dataset's own transform="):
        as_sample_dataset([("not an image", 1)]).get_batch(np.array([0]))
