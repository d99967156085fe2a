"""What a ``data.task: language-model`` pipeline checks before it runs, and the student tokenizer stage two compares
with the store's (docs/language-models.md).

A language model reads token ids (no views beyond the identity), learns with token losses (``next_token``,
``token_kd``: classes are the last dimension) and needs a vocabulary (``data.num_classes``) that holds every token
id the tokenizer produces. Each mistake is refused here with the fix, before a teacher is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcache.datasets import SampleDataset
from kdcache.datasets.tokenizer import TOKENIZER_FILE, load_tokenizer
from kdcache.errors import ConfigError
from kdcache.pipeline.config import DistillConfig, RunConfig

CLASSIFIER_LOSSES = {"ce": "next_token", "kd": "token_kd"}


def check_language_model(cfg: RunConfig, dataset: SampleDataset) -> None:
    """Refuse a language-model pipeline whose views, losses or vocabulary do not fit token data."""
    if cfg.views.count != 1 or cfg.views.augment:
        raise ConfigError(
            "a language model has one view per sequence, the token ids (views.count: 1, no views.augment); "
            f"got count {cfg.views.count} and {len(cfg.views.augment)} augmentation op(s)"
        )
    vocab = getattr(dataset, "vocab_size", None)
    if vocab is not None and vocab > cfg.data.num_classes:
        raise ConfigError(
            f"the tokenizer produces {vocab} token ids but data.num_classes (the model's vocabulary) is "
            f"{cfg.data.num_classes}; set data.num_classes to at least {vocab}"
        )
    if isinstance(cfg, DistillConfig):
        _check_losses(cfg)


def student_tokenizer(cfg: DistillConfig) -> dict[str, Any] | None:
    """The fingerprint of the student's own tokenizer: a ``causal-lm`` student loaded from a local directory that
    holds a ``tokenizer.json`` has one; a student built from a config reads the pipeline's data as it is."""
    path = cfg.student.model.args.get("path") if cfg.student.model.arch == "causal-lm" else None
    if path is None or not (Path(path) / TOKENIZER_FILE).is_file():
        return None
    return load_tokenizer(path).fingerprint()


def _check_losses(cfg: DistillConfig) -> None:
    stages = [("scratch_losses", cfg.scratch_losses)]
    stages += [(f"student.train.stages.{i}", s.losses) for i, s in enumerate(cfg.student.train.stages)]
    if cfg.teacher.train is not None:
        stages += [(f"teacher.train.stages.{i}", s.losses) for i, s in enumerate(cfg.teacher.train.stages)]
    stages += [(f"compare[{v.name}]", [loss for s in v.stages for loss in s.losses]) for v in cfg.compare if v.stages]
    for where, losses in stages:
        for loss in losses:
            if loss.name in CLASSIFIER_LOSSES:
                raise ConfigError(
                    f"{where}: loss {loss.name!r} is for classifiers (classes on dim 1); a language model's logits "
                    f"are (batch, positions, vocabulary): use {CLASSIFIER_LOSSES[loss.name]!r}"
                )
