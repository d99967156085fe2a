"""Resume: a resumed run is the run it continues.

Every setting a training checkpoint pins (:mod:`kdcache.train.pinning`) is changed, one at a time, between the run
that wrote the checkpoint and the run that resumes from it: through ``fit`` (the message names Python parameters)
and through ``kdcache train --resume`` (pipeline keys and flags). Each change is refused with a CheckpointError
naming the field and both values before a step is trained, or, for the changes a resume may accept, continued with
the explicit override, logged, with the change in effect. A change that does not decide the steps (another teacher
cached into the same store) resumes to the uninterrupted run's weights, bit for bit.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from kdcache.datasets import Subset
from kdcache.errors import CheckpointError, KdcacheError
from kdcache.losses import LossSetup
from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import checkpoint_path, run_precompute
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import Ensemble, build_target
from kdcache.train import CachedDataset, Checkpointing, LiveTeacher, StageConfig, ViewDataset, batch_targets, fit
from kdcache.train.statefile import load_state, save_state
from kdcache.views import ViewTransform
from tests.conftest import MEAN, STD, pipeline_dict
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import SHARD, targets
from tests.helpers import SnapshotAt, kdcache

VIEWS = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
STAGE = StageConfig(
    name="kd",
    epochs=2,
    optimizer={"lr": 0.01},
    losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
)


def stage(**changes: Any) -> list[StageConfig]:
    """The run's one stage with ``changes`` (``optimizer`` changes merge into its optimiser)."""
    if "optimizer" in changes:
        changes["optimizer"] = STAGE.optimizer.model_copy(update=changes["optimizer"])
    return [StageConfig.model_validate(STAGE.model_dump() | changes)]


@dataclass(frozen=True)
class Run:
    """The arguments of one ``fit`` call; ``replace(run, ...)`` is the same run with one setting changed."""

    data: Any
    stages: list[StageConfig]
    targets: Any = batch_targets
    setup: LossSetup = LossSetup(10)
    batch_size: int = 64
    seed: int = 0
    width: int = 2

    def fit(self, checkpoint: Checkpointing, targets: Any = None) -> torch.nn.Module:
        torch.manual_seed(0)
        student = DigitsCNN(10, width=self.width)
        fit(student, self.data, None, stages=self.stages, setup=self.setup, batch_size=self.batch_size,
            seed=self.seed, targets=targets or self.targets, checkpoint=checkpoint, progress=False)  # fmt: skip
        return student


@dataclass
class Base:
    """A run, the mid-run checkpoint a crash at step 8 would leave, and the uninterrupted run's final weights."""

    run: Run
    snapshot: Path
    reference: dict[str, torch.Tensor]

    def copy(self, tmp_path: Path) -> Path:
        return Path(shutil.copy(self.snapshot, tmp_path / "resume.safetensors"))


def base_run(run: Run, tmp: Path) -> Base:
    """5 steps per epoch, a checkpoint every 2: step 8 begins with the one taken after epoch 1, step 2."""
    path, snapshot = tmp / "run.safetensors", tmp / "snapshot.safetensors"
    student = run.fit(Checkpointing(path, every_steps=2), targets=SnapshotAt(path, snapshot, at=8, source=run.targets))
    return Base(run, snapshot, {k: v.clone() for k, v in student.state_dict().items()})


@pytest.fixture(scope="module")
def store(tmp_path_factory, clean_store) -> Path:
    return Path(shutil.copytree(clean_store, tmp_path_factory.mktemp("resume") / "store.zarr"))


@pytest.fixture(scope="module")
def cached(tmp_path_factory, store, digits_small) -> Base:
    """Cached KD from teacher t8; afterwards teacher u8 is cached into the same store (which pins nothing)."""
    data = CachedDataset(digits_small, open_store(str(store)), teacher="t8", targets=["logits"], views=VIEWS)
    base = base_run(Run(data, stage()), tmp_path_factory.mktemp("cached"))
    torch.manual_seed(8)
    precompute(DigitsCNN(10, width=8).eval(), digits_small, store, targets=targets(), views=VIEWS, num_classes=10,
               teacher_name="u8", shard_samples=SHARD, progress=False)  # fmt: skip
    fresh = CachedDataset(digits_small, open_store(str(store)), teacher="t8", targets=["logits"], views=VIEWS)
    return replace(base, run=replace(base.run, data=fresh))


