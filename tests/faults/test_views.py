"""Views the teacher never saw never reach training: a changed lambda, an edited function, a step's hidden setting,
a step with its own random source that fires at p = 0.05, a callable object, another torchvision pipeline with the
same ``repr``; and the epoch reaches every worker (persistent workers, ``shuffle=True`` with and without
``set_epoch``, kdcache's samplers) — through the Python API (0 and 2 DataLoader workers), the CLI and DDP ranks.

The API stores are cached from an echo teacher (``nn.Flatten``, float32 logits), so the cached target of a view *is*
the input the teacher was given: a run that is not refused is checked input by input against it (silent wrong).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from kdcache import CachedDataset, batch_loader, set_loader_epoch
from kdcache.errors import ConfigError, KdcacheError, ViewMismatchError
from kdcache.losses import LossSetup
from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import BlockShuffleSampler, StageConfig, fit
from kdcache.train.world import World
from kdcache.views import ViewTransform
from tests.conftest import DIGITS, MEAN, STD, pipeline_dict, with_changes
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.viewsteps import FACTOR_VARIABLE, Darken, Rare, env_scaled
from tests.helpers import kdcache, record_rank_outcome

VIEWS = 3


def edited(constant: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """One function as two versions of a file define it: same module and name, another constant."""
    namespace: dict[str, Any] = {"__name__": __name__}
    exec(f"def brighten(image):\n    return image + {constant}\n", namespace)  # noqa: S102 - a fixed test source
    return namespace["brighten"]


CASES: dict[str, tuple[Callable[[], Any], Callable[[], Any], str]] = {
    # name: (the step stage one ran, the step stage two runs, the kind of refusal expected)
    "lambda-changed": (lambda: v2.Lambda(lambda x: x.flip(-1)), lambda: v2.Lambda(lambda x: -x), "spec"),
    "function-edited": (lambda: edited(0.1), lambda: edited(0.2), "spec"),
    "callable-object": (lambda: Darken(0.5), lambda: Darken(0.7), "spec"),
    "same-repr-other-p": (
        lambda: v2.RandomApply([v2.RandomHorizontalFlip(p=1.0)], p=0.3),
        lambda: v2.RandomApply([v2.RandomHorizontalFlip(p=1.0)], p=0.9),
        "spec",
    ),
    "hidden-setting": (lambda: env_scaled, lambda: env_scaled, "digest"),
    "unseeded-p0.05": (lambda: Rare(0.05), lambda: Rare(0.05), "digest"),
}


def views_of(step: Any) -> ViewTransform:
    return ViewTransform(count=VIEWS, seed=1, mean=MEAN, std=STD, pipeline=v2.Compose([step]))


def echo_store(path: Path, dataset, step: Any) -> str:
    precompute(nn.Flatten(), dataset, str(path), targets=[build_target("logits", {"dtype": "float32"})],
               views=views_of(step), teacher_name="echo", shard_samples=128, progress=False)  # fmt: skip
    return str(path)


def wrong_pairs(data: CachedDataset, workers: int, epochs: int = 2) -> int:
    """Train-loop reads over ``epochs``: the views whose input is not the teacher's input for them."""
    loader = batch_loader(data, batch_size=64, seed=0, num_workers=workers, multiprocessing_context="fork")
    wrong = 0
    for epoch in range(epochs):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            batch = batch.to("cpu")
            wrong += int((batch.inputs.flatten(1) != batch.targets["logits"]).any(dim=1).sum())
    return wrong


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-dataloader-workers"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_view_the_teacher_never_saw_is_refused_through_the_api(case, workers, tmp_path, digits_small, monkeypatch):
    cached, trained, kind = CASES[case]
    outcome = Outcome("views", f"api-{case}-{workers}w")
    monkeypatch.setenv(FACTOR_VARIABLE, "0.5")
    try:
        store = echo_store(tmp_path / "store.zarr", digits_small, cached())
        monkeypatch.setenv(FACTOR_VARIABLE, "0.7")
        data = CachedDataset(digits_small, open_store(store), views=views_of(trained()), policy="random")
        wrong = wrong_pairs(data, workers)
    except KdcacheError as exc:
        expected = "other views" if kind == "spec" else "per-view digest"
        replay = case.startswith("unseeded") and "is not replayable" in str(exc)  # stage one's own check caught it
        outcome.detected = (clear_error(exc, expected) and clear_error(exc, str(tmp_path))) or replay
        outcome.note = str(exc)[:300]
    else:
        outcome.silent_wrong = wrong > 0
        outcome.note = f"{wrong} pairs trained on another input's targets"
    assert record(outcome).passed, outcome


