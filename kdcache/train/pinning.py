"""What a resumed run must share with the run that wrote its checkpoint: every setting that decides the remaining
steps, recorded as JSON in the checkpoint (``state["pinned"]``) and compared field by field on resume.

The record (:func:`run_record`) holds the seed, the global batch size and training-set size, the student's
architecture (module types and parameter/buffer shapes, not its weights), the task (:class:`~kdcache.losses.LossSetup`),
every stage with its epochs, optimiser and schedule settings and each loss term with its weight and resolved
parameters (defaults filled in, so writing a default out is no change), the view spec digest and view policy, and
the data's source: for a store, the digest of the manifest records the run reads and each teacher's fingerprint
digest and target kinds/parameters; for a live teacher, its weights digest and targets.

A difference is refused with :class:`~kdcache.errors.CheckpointError` naming each field (as a Python parameter or
as a pipeline key, whichever the caller speaks), both values and the fix. A few differences are safe to continue
with and are accepted when the caller lists them (:data:`OVERRIDES`), each logged as a warning. What does not
decide the steps (``num_workers``, ``progress``, ``device``, ``cache.ram_budget_mb``, logging) is not recorded;
the sampler still refuses a RAM budget that changes its block order (:mod:`kdcache.train.sampler`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Protocol

from torch import nn

from kdcache.errors import CheckpointError, ConfigError, Speaker, current_speaker
from kdcache.fingerprint import ABSENT, canonical_digest, json_differences, json_text
from kdcache.losses import LOSSES, LossSetup
from kdcache.store import StoreReader
from kdcache.targets import Ensemble
from kdcache.train.live import TargetSource
from kdcache.train.stages import StageConfig


class PinnedData(Protocol):
    """Training data as the record sees it (a :class:`~kdcache.train.ViewDataset`, which imports this module)."""

    def __len__(self) -> int: ...

    def resume_record(self) -> dict[str, Any]: ...


log = logging.getLogger(__name__)

#: The changes a resumed run may make when the caller names them (``allow_changes`` / ``--resume-allow``).
OVERRIDES = {
    "lr": "a stage's learning rate: the restored optimiser and schedule continue from the new base rate",
    "weight_decay": "a stage's weight decay: the restored optimiser uses the new value from the next step",
    "store": "the store's records (rebuilt or edited) while every teacher fingerprint and target stays the same",
    "unpinned": "a checkpoint written before kdcache pinned its run settings: only stages and sampler are checked",
}
_OVERRIDE_OF = (
    (re.compile(r"stages\[\d+\]\.optimizer\.lr"), "lr"),
    (re.compile(r"stages\[\d+\]\.optimizer\.weight_decay"), "weight_decay"),
    (re.compile(r"store"), "store"),
)

# What each record key is called by a Python caller of fit() and in a pipeline file.
_NAMES: dict[str, tuple[str, str]] = {
    "seed": ("fit(seed=)", "seed"),
    "batch_size": ("fit(batch_size=)", "student.train.batch_size"),
    "samples": ("len(train_data)", "data.max_train_samples"),
    "student": ("the student module's layers and shapes", "student.model"),
    "setup.num_classes": ("fit(setup=).num_classes", "data.num_classes"),
    "setup.ignore_index": ("fit(setup=).ignore_index", "data.ignore_index"),
    "setup.task": ("fit(setup=).task", "data.task"),
    "views": ("train_data's views (their spec digest)", "views"),
    "policy": ("train_data's policy", "views.policy"),
    "store": ("train_data's store (the manifest records it reads)", "cache.store"),
    "ensemble": ("CachedDataset(teacher=Ensemble(mode=))", "teacher.ensemble.mode"),
    "live_teacher": ("LiveTeacher(teacher, targets)", "teacher.model / teacher.checkpoint / cache.targets"),
}
_TEACHER_NAMES: dict[str, tuple[str, str]] = {
    "name": ("CachedDataset(teacher=)", "teacher.name / teacher.ensemble.members"),
    "fingerprint": ("the teacher's fingerprint in train_data's store", "teacher.model / teacher.checkpoint"),
    "targets": ("CachedDataset(targets=)", "cache.targets"),
}


def check_overrides(allowed: tuple[str, ...]) -> None:
    """Refuse an override name kdcache does not know, listing the valid ones."""
    if unknown := sorted(set(allowed) - set(OVERRIDES)):
        valid = "; ".join(f"{k}: {v}" for k, v in OVERRIDES.items())
        raise ConfigError(f"unknown resume override(s) {unknown}; the changes a resume may accept are {valid}")


def run_record(
    student: nn.Module,
    train_data: PinnedData,
    *,
    stages: list[StageConfig],
    setup: LossSetup,
    batch_size: int,
    seed: int,
    targets: TargetSource,
) -> dict[str, Any]:
    """Every setting of a :func:`~kdcache.train.fit` call that decides its steps, as it reads back from JSON (so a
    fresh record compares equal to the one a checkpoint stored)."""
    record: dict[str, Any] = {
        "seed": seed,
        "batch_size": batch_size,
        "samples": len(train_data),
        "student": architecture_digest(student),
        "setup": {"num_classes": setup.num_classes, "ignore_index": setup.ignore_index, "task": setup.task},
        "stages": [stage_record(stage) for stage in stages],
    }
    record |= train_data.resume_record()
    resume_record = getattr(targets, "resume_record", None)  # a LiveTeacher: online KD
    if resume_record is not None:
        record |= resume_record()
    return json.loads(json.dumps(record))


def architecture_digest(model: nn.Module) -> str:
    """SHA-256 of a model's structure: each module's path and class, each parameter's and buffer's name, shape and
    dtype. Weights do not enter, so the digest is the same before and after training."""
    modules = [[name, type(m).__qualname__] for name, m in model.named_modules()]
    tensors = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    return canonical_digest({"modules": modules, "tensors": tensors})


def stage_record(stage: StageConfig) -> dict[str, Any]:
    """A stage as recorded: its settings, with each loss term's parameters resolved (defaults filled in)."""
    losses = [
        {
            "name": loss.name,
            "weight": loss.weight,
            **LOSSES.get(loss.name).Params.model_validate(loss.params).model_dump(mode="json"),
        }
        for loss in stage.losses
    ]
    return stage.model_dump(mode="json", exclude={"losses"}) | {"losses": losses}


