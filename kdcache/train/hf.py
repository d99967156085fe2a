"""Train a ``transformers`` student with ``transformers.Trainer`` from a kdcache store (the ``hf`` extra).

A Trainer takes a dataset, a collator and a loss; kdcache gives all three so the Trainer's loop, optimizer,
schedules, logging, checkpoints and ``accelerate`` devices work unchanged, while the targets come from the store and
every check of kdcache's own loop still runs: :class:`~kdcache.train.CachedTokenDataset` refuses a store made for
other text, another tokenizer or another vocabulary, and proves every sample it reads by content; the loss refuses
student logits of another width than the cached vocabulary (:func:`~kdcache.losses.token_kd_divergence`).

* :class:`KDCollator` turns the dataset's per-sample dicts into ``input_ids`` and ``labels`` plus the
  :class:`~kdcache.train.Batch` the loss decodes on the model's device.
* :class:`KDTrainer` is ``transformers.Trainer`` whose loss is a kdcache objective, the same ``(name, weight,
  params)`` losses as a pipeline's stage (default ``0.5 · next_token + 0.5 · token_kd`` on the first token target),
  so the number it minimises equals :func:`~kdcache.train.fit`'s on the same batch. It keeps the target columns
  (``remove_unused_columns`` would drop them), tells the dataset each epoch (:meth:`CachedDataset.set_epoch`)
  and collates an ``eval_dataset`` of cached targets by its own dataset, so ``evaluate()`` reports the same loss.

Labels are already next tokens (kdcache shifts them when it packs text), so the model is called without
``labels`` and the next-token loss is kdcache's, not the model's own shifted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import default_collate

from kdcache.errors import ConfigError
from kdcache.losses import LossSetup, Objective, StepOutputs, build_objective
from kdcache.models.lm import require_transformers
from kdcache.train.batch import Batch
from kdcache.train.data import CachedDataset

if TYPE_CHECKING:
    import transformers
else:
    transformers = require_transformers()  # the install hint when the hf extra is missing

__all__ = ["KDCollator", "KDTrainer", "LossEntry"]

LossEntry = tuple[str, float, dict[str, Any]]


class KDCollator:
    """Collates a cached dataset's per-sample dicts for :class:`KDTrainer`: ``input_ids``, ``labels`` and
    ``attention_mask`` ``(B, L)`` and ``kd_batch``, the :class:`~kdcache.train.Batch` whose targets the loss decodes
    on the model's device. The mask is the text dataset's own (0 at padding), all ones for a dataset without one.

    One collator serves the train and the eval datasets (the Trainer has one): a batch goes to the dataset whose
    stored targets its items name (their ``source``), the first otherwise, whose check then refuses it."""

    def __init__(self, dataset: CachedDataset, *more: CachedDataset) -> None:
        self.datasets = (dataset, *more)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        data = self._dataset_of(items[0])
        batch = data.as_batch(default_collate(items))
        masks = getattr(data.dataset, "attention_mask", None)
        mask = torch.ones_like(batch.inputs) if masks is None else masks(batch.indices.numpy())
        return {"input_ids": batch.inputs, "labels": batch.labels, "attention_mask": mask, "kd_batch": batch}

    def _dataset_of(self, item: dict[str, Any]) -> CachedDataset:
        source = item.get("source")
        found = (
            d for d in self.datasets if source is not None and d.source is not None and torch.equal(d.source, source)
        )
        return next(found, self.datasets[0])


class _EpochCallback(transformers.TrainerCallback):
    """Tells the dataset the epoch the Trainer starts, so per-epoch views and the epoch guard stay right."""

    def __init__(self, dataset: CachedDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.dataset.set_epoch(int(state.epoch or 0))


class KDTrainer(transformers.Trainer):
    """``transformers.Trainer`` distilling from a kdcache store: ``train_dataset`` is a
    :class:`~kdcache.train.CachedTokenDataset`, ``losses`` the stage's ``(name, weight, params)`` entries.

    >>> trainer = KDTrainer(model=student, args=TrainingArguments("out", max_steps=100), train_dataset=data)
    ... # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(self, *args: Any, losses: list[LossEntry] | None = None, **kwargs: Any) -> None:
        data = kwargs.get("train_dataset")
        if not isinstance(data, CachedDataset):
            raise ConfigError(
                f"KDTrainer trains from a kdcache store: pass train_dataset=CachedTokenDataset(...), got "
                f"{type(data).__name__}"
            )
        kwargs.setdefault("data_collator", KDCollator(data, *_cached(kwargs.get("eval_dataset"))))
        super().__init__(*args, **kwargs)
        self.args.remove_unused_columns = False  # the targets are no argument of the model's forward: keep them
        self.model_accepts_loss_kwargs = False  # the loss is a mean per batch: let the Trainer scale accumulation
        self.add_callback(_EpochCallback(data))
        assert self.model is not None  # Trainer.__init__ sets it (from model or model_init) or raises
        # not ``objective``: Trainer's hyperparameter search writes its metric to that attribute
        self.kd_objective = _objective(losses or _default_losses(data), _vocabulary(self.model))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """kdcache's objective on the student's logits and the batch's cached targets (decoded on the device)."""
        if not isinstance(inputs.get("kd_batch"), Batch) or "attention_mask" not in inputs:
            raise ConfigError(
                f"KDTrainer's inputs carry {sorted(inputs)}, not kd_batch and attention_mask: keep its KDCollator "
                "(pass no data_collator, or one that returns KDCollator's dict)"
            )
        batch = inputs["kd_batch"].to(inputs["input_ids"].device)
        outputs = model(input_ids=batch.inputs, attention_mask=inputs["attention_mask"])
        logits = getattr(outputs, "logits", outputs)
        loss, _ = self.kd_objective(StepOutputs(logits, batch.labels, teacher=batch.targets))
        return (loss, outputs) if return_outputs else loss


def _cached(evals: Any) -> list[CachedDataset]:
    """The cached datasets among ``eval_dataset`` (one, or a dict of them, as the Trainer takes it)."""
    found = evals.values() if isinstance(evals, dict) else [evals]
    return [d for d in found if isinstance(d, CachedDataset)]


def _default_losses(data: CachedDataset) -> list[LossEntry]:
    targets = sorted(data.decoders)
    if not targets:
        raise ConfigError("the dataset reads no teacher targets: pass CachedTokenDataset(..., targets=[...])")
    return [("next_token", 0.5, {}), ("token_kd", 0.5, {"target": targets[0]})]


def _vocabulary(model: torch.nn.Module) -> int:
    getter = getattr(model, "get_output_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if embeddings is None:
        raise ConfigError(
            f"the student {type(model).__name__} has no output embeddings (get_output_embeddings): KDTrainer needs "
            "a causal language model whose logits width it can read"
        )
    return int(embeddings.weight.shape[0])


def _objective(losses: list[LossEntry], vocab_size: int) -> Objective:
    return build_objective(losses, LossSetup(num_classes=vocab_size, task="language-model"))