def test_the_same_views_built_again_train_with_every_input_the_teachers(tmp_path, digits_small):
    """No false alarm: a callable object without __repr__ and a torchvision pipeline, made afresh for stage two."""
    for name, make in {"object": lambda: Darken(0.5), "torchvision": lambda: v2.RandomHorizontalFlip(0.5)}.items():
        store = echo_store(tmp_path / f"{name}.zarr", digits_small, make())
        data = CachedDataset(digits_small, open_store(store), views=views_of(make()), policy="random")
        outcome = Outcome("views", f"api-same-{name}")
        outcome.recovered = wrong_pairs(data, workers=2) == 0
        assert record(outcome).passed, outcome


# ------------------------------------------------------------------------------------------------ epochs
@pytest.fixture(scope="module")
def cycle_store(tmp_path_factory, digits_small) -> str:
    return echo_store(tmp_path_factory.mktemp("cycle") / "store.zarr", digits_small, v2.RandomHorizontalFlip(0.5))


def epochs_of(loader: DataLoader, data: CachedDataset, epochs: int, on_epoch: Callable[[int], None]) -> np.ndarray:
    """The view each sample was served in each epoch, ``(epochs, N)``, and a check that each is the policy's."""
    served = np.full((epochs, len(data)), -1)
    for epoch in range(epochs):
        on_epoch(epoch)
        for items in loader:
            batch = data.as_batch(items).to("cpu")
            served[epoch, batch.indices.numpy()] = batch.views.numpy()
    return served


def expected_views(data: CachedDataset, epochs: int) -> np.ndarray:
    return np.stack([data.view_ids(np.arange(len(data)), epoch) for epoch in range(epochs)])


LOADERS: dict[str, tuple[dict[str, Any], bool, str, bool]] = {
    # name: (DataLoader arguments, kdcache's sampler, what is called each epoch, refused)
    "persistent-workers-shuffle": (
        {"shuffle": True, "num_workers": 2, "persistent_workers": True},
        False,
        "data",
        True,
    ),
    "persistent-workers-kdcache-sampler": ({"num_workers": 2, "persistent_workers": True}, True, "sampler", False),
    "kdcache-sampler-without-set-epoch-0w": ({}, True, "nothing", True),
    "kdcache-sampler-without-set-epoch-2w": ({"num_workers": 2}, True, "nothing", True),
    "kdcache-sampler-dataset-set-epoch-only": ({"num_workers": 2}, True, "data", True),
    "shuffle-without-set-epoch-0w": ({"shuffle": True}, False, "nothing", True),
    "shuffle-without-set-epoch-2w": ({"shuffle": True, "num_workers": 2}, False, "nothing", True),
    "shuffle-set-epoch-once-2w": ({"shuffle": True, "num_workers": 2}, False, "once", True),
    "shuffle-with-set-epoch-0w": ({"shuffle": True}, False, "data", False),
    "shuffle-with-set-epoch-2w": ({"shuffle": True, "num_workers": 2}, False, "data", False),
}


