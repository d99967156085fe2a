"""Stage two in a real 2-process gloo group: exact against one process, disjoint per rank, each rank reading only
its chunks, and a SIGKILLed `torchrun` run resuming with 0 missing and 0 repeated samples on 2 or 1 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from kdcache.checkpoint import load_state_dict
from kdcache.datasets import HDF5Dataset, Subset
from kdcache.losses import LossSetup
from kdcache.models import DigitsCNN, DigitsMLP
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import checkpoint_path, run_precompute, train_student
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset, StageConfig, fit
from kdcache.train.samplelog import consumed_samples
from kdcache.train.statefile import load_state
from kdcache.train.world import World
from kdcache.views import ViewTransform
from tests.conftest import DIGITS, MEAN, ROOT, STD, pipeline_dict
from tests.helpers import record_rank_outcome

pytestmark = pytest.mark.distributed

SAMPLES = 299  # odd: the last global batch (43 of 64) splits 22 / 21, so the loss weighting is exercised
CHUNK = 32  # shard_samples=32 gives inner chunks of 32 samples: 10 chunks to stream
BUDGETS = {"ram": 1 << 30, "streamed": 0}
STAGES = [
    StageConfig(
        epochs=2,
        optimizer={"lr": 0.01},
        losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
    )
]


def digits_subset() -> Subset:
    return Subset(HDF5Dataset(DIGITS, "train"), np.arange(SAMPLES), tag=f"first-{SAMPLES}")


def train_mlp(world: World, store: str, budget: int, log_dir: Path | None) -> tuple[DigitsMLP, CachedDataset]:
    """A BatchNorm-free student, global batch 64, trained from the cached logits."""
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    data = CachedDataset(
        digits_subset(), open_store(store), teacher="t8", targets=["logits"], views=views, ram_budget_bytes=budget
    )
    torch.manual_seed(0)
    student = DigitsMLP(10, hidden=16)
    fit(
        student,
        data,
        None,
        stages=STAGES,
        setup=LossSetup(10),
        batch_size=64,
        seed=0,
        world=world,
        sample_log=log_dir,
        progress=False,
    )
    return student, data


def ddp_worker(rank: int, rendezvous: str, store: str, out: str) -> None:
    """One rank: train on the RAM-loaded and on the streamed store; record what it read and trained."""
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        for name, budget in BUDGETS.items():
            student, data = train_mlp(World(rank, 2, rank), store, budget, Path(out, name, "samples"))
            reader = data.readers["logits"]["logits"]
            reads = {"in_memory": reader.in_memory, "chunks_read": {int(k): v for k, v in reader.chunks_read.items()}}
            Path(out, name, f"reads{rank}.json").write_text(json.dumps(reads))
            if rank == 0:
                save_file(student.state_dict(), Path(out, name, "student.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("store") / "train.zarr"
    precompute(
        DigitsCNN(10, width=8).eval(),
        digits_subset(),
        path,
        targets=[build_target("logits", {"dtype": "float16"})],
        views=ViewTransform(count=1, seed=0, mean=MEAN, std=STD),
        num_classes=10,
        teacher_name="t8",
        shard_samples=CHUNK,
        progress=False,
    )
    return str(path)


@pytest.fixture(scope="module")
def ddp_runs(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker, args=(str(out / "rendezvous"), store, str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("path", list(BUDGETS))
def test_two_ranks_of_batch_32_equal_one_process_of_batch_64(ddp_runs, store, tmp_path, path):
    reference, _ = train_mlp(World(), store, BUDGETS[path], None)
    torch.manual_seed(0)
    initial = DigitsMLP(10, hidden=16).state_dict()
    distributed = load_file(ddp_runs / path / "student.safetensors")
    for name, tensor in reference.state_dict().items():
        assert (tensor - initial[name]).abs().max() > 1e-3  # it trained
        torch.testing.assert_close(distributed[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", list(BUDGETS))
def test_ranks_train_disjoint_parts_covering_every_epoch(ddp_runs, path):
    epochs = consumed_samples(ddp_runs / path / "samples")
    assert sorted(epochs) == [0, 1]
    for order in epochs.values():
        assert sorted(order.tolist()) == list(range(SAMPLES))  # 0 missing, 0 repeated
    per_rank = [rank_samples(ddp_runs / path / "samples" / f"rank{r}.jsonl") for r in (0, 1)]
    assert [len(s) for s in per_rank] == [2 * 150, 2 * 149]  # 4 x 32 + 22, then 4 x 32 + 21, per epoch


def test_each_rank_reads_only_what_it_trains_on(ddp_runs):
    for rank in (0, 1):
        streamed = json.loads((ddp_runs / "streamed" / f"reads{rank}.json").read_text())
        needed = np.unique(rank_samples(ddp_runs / "streamed" / "samples" / f"rank{rank}.jsonl") // CHUNK)
        assert not streamed["in_memory"]
        assert sorted(int(c) for c in streamed["chunks_read"]) == needed.tolist()
        assert set(streamed["chunks_read"].values()) == {1}  # each chunk decoded once (the chunk cache holds all)
        in_ram = json.loads((ddp_runs / "ram" / f"reads{rank}.json").read_text())
        assert in_ram == {"in_memory": True, "chunks_read": {}}  # loaded whole, once, per process


def rank_samples(log: Path) -> np.ndarray:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return np.concatenate([r["indices"] for r in records if r["event"] == "step"]).astype(np.int64)


# ------------------------------------------------------------------------------------------------ torchrun, SIGKILL
EPOCHS, BATCH, EVERY, KILL_AFTER = 3, 32, 3, 13  # 240 samples: 8 steps an epoch; killed after epoch 1, step 4


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, dict]:
    """A digits pipeline with a BatchNorm-free student, its teacher and complete store made once."""
    root = tmp_path_factory.mktemp("cli")
    raw = pipeline_dict(root, output_dir=str(root / "precompute"))
    raw["student"]["model"] = {"arch": "digits-mlp", "args": {"hidden": 16}}
    raw["student"]["train"].update(batch_size=BATCH)
    raw["student"]["train"]["stages"][0]["epochs"] = EPOCHS
    raw["student"]["checkpoint"] = {"every_steps": EVERY, "log_samples": True}
    raw["teacher"]["checkpoint"] = str(root / "teacher.safetensors")
    raw["cache"]["store"] = str(root / "train.zarr")
    run_precompute(parse_pipeline(raw), progress=False)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


def kdcache(pipeline: Path, out: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    command = [sys.executable, *launcher, "-m", "kdcache", "train", str(pipeline), "--quiet", "--set"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, f"output_dir={out}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_killed_torchrun_run_resumes_exactly_on_two_or_one_processes(pipeline, tmp_path):
    path, raw = pipeline
    reference = train_student(parse_pipeline({**raw, "output_dir": str(tmp_path / "ref")}), "cached", progress=False)
    expected = load_state_dict(tmp_path / "ref" / "student-cached.safetensors")

    killed = kdcache(path, tmp_path / "two", "--set", f"student.checkpoint.stop_after_steps={KILL_AFTER}", ranks=2)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stdout + killed.stderr
    cfg = parse_pipeline({**raw, "output_dir": str(tmp_path / "two")})
    assert load_state(checkpoint_path(cfg, "cached"))["sampler"] == {
        "epoch": 1,
        "step": 3,  # the last checkpoint: steps 3 and 4 of epoch 1 are lost with the processes
        "seed": 0,
        "num_samples": 240,
        "batch_size": BATCH,
        "block": 1,
        "shuffle": True,
        "world_size": 2,
    }
    shutil.copytree(tmp_path / "two", tmp_path / "one")

    for out, ranks in ((tmp_path / "two", 2), (tmp_path / "one", 1)):
        resumed = kdcache(path, out, "--resume", ranks=ranks)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.count("student (cached): accuracy") == 1  # rank 0 reports
        epochs = consumed_samples(out / "samples" / "student-cached")
        assert sorted(epochs) == list(range(EPOCHS))
        for order in epochs.values():
            assert sorted(order.tolist()) == list(range(240))  # 0 missing, 0 repeated in every epoch
        logged = [
            json.loads(line)
            for r in (0, 1)
            for line in (out / "samples/student-cached" / f"rank{r}.jsonl").read_text().splitlines()
        ]
        replayed = [r for r in logged if r["event"] == "step" and r["epoch"] == 1 and r["step"] in (3, 4)]
        assert len(replayed) == 2 * 2 + 2 * ranks  # logged by both killed ranks, then again after the resume
        trained = load_state_dict(out / "student-cached.safetensors")
        for name, tensor in expected.items():
            torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6)
    assert reference.metrics["accuracy"] > 0.3


class EditedOutsideProbes(Subset):
    """The digits with one pixel changed in every sample the dataset fingerprint does not hash."""

    def get_batch(self, indices):
        inputs, labels = super().get_batch(indices)
        probes = np.unique(np.linspace(0, SAMPLES - 1, 16).round().astype(np.int64))
        inputs = inputs.clone()
        inputs[~np.isin(np.asarray(indices), probes), 0, 3, 3] += 1 / 16
        return inputs, labels


def mismatch_worker(rank: int, rendezvous: str, store: str, out: str) -> None:
    """One rank training from an edited dataset: it must refuse, and say why, before any collective."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    edited = EditedOutsideProbes(HDF5Dataset(DIGITS, "train"), np.arange(SAMPLES), tag=f"first-{SAMPLES}")

    def train() -> None:
        data = CachedDataset(edited, open_store(store), teacher="t8", targets=["logits"], views=views)
        fit(
            DigitsMLP(10, hidden=16),
            data,
            None,
            stages=STAGES,
            setup=LossSetup(10),
            batch_size=64,
            seed=0,
            world=World(rank, 2, rank),
            progress=False,
        )

    record_rank_outcome(rank, out, train)


def test_every_ddp_rank_refuses_samples_whose_content_differs(store, tmp_path):
    mp.spawn(mismatch_worker, args=(str(tmp_path / "rendezvous"), store, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcome["type"] == "SampleMismatchError", outcome
        assert "no row of the store has this content" in outcome["message"]
