"""Stage two's cached training data for every pipeline method: the split joined with the store's targets, refused
unless the store fits the pipeline.

The ``distill`` method and the schemes (:mod:`kdcache.pipeline.schemes`) both read their stores through
:func:`cached_data`, so both get the same checks: the pipeline's cache settings (shard cache, RAM budget), its view
policy, the class count, and the teacher's architecture (and, when known, its weights) against the store's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcache.checkpoint import load_state_dict, state_digest
from kdcache.datasets import SampleDataset
from kdcache.datasets.tokenizer import load_tokenizer
from kdcache.errors import ConfigError
from kdcache.pipeline.build import load_split, view_transform
from kdcache.pipeline.config import DistillConfig, RunConfig
from kdcache.pipeline.tokens import check_language_model, student_tokenizer
from kdcache.store import Requirements, StoreReader, open_store
from kdcache.targets import Ensemble
from kdcache.train import CachedDataset, StoredTokens, require_fresh_teacher, require_token_alignment
from kdcache.train.tokens import require_store_tokenizer


@dataclass(frozen=True)
class StoredTeacher:
    """The teacher whose cached targets a run trains from, and what the store must have recorded for it: its
    architecture ``spec`` (``None`` for an ensemble, whose members each have their own), the ``checkpoint`` whose
    weights it was cached from (checked when the file is on disk) and the ``directory`` of a transformers teacher
    used as it is (every file checked when it is on disk)."""

    name: str | Ensemble
    spec: dict[str, Any] | None = None
    checkpoint: Path | None = None
    directory: Path | None = None

    @property
    def members(self) -> tuple[str, ...]:
        return self.name.members if isinstance(self.name, Ensemble) else (self.name,)


def cached_data(
    cfg: RunConfig,
    train: SampleDataset | None,
    targets: list[str],
    teacher: StoredTeacher,
    *,
    num_classes: int | None = None,
) -> CachedDataset:
    """The training split (``None``: the sequences the store holds, :class:`~kdcache.train.StoredTokens`) joined
    with the targets of ``teacher`` in the pipeline's store (``cache.store``, opened with its shard cache), under
    ``views.policy`` and the ``cache.ram_budget_mb``. Refused unless the store fits: complete, made from this data,
    views and class count (``num_classes``, default ``data.num_classes``) and by ``teacher`` as it describes it.
    ``cache.allow_teacher_mismatch`` trains from the stored outputs of another teacher anyway, with a warning."""
    classes = cfg.data.num_classes if num_classes is None else num_classes
    cache = open_store(
        cfg.store_url, shard_cache=cfg.cache.shard_cache, shard_cache_bytes=int(cfg.cache.shard_cache_mb * 1024**2)
    )
    if train is None:
        train = cached_train_split(cfg, cache)
        check_language_model(cfg, train)
    if cfg.data.task == "language-model":  # tokenizer, packing and vocabulary first: the errors that name them
        if not isinstance(cfg, DistillConfig):
            raise ConfigError(f"a language model trains from a store in a method distill pipeline, not {cfg.method!r}")
        require_token_alignment(
            cache, train, teacher=teacher.name, vocab_size=classes, tokenizer=student_tokenizer(cfg)
        )
    if teacher.directory is not None and teacher.directory.is_dir():  # the teacher is its files: unchanged?
        require_fresh_teacher(cache, teacher.members[0], teacher.directory)
    cache.require(Requirements(teachers=teacher.members, num_classes=classes))
    if teacher.spec is not None:
        path = teacher.checkpoint
        cache.require(
            Requirements(
                teachers=teacher.members,
                teacher_spec=teacher.spec,
                teacher_state=state_digest(load_state_dict(path)) if path is not None and path.exists() else None,
                allow_teacher_mismatch=cfg.cache.allow_teacher_mismatch,
            )
        )
    return CachedDataset(
        train,
        cache,
        teacher=teacher.name,
        targets=targets,
        views=view_transform(cfg),
        policy=cfg.views.policy,
        ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2,
        num_classes=classes,
    )


def cached_train_split(cfg: RunConfig, cache: StoreReader) -> SampleDataset:
    """The training split as the cached variants read it: with ``cache.store_tokens`` the sequences the store holds
    (no corpus needed), refused when ``data.args.tokenizer`` — which tokenizes the evaluation split — is on disk and
    is another tokenizer than the store's; else the split's files."""
    if not cfg.cache.store_tokens:
        return load_split(cfg, cfg.data.train_split)
    train = StoredTokens(cache, ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2)
    path = cfg.data.args.get("tokenizer")
    if path is not None and Path(path).exists():
        require_store_tokenizer(cache, load_tokenizer(path).fingerprint(), "data.args.tokenizer")
    return train