@pytest.mark.parametrize("setup", list(LOADERS))
def test_every_epoch_reaches_every_worker_or_the_loader_is_refused(setup, cycle_store, digits_small):
    arguments, own_sampler, calls, refused = LOADERS[setup]
    data = CachedDataset(digits_small, open_store(cycle_store), views=views_of(v2.RandomHorizontalFlip(0.5)))
    sampler = BlockShuffleSampler(data, seed=0) if own_sampler else None
    context = "fork" if arguments.get("num_workers") else None
    loader = DataLoader(data, batch_size=50, sampler=sampler, multiprocessing_context=context, **arguments)

    def on_epoch(epoch: int) -> None:
        if calls == "sampler":
            sampler.set_epoch(epoch)
        elif calls == "data" or (calls == "once" and epoch == 0):
            data.set_epoch(epoch)

    outcome = Outcome("views", f"epochs-{setup}")
    try:
        served = epochs_of(loader, data, VIEWS, on_epoch)
    except ConfigError as exc:
        outcome.detected = clear_error(exc, "epoch", "set_epoch")
        outcome.note = str(exc)[:200]
    else:
        frozen = int((served != expected_views(data, VIEWS)).any(axis=0).sum())
        outcome.recovered = frozen == 0 and (served >= 0).all()
        outcome.silent_wrong = frozen > 0
        outcome.note = f"{frozen} samples served another epoch's view"
    assert record(outcome).passed, outcome
    assert outcome.detected == refused, outcome


def test_batch_loader_without_set_loader_epoch_is_refused(cycle_store, digits_small):
    data = CachedDataset(digits_small, open_store(cycle_store), views=views_of(v2.RandomHorizontalFlip(0.5)))
    loader = batch_loader(data, batch_size=64, seed=0, num_workers=2, multiprocessing_context="fork")
    outcome = Outcome("views", "epochs-batch-loader-without-set-loader-epoch")
    try:
        for _ in range(2):
            for _ in loader:
                pass
    except ConfigError as exc:
        outcome.detected = clear_error(exc, "set_loader_epoch(loader, epoch)")
    assert record(outcome).passed, outcome


# ------------------------------------------------------------------------------------------------ CLI
def gamma_pipeline(tmp_path: Path, gamma: float) -> dict[str, Any]:
    steps = [{"name": "tests.faults.viewsteps:Gamma", "gamma": gamma}, {"name": "tests.faults.viewsteps:Darken"},
             {"name": "tests.faults.viewsteps:env_scaled_step"}]  # fmt: skip
    return with_changes(pipeline_dict(tmp_path), views={"count": VIEWS, "seed": 1, "pipeline": steps})


@pytest.fixture(scope="module")
def cli_built(tmp_path_factory) -> dict[str, Any]:
    raw = gamma_pipeline(tmp_path_factory.mktemp("cli"), 0.5)
    run_precompute(parse_pipeline(raw), progress=False)
    return raw