@pytest.fixture(scope="module")
def online(tmp_path_factory, digits_small, _trained_teacher) -> Base:
    """Online KD from a live teacher on plain views."""
    live = LiveTeacher(_trained_teacher, [build_target("logits", {})], "cpu")
    return base_run(Run(ViewDataset(digits_small, VIEWS), stage(), targets=live), tmp_path_factory.mktemp("online"))


def with_data(base: Base, store: Path | str, teacher: Any = "t8", names: tuple[str, ...] = ("logits",)) -> Run:
    data = CachedDataset(base.run.data.dataset, open_store(str(store)), teacher=teacher, targets=list(names),
                         views=VIEWS)  # fmt: skip
    return replace(base.run, data=data)


# case: (the changed run, the words the refusal must contain: the field as fit() names it and both values)
CACHED_CASES = {
    "seed": (lambda b, f: replace(b.run, seed=1), "fit(seed=): checkpoint 0, now 1"),
    "batch-size": (lambda b, f: replace(b.run, batch_size=32), "fit(batch_size=): checkpoint 64, now 32"),
    "student-architecture": (lambda b, f: replace(b.run, width=4), "the student module's layers and shapes: checkpoint"),
    "ignore-index": (lambda b, f: replace(b.run, setup=LossSetup(10, ignore_index=255)), "fit(setup=).ignore_index: checkpoint -100, now 255"),
    "task": (lambda b, f: replace(b.run, setup=LossSetup(10, task="segmentation")), 'fit(setup=).task: checkpoint "classification", now "segmentation"'),
    "stage-epochs": (lambda b, f: replace(b.run, stages=stage(epochs=3)), "stages[0].epochs: checkpoint 2, now 3"),
    "stage-name": (lambda b, f: replace(b.run, stages=stage(name="main")), 'stages[0].name: checkpoint "kd", now "main"'),
    "stage-added": (lambda b, f: replace(b.run, stages=[*stage(), *stage(name="more")]), "stages[1]: checkpoint absent, now {"),
    "lr": (lambda b, f: replace(b.run, stages=stage(optimizer={"lr": 0.05})), "stages[0].optimizer.lr: checkpoint 0.01, now 0.05"),
    "weight-decay": (lambda b, f: replace(b.run, stages=stage(optimizer={"weight_decay": 1e-4})), "stages[0].optimizer.weight_decay: checkpoint 0.0, now 0.0001"),
    "optimizer": (lambda b, f: replace(b.run, stages=stage(optimizer={"name": "adamw"})), 'stages[0].optimizer.name: checkpoint "adam", now "adamw"'),
    "momentum": (lambda b, f: replace(b.run, stages=stage(optimizer={"momentum": 0.5})), "stages[0].optimizer.momentum: checkpoint 0.9, now 0.5"),
    "schedule": (lambda b, f: replace(b.run, stages=stage(optimizer={"schedule": "constant"})), 'stages[0].optimizer.schedule: checkpoint "cosine", now "constant"'),
    "loss-weight": (lambda b, f: replace(b.run, stages=stage(losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.5, "temperature": 4}])), "stages[0].losses[1].weight: checkpoint 0.9, now 0.5"),
    "temperature": (lambda b, f: replace(b.run, stages=stage(losses=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 2}])), "stages[0].losses[1].temperature: checkpoint 4.0, now 2.0"),
    "loss-removed": (lambda b, f: replace(b.run, stages=stage(losses=[{"name": "ce", "weight": 0.1}])), 'stages[0].losses[1]: checkpoint {"name": "kd"'),
    "freeze": (lambda b, f: replace(b.run, stages=stage(freeze=["layer1"])), 'stages[0].freeze[0]: checkpoint absent, now "layer1"'),
    "policy": (lambda b, f: replace(b.run, data=CachedDataset(b.run.data.dataset, open_store(str(f["store"])), teacher="t8", targets=["logits"], views=VIEWS, policy="random")), 'train_data\'s policy: checkpoint "cycle", now "random"'),
    "teacher-name": (lambda b, f: with_data(b, f["store"], teacher="u8"), 'CachedDataset(teacher=) (cached teacher #1): checkpoint "t8", now "u8"'),
    "teacher-weights": (lambda b, f: with_data(b, f["other_store"]), "the teacher's fingerprint in train_data's store (cached teacher #1): checkpoint"),
    "targets": (lambda b, f: with_data(b, f["store"], names=("logits", "features/layer2")), "(cached teacher #1, target features/layer2): checkpoint absent, now {"),
    "ensemble": (lambda b, f: with_data(b, f["store"], teacher=Ensemble(("t8", "u8"))), 'CachedDataset(teacher=Ensemble(mode=)): checkpoint null, now "logits"'),
    "store-rebuilt": (lambda b, f: with_data(b, f["rebuilt"]), "train_data's store (the manifest records it reads): checkpoint"),
}  # fmt: skip
ONLINE_CASES = {
    "views": (lambda b: replace(b.run, data=ViewDataset(b.run.data.dataset, ViewTransform(count=1, seed=0, mean=MEAN, std=(0.5,)))), "train_data's views (their spec digest): checkpoint"),
    "policy-fresh": (lambda b: replace(b.run, data=ViewDataset(b.run.data.dataset, VIEWS, policy="fresh")), 'train_data\'s policy: checkpoint "cycle", now "fresh"'),
    "samples": (lambda b: replace(b.run, data=ViewDataset(Subset(b.run.data.dataset, np.arange(256), tag="s"), VIEWS)), "len(train_data): checkpoint 300, now 256"),
    "live-teacher": (lambda b: replace(b.run, targets=LiveTeacher(DigitsCNN(10, width=4), [build_target("logits", {})], "cpu")), "LiveTeacher(teacher, targets): checkpoint"),
}  # fmt: skip


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, _trained_teacher, digits_small) -> Path:
    """The suite's store rebuilt from the same teacher in shards of 128: other records, the same teacher and targets."""
    path = tmp_path_factory.mktemp("rebuilt") / "store.zarr"
    precompute(_trained_teacher, digits_small, path, targets=targets(), views=VIEWS, num_classes=10,
               teacher_name="t8", shard_samples=128, progress=False)  # fmt: skip
    return path