def source_record(cache: StoreReader, teacher: str | Ensemble, targets: list[str]) -> dict[str, Any]:
    """A store as one training run reads it: the digest of the manifest records it depends on (all but those of
    teachers it does not read, so caching another teacher into the store later changes nothing), each teacher's
    fingerprint digest and its targets' kinds and parameters, and the ensemble mode."""
    members = teacher.members if isinstance(teacher, Ensemble) else (teacher,)
    others = [m for m in cache.manifest.teachers if m not in members]
    summaries = ("records", "metadata.zarr.json")  # the list of records, the root group's list of teachers
    read = {
        key: digest
        for key, digest in cache.manifest.sections.items()
        if key not in summaries and not any(_of_teacher(key, m) for m in others)
    }
    teachers = []
    for member in members:
        record = cache.teacher(member)
        found = {name: {"kind": record.targets[name].kind, "params": record.targets[name].params} for name in targets}
        teachers.append({"name": member, "fingerprint": record.fingerprint.get("digest"), "targets": found})
    mode = teacher.mode if isinstance(teacher, Ensemble) else None
    return {"teachers": teachers, "ensemble": mode, "store": canonical_digest(read)}


def _of_teacher(section: str, teacher: str) -> bool:
    return section.startswith((f"teachers.{teacher}.", f"metadata.teachers/{teacher}/"))