CLI_CASES = {  # name: (gamma, environment factor, expected refusal phrase or None for a clean run)
    "cli-own-transform-args": (2.0, "0.5", "other views"),
    "cli-hidden-setting": (0.5, "0.9", "per-view digest"),
    "cli-same-views-new-process": (0.5, "0.5", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_cli_refuses_other_views_without_a_traceback(case, cli_built, tmp_path, monkeypatch):
    gamma, factor, phrase = CLI_CASES[case]
    raw = gamma_pipeline(Path(cli_built["output_dir"]).parent, gamma)
    raw["student"]["train"]["stages"][0]["epochs"] = 1
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(FACTOR_VARIABLE, factor)
    result = kdcache("train", str(config), "--quiet")
    outcome = Outcome("views", case)
    clean = "Traceback" not in result.stderr
    if phrase is None:
        outcome.recovered = result.returncode == 0 and clean
    else:
        outcome.detected = result.returncode == 2 and clean and phrase in result.stderr
    assert record(outcome).passed, (outcome, result.returncode, result.stderr[-2000:])


# ------------------------------------------------------------------------------------------------ DDP
def ddp_worker(rank: int, rendezvous: str, store: str, factor: str, out: str) -> None:
    """One rank training from the store with views it builds itself; records what happened."""
    torch.set_num_threads(1)
    os.environ[FACTOR_VARIABLE] = factor
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    from kdcache.datasets import HDF5Dataset, Subset

    digits = Subset(HDF5Dataset(DIGITS, "train"), np.arange(300), tag="first-300")
    views = ViewTransform(count=VIEWS, seed=1, mean=MEAN, std=STD, pipeline=v2.Compose([Darken(0.5), env_scaled]))
    stages = [StageConfig(epochs=1, optimizer={"lr": 0.01}, losses=[{"name": "kd", "temperature": 4}])]

    def train() -> None:
        data = CachedDataset(digits, open_store(store), views=views, policy="random")
        fit(DigitsCNN(10, width=2), data, None, stages=stages, setup=LossSetup(10), batch_size=64, seed=0,
            world=World(rank, 2, rank), progress=False)  # fmt: skip

    record_rank_outcome(rank, out, train)


@pytest.mark.distributed
@pytest.mark.parametrize("factor", ["0.5", "0.9"], ids=["same-views", "hidden-setting"])
def test_every_ddp_rank_proves_its_views(factor, tmp_path, _trained_teacher, digits_small, monkeypatch):
    monkeypatch.setenv(FACTOR_VARIABLE, "0.5")
    views = ViewTransform(count=VIEWS, seed=1, mean=MEAN, std=STD, pipeline=v2.Compose([Darken(0.5), env_scaled]))
    store = str(tmp_path / "store.zarr")
    precompute(_trained_teacher, digits_small, store, targets=[build_target("logits", {})], views=views,
               teacher_name="cnn8", shard_samples=128, progress=False)  # fmt: skip
    mp.spawn(ddp_worker, args=(str(tmp_path / "rendezvous"), store, factor, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        outcome = Outcome("views", f"ddp-{factor}-rank{rank}")
        if factor == "0.5":
            outcome.recovered = found["type"] is None
        else:
            outcome.detected = found["type"] == ViewMismatchError.__name__ and "per-view digest" in found["message"]
        assert record(outcome).passed, (outcome, found)


def test_verify_recompute_reports_views_that_replay_differently(tmp_path, digits_small, monkeypatch):
    from kdcache.tools.recompute import recompute_check

    monkeypatch.setenv(FACTOR_VARIABLE, "0.5")
    store = echo_store(tmp_path / "store.zarr", digits_small, env_scaled)
    exact = recompute_check(open_store(store), nn.Flatten(), digits_small, views_of(env_scaled), teacher_name="echo",
                            pairs=64, progress=False)  # fmt: skip
    monkeypatch.setenv(FACTOR_VARIABLE, "0.9")
    drifted = recompute_check(open_store(store), nn.Flatten(), digits_small, views_of(env_scaled), teacher_name="echo",
                              pairs=64, progress=False)  # fmt: skip
    assert exact.passed and exact.input_mismatches == 0
    outcome = Outcome("views", "verify-recompute-hidden-setting")
    unchanged = drifted.targets["logits"].exact  # view 0 (the eval view) does not run the pipeline
    outcome.detected = not drifted.passed and drifted.input_mismatches == 64 - unchanged > 0
    assert record(outcome).passed, drifted


def test_a_second_teacher_given_other_inputs_is_refused_and_the_first_kept(tmp_path, digits_small, monkeypatch):
    monkeypatch.setenv(FACTOR_VARIABLE, "0.5")
    store = echo_store(tmp_path / "store.zarr", digits_small, env_scaled)
    before = open_store(store).teacher("echo").model_dump()
    monkeypatch.setenv(FACTOR_VARIABLE, "0.9")  # the second teacher's machine replays other pixels
    outcome = Outcome("views", "second-teacher-other-inputs")
    try:
        precompute(nn.Flatten(), digits_small, store, targets=[build_target("logits", {"dtype": "float32"})],
                   views=views_of(env_scaled), teacher_name="echo2", progress=False)  # fmt: skip
    except ViewMismatchError as exc:
        outcome.detected = clear_error(exc, store, "'echo2'", "samples/view_digest")
    cache = open_store(store)
    outcome.bytes_lost = cache.teacher("echo").model_dump() != before
    outcome.silent_wrong = "echo2" in cache.teachers and cache.manifest.teachers["echo2"].status == "complete"
    assert record(outcome).passed, outcome
