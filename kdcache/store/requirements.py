"""Is this store right for this run? One call (:meth:`StoreReader.require <kdcache.store.StoreReader.require>`) that every path
uses — the CLI, the Python API, schemes, dask workers, ``verify`` — so none of them can skip a check.

The caller states what it will train with as plain facts (fingerprints, view spec, class count, teacher names and
targets); the store compares them with its manifest and refuses with an error that names both sides and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kdcache.errors import ConfigError, StoreIncompleteError, StoreMismatchError, say
from kdcache.fingerprint import describe_difference, json_differences, named_along
from kdcache.store.manifest import Manifest, TeacherRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirements:
    """What a run needs of a store. Every field left ``None`` (or empty) is not checked.

    * ``teachers`` must exist and be complete (with the sample arrays) and hold every target of ``targets``;
    * ``dataset`` (a dataset fingerprint) and ``views`` (a view spec) must match what the store was built from;
    * ``num_classes``: the classes of every teacher's ``logits`` (the student's output width);
    * ``teacher_spec`` / ``teacher_state``: the architecture spec and state-dict digest the (single) teacher must
      have been made with; ``allow_teacher_mismatch`` downgrades a difference to a logged warning.
    """

    teachers: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    dataset: dict[str, Any] | None = None
    views: dict[str, Any] | None = None
    num_classes: int | None = None
    teacher_spec: dict[str, Any] | None = None
    teacher_state: str | None = None
    allow_teacher_mismatch: bool = False


def teacher_record(manifest: Manifest, url: str, name: str | None) -> TeacherRecord:
    """The record of teacher ``name`` (or of the only teacher when ``name`` is None)."""
    names = sorted(manifest.teachers)
    if name is None:
        if len(names) != 1:
            raise StoreMismatchError(
                f"store {url!r} holds teachers {names}; name the one to use ({say('teacher=', 'teacher.name')})"
            )
        name = names[0]
    if name not in manifest.teachers:
        raise StoreMismatchError(
            f"store {url!r} has no teacher {name!r}; it holds {names}. Name one of them "
            f"({say('teacher=', 'teacher.name, or --set teacher.name=NAME')}), or cache this teacher first"
        )
    return manifest.teachers[name]


def check(manifest: Manifest, url: str, req: Requirements) -> None:
    """Raise the first way the store at ``url`` does not meet ``req``."""
    for name in req.teachers:
        require_complete(manifest, url, name)
        require_targets(manifest, url, name, req.targets)
        if req.num_classes is not None:
            _require_classes(manifest, url, name, req.num_classes)
    if req.teacher_spec is not None or req.teacher_state is not None:
        _require_teacher(manifest, url, req)
    if req.dataset is not None:
        require_dataset(manifest, url, req.dataset)
    if req.views is not None:
        require_views(manifest, url, req.views)


def require_complete(manifest: Manifest, url: str, teacher: str) -> None:
    record = teacher_record(manifest, url, teacher)
    if record.status != "complete" or manifest.samples.status != "complete":
        raise StoreIncompleteError(
            f"store {url!r}: teacher {teacher!r} is {record.status} ({len(record.shards)}/{manifest.num_shards()} "
            "shards committed). Finish it with `kdcache precompute` (it resumes where it stopped)"
        )


def require_targets(manifest: Manifest, url: str, teacher: str, targets: tuple[str, ...]) -> None:
    held = teacher_record(manifest, url, teacher).targets
    if missing := sorted(set(targets) - set(held)):
        raise StoreMismatchError(
            f"store {url!r}, teacher {teacher!r} has no target(s) {missing}; it holds {sorted(held)}. "
            + say(
                "Cache them: precompute(..., targets=[...])", "Add them to cache.targets and run `kdcache precompute`"
            )
        )


def _require_classes(manifest: Manifest, url: str, teacher: str, num_classes: int) -> None:
    logits = teacher_record(manifest, url, teacher).targets.get("logits")
    if logits is None:
        return
    classes = next(iter(logits.arrays.values())).shape[2]
    if classes != num_classes:
        raise StoreMismatchError(
            f"store {url!r}: teacher {teacher!r} has {classes} classes, but the student is trained for {num_classes} "
            f"({say('num_classes=', 'data.num_classes')}). Fix the class count or use a store made for this task"
        )


def _require_teacher(manifest: Manifest, url: str, req: Requirements) -> None:
    """The store's teacher was made by the expected architecture and (when known) weights."""
    if len(req.teachers) > 1:
        raise ConfigError(f"the teacher's identity is checked for one teacher; {list(req.teachers)} are several")
    (name,) = req.teachers or (None,)
    found = teacher_record(manifest, url, name).fingerprint
    problems = []
    same_weights = req.teacher_state is not None and req.teacher_state == found.get("state_sha256")
    # the weights' digest covers every tensor's name, shape, dtype and bytes: when it matches, an architecture
    # description of the other form (a Python run records the class, a pipeline the arch and args) is no evidence
    # against it; two pipeline descriptions that differ still are
    other_form = set(found.get("spec") or {}) != set(req.teacher_spec or {})
    if req.teacher_spec is not None and found.get("spec") != req.teacher_spec and not (same_weights and other_form):
        problems.append(f"architecture {describe_difference(req.teacher_spec, found.get('spec') or {})}")
    if req.teacher_state is not None and req.teacher_state != found.get("state_sha256"):
        problems.append(
            f"weights: the checkpoint hashes to {req.teacher_state[:12]}…, the store's teacher to "
            f"{str(found.get('state_sha256'))[:12]}…"
        )
    if not problems:
        return
    message = f"store {url!r}: teacher {name!r} was not made by this run's teacher (" + "; ".join(problems) + ")"
    if req.allow_teacher_mismatch:
        allowed = say("allow_teacher_mismatch", "cache.allow_teacher_mismatch")
        log.warning("%s; training from the stored outputs because %s is set", message, allowed)
        return
    raise StoreMismatchError(
        f"{message}. Cache this teacher first ({say('precompute(...)', '`kdcache precompute`')}; under another "
        f"teacher name to keep the old one), or train from the stored outputs anyway ("
        + say("without teacher_checkpoint=", "cache.allow_teacher_mismatch: true")
        + ", logged)"
    )


