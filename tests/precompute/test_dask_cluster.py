"""Stage one on a real dask cluster started from the command line (``dask scheduler``, two ``dask worker``), with
the teacher and dataset in a user module that only the workers' PYTHONPATH provides: ``kdcache precompute
--scheduler`` never imports it, and the store is byte-identical to a one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import all_files

USER_MODULE = '''
"""A user's own teacher and dataset, known to kdcache only by import path."""
import torch
from torch import nn
from torch.utils.data import Dataset


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class Blobs(Dataset):
    """(image, label) items: 12x12 grey images whose bright square sits where the class says."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (count,), generator=g)
        self.images = torch.rand(count, 1, 12, 12, generator=g) * 0.3
        for i, label in enumerate(self.labels.tolist()):
            r, c = divmod(label, 2)
            self.images[i, 0, 6 * r : 6 * r + 6, 6 * c : 6 * c + 6] += 0.7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])
'''


def pipeline(root: Path, name: str) -> Path:
    raw = {
        "name": name,
        "seed": 0,
        "output_dir": str(root / name),
        "data": {
            "dataset": "userkd:Blobs",
            "args": {"count": 200},
            "splits": {"train": {"seed": 1}, "test": {"seed": 2}},
            "num_classes": 4,
        },
        "views": {"count": 2, "pipeline": [{"name": "RandomRotation", "degrees": 15}]},
        "teacher": {
            "name": "tiny",
            "model": {"arch": "userkd:TinyNet", "args": {"width": 8}},
            "checkpoint": str(root / "tiny.safetensors"),
        },
        "student": {
            "model": {"arch": "userkd:TinyNet", "args": {"width": 2}},
            "train": {"stages": [{"epochs": 1, "losses": [{"name": "kd"}]}]},
        },
        "cache": {"shard_samples": 64, "batch_size": 32, "targets": [{"kind": "logits", "dtype": "float32"}]},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def user(tmp_path) -> Path:
    code = tmp_path / "usercode"
    code.mkdir()
    (code / "userkd.py").write_text(textwrap.dedent(USER_MODULE))
    made = run(
        [
            sys.executable,
            "-c",
            "import torch, userkd; from safetensors.torch import save_file; "
            "torch.manual_seed(0); save_file(userkd.TinyNet(4, width=8).state_dict(), 'tiny.safetensors')",
        ],
        {**os.environ, "PYTHONPATH": str(code)},
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    return tmp_path


@pytest.fixture
def cluster(user) -> Iterator[str]:
    """A scheduler and two workers started by their command lines; the workers alone see the user's code."""
    dask = str(Path(sys.executable).parent / "dask")
    worker_env = {**os.environ, "PYTHONPATH": str(user / "usercode"), "OMP_NUM_THREADS": "1"}
    file = user / "scheduler.json"
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--scheduler-file", str(file), "--port", "0", "--no-dashboard"],
            cwd=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        for k in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"w{k}",
                    ],
                    cwd=user,
                    env=worker_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait_for_workers(address, 2)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(count, timeout=120)


def test_kdcache_precompute_on_a_command_line_cluster_with_worker_only_code(user, cluster):
    coordinator_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert run([sys.executable, "-c", "import userkd"], coordinator_env, user).returncode != 0  # not importable here
    on_dask = run(
        [sys.executable, "-m", "kdcache", "precompute", str(pipeline(user, "dask")), "--scheduler", cluster, "--quiet"],
        coordinator_env,
        user,
    )
    assert on_dask.returncode == 0, on_dask.stderr[-3000:]
    local_env = {**os.environ, "PYTHONPATH": str(user / "usercode"), "OMP_NUM_THREADS": "1"}
    local = run(
        [sys.executable, "-m", "kdcache", "precompute", str(pipeline(user, "local")), "--quiet"], local_env, user
    )
    assert local.returncode == 0, local.stderr[-3000:]
    dask_store, local_store = (user / name / "cache" / "train-2views.zarr" for name in ("dask", "local"))
    files = all_files(dask_store)
    assert "teachers/tiny/logits/c/3/0/0" in files and "samples/digest/c/3/0" in files
    assert files == all_files(local_store)