def refused(name: str, run: Run, path: Path, phrase: str, *also: str) -> Outcome:
    """Resume ``run`` from ``path``: detected when a CheckpointError names ``phrase`` (and ``also``); silent wrong
    when it trained on (the checkpoint was rewritten)."""
    before = path.read_bytes()
    outcome = Outcome("resume", name)
    try:
        run.fit(Checkpointing(path, every_steps=2, resume=True))
    except KdcacheError as exc:
        outcome.detected = isinstance(exc, CheckpointError) and clear_error(exc, phrase, *also)
        outcome.note = str(exc)
    outcome.silent_wrong = path.read_bytes() != before
    return record(outcome)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CACHED_CASES))
def test_a_changed_setting_of_a_cached_run_is_refused(tmp_path, cached, store, other_store, rebuilt, case):
    change, phrase = CACHED_CASES[case]
    run = change(cached, {"store": store, "other_store": other_store, "rebuilt": rebuilt})
    outcome = refused(f"fit/{case}", run, cached.copy(tmp_path), phrase, "new Checkpointing path")
    assert outcome.passed, outcome


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ONLINE_CASES))
def test_a_changed_setting_of_an_online_run_is_refused(tmp_path, online, case):
    change, phrase = ONLINE_CASES[case]
    outcome = refused(f"fit/{case}", change(online), online.copy(tmp_path), phrase, "new Checkpointing path")
    assert outcome.passed, outcome