def check_record(saved: dict[str, Any] | None, now: dict[str, Any], *, path: str, allowed: tuple[str, ...]) -> None:
    """Refuse to resume from checkpoint ``path`` (pinned record ``saved``) into a run whose record is ``now``, unless
    every difference is one the caller ``allowed``; each allowed difference is logged as a warning. Fields are named
    as the caller writes them (:func:`kdcache.errors.current_speaker`)."""
    speaks = current_speaker()
    if saved is None:
        if "unpinned" not in allowed:
            raise CheckpointError(
                f"cannot resume from {path!r}: it was written before kdcache recorded the settings of a run (seed, "
                "store and teachers, losses, optimiser, views, student), so this run cannot be shown to be the one it "
                f"continues. Start a new run ({_new_run(speaks)}), or resume anyway with only stages and sampler "
                f"checked ({_allow_text('unpinned', speaks)}, logged)"
            )
        log.warning("resuming from %s, written before run settings were pinned: only stages and sampler checked", path)
        return
    refused: list[tuple[str, Any, Any, str | None]] = []
    accepted: list[tuple[str, Any, Any, str]] = []
    for field, old, new in json_differences(saved, now):
        override = next((name for pattern, name in _OVERRIDE_OF if pattern.fullmatch(field)), None)
        if override is not None and override in allowed:
            accepted.append((field_name(field, speaks), old, new, override))
        else:
            refused.append((field_name(field, speaks), old, new, override))
    if refused:
        raise CheckpointError(_refusal(path, refused, speaks))
    for name, old, new, override in accepted:
        log.warning(
            "resuming from %s with %s: checkpoint %s, now %s (%s): %s",
            path,
            name,
            _value(old),
            _value(new),
            _allow_text(override, speaks),
            OVERRIDES[override],
        )


def field_name(field: str, speaks: Speaker) -> str:
    """A record path (``stages[0].optimizer.lr``, ``teachers[0].fingerprint``) as the caller writes the setting."""
    parts = re.match(r"([a-z_]+)(.*)", field)
    if parts is None:  # not a record path kdcache writes: shown as it is
        return field
    head, rest = parts.groups()
    if head == "stages":
        return f"{'stages' if speaks == 'python' else 'student.train.stages'}{rest}"
    teacher = re.match(r"\[(\d+)\]\.?([a-z_]*)\.?([^.]*)", rest) if head == "teachers" else None
    if teacher is not None:  # teachers[0].fingerprint, teachers[0].targets.logits.params.k, teachers[1]
        index, key, target = teacher.groups()
        where = f"cached teacher #{int(index) + 1}" + (f", target {target}" if target else "")
        return f"{_TEACHER_NAMES[key or 'name'][speaks == 'pipeline']} ({where})"
    known = _NAMES.get(field) or _NAMES.get(head)
    return known[speaks == "pipeline"] if known else field


def _refusal(path: str, refused: list[tuple[str, Any, Any, str | None]], speaks: Speaker) -> str:
    shown = "; ".join(f"{name}: checkpoint {_value(old)}, now {_value(new)}" for name, old, new, _ in refused[:4])
    more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
    fix = f"resume with the original setting{'s' if len(refused) > 1 else ''}, or start a new run ({_new_run(speaks)})"
    if all(override for *_, override in refused):  # every difference is one a resume may accept
        allow = ", ".join(_allow_text(o, speaks) for o in sorted({o for *_, o in refused if o is not None}))
        fix += f", or accept the change ({allow}, logged)"
    return (
        f"cannot resume from {path!r}: this run differs from the one that wrote the checkpoint in {shown}{more}. "
        f"A resumed run must be the run it continues: {fix}"
    )


def _allow_text(override: str | None, speaks: Speaker) -> str:
    if speaks == "python":
        return f"Checkpointing(..., allow_changes=({override!r},))"
    return f"--resume-allow {override}"


def _new_run(speaks: Speaker) -> str:
    if speaks == "python":
        return "a new Checkpointing path, or resume=False"
    return "another output_dir, or without --resume"


def _value(value: Any) -> str:
    """A recorded value for a message: digests cut to 12 characters."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    return "absent" if value is ABSENT else json_text(value, limit=80)