def require_dataset(manifest: Manifest, url: str, fingerprint: dict[str, Any]) -> None:
    """Refuse a store made from other data: length first (the commonest mistake), then every other fact."""
    found = manifest.dataset
    if found.get("length") != fingerprint.get("length"):
        raise StoreMismatchError(
            f"store {url!r} holds {found.get('length')} samples but the training set has "
            f"{fingerprint.get('length')}. Rebuild the store for this dataset "
            f"({say('precompute(...)', '`kdcache precompute`')}) or use the store made from it ({_store_setting()})"
        )
    if found != fingerprint:  # every fact, not only the digest: a fact edited beside a stale digest is a difference
        raise StoreMismatchError(
            f"store {url!r} was built from a different dataset: {describe_difference(fingerprint, found)}. "
            f"Rebuild the store for this dataset or use the store made from it ({_store_setting()})"
        )


def require_views(manifest: Manifest, url: str, views: dict[str, Any]) -> None:
    found = manifest.views
    if found != views:
        raise StoreMismatchError(
            f"store {url!r} was cached with other views: {describe_difference(views, found)}{_in_step(found, views)}. "
            f"Pass the views the store was cached with ({say('views=', 'the views: section')}) or "
            "rebuild the store with these"
        )


def _in_step(store: dict[str, Any], now: dict[str, Any]) -> str:
    """Which step (and function) the first difference lies in, in Python terms, when it lies inside one."""
    path = next(iter(json_differences(store, now)), ("", None, None))[0]
    names = named_along(store, path) or named_along(now, path)
    if not names:
        return ""
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    code = leaf in ("source", "bytecode", "consts", "names")
    what = f"the code of function {names[-1]} differs" if code else f"in {' > '.join(names)}"
    return f" ({what})"


def _store_setting() -> str:
    """Where the caller names the store it trains from."""
    return say("the cache= argument", "cache.store")