def test_the_refusal_offers_the_override_only_where_it_is_safe(tmp_path, cached):
    lr = CACHED_CASES["lr"][0](cached, {})
    with pytest.raises(CheckpointError) as offered:
        lr.fit(Checkpointing(cached.copy(tmp_path), resume=True))
    temperature = CACHED_CASES["temperature"][0](cached, {})
    with pytest.raises(CheckpointError) as refused_outright:
        temperature.fit(Checkpointing(cached.copy(tmp_path), resume=True))
    assert "or accept the change (Checkpointing(..., allow_changes=('lr',)), logged)" in str(offered.value)
    assert "allow_changes" not in str(refused_outright.value)


def same_weights(student: torch.nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(student.state_dict()[k], v) for k, v in reference.items())


@pytest.mark.slow
@pytest.mark.parametrize(("change", "value"), [("lr", 0.05), ("weight_decay", 1e-4)])
def test_an_allowed_optimiser_change_is_logged_and_takes_effect(tmp_path, cached, caplog, change, value):
    path = cached.copy(tmp_path)
    run = replace(cached.run, stages=stage(optimizer={change: value}))
    with caplog.at_level(logging.WARNING, logger="kdcache.train.pinning"):
        student = run.fit(Checkpointing(path, every_steps=2, resume=True, allow_changes=(change,)))
    state = load_state(path)
    group, base_lrs = state["optimizer"]["param_groups"][0], state["scheduler"]["base_lrs"]
    expected = {"lr": 0.01, "weight_decay": 0.0} | {change: value}
    took = group["initial_lr"] == base_lrs[0] == expected["lr"] and group["weight_decay"] == expected["weight_decay"]
    logged = (
        f"stages[0].optimizer.{change}: checkpoint" in caplog.text and f"allow_changes=('{change}',)" in caplog.text
    )
    outcome = record(Outcome("resume", f"fit/{change}-allowed", recovered=took and logged))
    outcome.silent_wrong = same_weights(student, cached.reference)  # the change was ignored
    assert outcome.passed, (outcome, caplog.text)


@pytest.mark.slow
def test_a_teacher_cached_into_the_same_store_changes_nothing(tmp_path, cached):
    student = cached.run.fit(Checkpointing(cached.copy(tmp_path), every_steps=2, resume=True))
    outcome = record(Outcome("resume", "fit/other-teacher-added", recovered=same_weights(student, cached.reference)))
    assert outcome.passed, outcome


@pytest.mark.slow
def test_a_rebuilt_store_resumes_only_with_the_store_override(tmp_path, cached, rebuilt, caplog):
    run = with_data(cached, rebuilt)
    with caplog.at_level(logging.WARNING, logger="kdcache.train.pinning"):
        student = run.fit(Checkpointing(cached.copy(tmp_path), every_steps=2, resume=True, allow_changes=("store",)))
    close = all(torch.allclose(student.state_dict()[k], v, atol=1e-4) for k, v in cached.reference.items())
    outcome = record(Outcome("resume", "fit/store-allowed", recovered=close and "train_data's store" in caplog.text))
    assert outcome.passed, (outcome, caplog.text)


@pytest.mark.slow
def test_a_checkpoint_from_before_pinning_is_refused_unless_allowed(tmp_path, cached, caplog):
    legacy = tmp_path / "legacy.safetensors"
    state = load_state(cached.snapshot)
    del state["pinned"]
    save_state(legacy, state)
    refusal = refused("fit/unpinned", cached.run, legacy, "written before kdcache recorded the settings",
                      "allow_changes=('unpinned',)")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="kdcache.train.pinning"):
        student = cached.run.fit(Checkpointing(legacy, every_steps=2, resume=True, allow_changes=("unpinned",)))
    recovered = same_weights(student, cached.reference) and "only stages and sampler checked" in caplog.text
    outcome = record(Outcome("resume", "fit/unpinned-allowed", recovered=recovered))
    assert refusal.passed and outcome.passed, (refusal, outcome)


def test_an_unknown_override_is_refused():
    with pytest.raises(KdcacheError, match=r"unknown resume override\(s\) \['temperature'\].*lr: a stage's"):
        Checkpointing(Path("x"), resume=True, allow_changes=("temperature",))


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> dict[str, Any]:
    """A pipeline trained through ``kdcache train`` until SIGKILL after step 5 (checkpoint after step 4), and a
    second store made by another teacher (cnn8) to switch to."""
    tmp = tmp_path_factory.mktemp("cli")
    other = pipeline_dict(
        tmp / "other", teacher__name="cnn8", teacher__model={"arch": "digits-cnn", "args": {"width": 8}}
    )
    run_precompute(parse_pipeline(other), progress=False)
    raw = pipeline_dict(tmp)
    run_precompute(parse_pipeline(raw), progress=False)
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    killed = kdcache("train", str(path), "--quiet", "--set", "student.checkpoint.every_steps=2",
                     "--set", "student.checkpoint.stop_after_steps=5")  # fmt: skip
    checkpoint = checkpoint_path(parse_pipeline(raw), "cached")
    assert killed.returncode != 0 and load_state(checkpoint)["sampler"]["step"] == 4, killed.stderr
    return {"pipeline": path, "checkpoint": checkpoint, "other": parse_pipeline(other)}


def cli_refused(name: str, cli_run: dict[str, Any], sets: list[str], *phrases: str) -> Outcome:
    before = cli_run["checkpoint"].read_bytes()
    result = kdcache("train", str(cli_run["pipeline"]), "--quiet", "--resume", *(a for s in sets for a in ("--set", s)))
    outcome = Outcome("resume", name, note=result.stderr[-600:])
    outcome.detected = result.returncode == 2 and "Traceback" not in result.stderr
    outcome.detected = outcome.detected and all(p in result.stderr for p in ("kdcache: error: cannot resume", *phrases))
    outcome.silent_wrong = cli_run["checkpoint"].read_bytes() != before
    return record(outcome)


@pytest.mark.slow
def test_the_cli_refuses_a_changed_temperature_by_its_key(cli_run):
    outcome = cli_refused("cli/temperature", cli_run, ["student.train.stages.0.losses.1.temperature=2"],
                          "student.train.stages[0].losses[1].temperature: checkpoint 4.0, now 2.0", "another output_dir")  # fmt: skip
    assert outcome.passed and "--resume-allow" not in outcome.note, outcome


@pytest.mark.slow
def test_the_cli_refuses_another_store_and_teacher(cli_run):
    other = cli_run["other"]
    sets = [f"cache.store={other.store_url}", "teacher.name=cnn8", "teacher.model.args.width=8",
            f"teacher.checkpoint={other.teacher_checkpoint}"]  # fmt: skip
    outcome = cli_refused("cli/store-and-teacher", cli_run, sets, "cache.store: checkpoint",
                          'teacher.name / teacher.ensemble.members (cached teacher #1): checkpoint "cnn16", now "cnn8"')  # fmt: skip
    assert outcome.passed, outcome


@pytest.mark.slow
def test_the_cli_continues_with_an_allowed_lr_and_says_so(cli_run, tmp_path):
    """On a copy of the run (the other CLI cases must find the checkpoint as the killed run left it)."""
    raw = yaml.safe_load(cli_run["pipeline"].read_text())
    out = shutil.copytree(raw["output_dir"], tmp_path / "run")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({**raw, "output_dir": str(out)}))
    refusal = kdcache(
        "train", str(pipeline), "--quiet", "--resume", "--set", "student.train.stages.0.optimizer.lr=0.05"
    )
    allowed = kdcache("train", str(pipeline), "--quiet", "--resume", "--resume-allow", "lr",
                      "--set", "student.train.stages.0.optimizer.lr=0.05")  # fmt: skip
    group = load_state(checkpoint_path(parse_pipeline(yaml.safe_load(pipeline.read_text())), "cached"))
    group = group["optimizer"]["param_groups"][0]
    detected = refusal.returncode == 2 and "or accept the change (--resume-allow lr, logged)" in refusal.stderr
    warned = "student.train.stages[0].optimizer.lr: checkpoint 0.01, now 0.05 (--resume-allow lr)" in allowed.stderr
    outcome = record(Outcome("resume", "cli/lr-allowed", detected=detected,
                             recovered=allowed.returncode == 0 and warned and group["initial_lr"] == 0.05))  # fmt: skip
    assert outcome.passed, (outcome, refusal.stderr, allowed.stderr)
