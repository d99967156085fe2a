"""A training batch as stage two hands it to the loop: inputs, labels, sample indices and views, teacher targets.

Targets travel as their stored dtype (float16, int8, ...) through CPU memory (pinned when the device is CUDA) and
are decoded on the training device by :meth:`Batch.to`. Until then :attr:`Batch.targets` refuses to be read
(:class:`~kdcache.errors.UndecodedBatchError`): the stored arrays are not the targets (int8 codes, top-k pairs,
bfloat16 bits), and decoding them lazily where they are would put the decode on the CPU and the targets on another
device than inputs moved by hand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np
import torch

from kdcache.errors import ForeignItemsError, UndecodedBatchError
from kdcache.targets import EnsembleDecoder, Target
from kdcache.train.packing import flatten, pack, restore, unpack


@dataclass
class Batch:
    """A training batch: model inputs, labels, the sample indices and views they came from, and teacher targets.

    ``params`` holds the numbers each view's augmentation was drawn with, ``(B, P)`` float32 (columns named by
    ``ViewTransform.param_names``; it stays on the CPU). ``stored`` holds the targets' stored arrays (by target,
    then array name) until :meth:`to` decodes them on the device into :attr:`targets`. For mixed views
    (MixUp/CutMix) ``mix`` is ``(partner labels, weight of labels)``: the label of each input is
    ``weight · labels + (1 - weight) · partner labels``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    views: torch.Tensor
    stored: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    decoders: dict[str, Target | EnsembleDecoder] = field(default_factory=dict, repr=False)
    params: torch.Tensor | None = None
    mix: tuple[torch.Tensor, torch.Tensor] | None = None
    decoded: dict[str, Any] | None = field(default=None, repr=False)
    source: torch.Tensor | None = field(default=None, repr=False)

    @property
    def targets(self) -> dict[str, Any]:
        """The teacher targets by name, decoded (``{}`` for a batch without cached targets); set by :meth:`to`."""
        if self.decoded is not None:
            return self.decoded
        if self.stored:
            raise UndecodedBatchError(
                f"this batch's targets {sorted(self.stored)} are still the store's encoded arrays; call "
                "batch = batch.to(device) first: it moves the batch and decodes them there (e.g. "
                "`batch = train.as_batch(items).to(device)`)"
            )
        return {}

    def item(self, slot: int) -> dict[str, Any]:
        """Sample ``slot`` as a dict of tensors, the per-sample form a plain ``DataLoader`` collates back into a
        batch (:meth:`from_items`): ``inputs``, ``labels``, ``index``, ``view``, ``params``, the stored ``targets``
        (by target, then array) and, for mixed views, ``mix`` (``labels``, ``weights``)."""
        return self._dicts(lambda tensor: (tensor[slot],))[0]

    def items(self) -> list[dict[str, Any]]:
        """Every sample's :meth:`item`, each tensor split once (``unbind``): one pass for the whole batch, not one
        slicing per sample and field (what a plain ``DataLoader`` reading a batch per call hands its collate)."""
        return self._dicts(lambda tensor: tensor.unbind(0))

    def _dicts(self, split: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> list[dict[str, Any]]:
        """Per-sample dicts of the samples ``split`` takes out of every tensor."""
        columns: dict[str, Any] = {
            "inputs": split(self.inputs),
            "labels": split(self.labels),
            "index": split(self.indices),
            "view": split(self.views),
        }
        if self.params is not None:
            columns["params"] = split(self.params)
        if self.stored:
            columns["targets"] = _rows({n: _rows({k: split(v) for k, v in a.items()}) for n, a in self.stored.items()})
        if self.mix is not None:
            columns["mix"] = _rows({"labels": split(self.mix[0]), "weights": split(self.mix[1])})
        if self.source is not None:
            columns["source"] = [self.source] * len(columns["index"])
        return _rows(columns)

    @classmethod
    def from_items(
        cls,
        collated: dict[str, Any],
        decoders: dict[str, Target | EnsembleDecoder],
        source: torch.Tensor | None = None,
        *,
        dataset: str = "this dataset",
    ) -> Batch:
        """The batch of a ``DataLoader``'s default collation of :meth:`items` dicts; ``decoders`` (the dataset's)
        turn its stored targets into training targets in :meth:`to`. Items whose ``source`` is not ``source`` (the
        dataset's identity) were made by another dataset and are refused (:class:`ForeignItemsError`)."""
        check_source(collated, source, dataset)
        mix = collated.get("mix")
        return cls(
            inputs=collated["inputs"],
            labels=collated["labels"],
            indices=collated["index"],
            views=collated["view"],
            stored=collated.get("targets", {}),
            decoders=decoders,
            params=collated.get("params"),
            mix=None if mix is None else (mix["labels"], mix["weights"]),
            source=source,
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled (out of a DataLoader worker) with its CPU tensors packed in one buffer
        (:mod:`kdcache.train.packing`): one shared-memory segment per batch instead of one per tensor. Batches
        with tensors on a device or needing gradients pickle field by field."""
        found: list[torch.Tensor] = []
        state = {f.name: flatten(getattr(self, f.name), found) for f in fields(self) if f.name != "decoded"}
        if any(t.device.type != "cpu" or t.requires_grad for t in found):
            return (Batch, tuple(getattr(self, f.name) for f in fields(self)))
        buffer, layout = pack(found)
        return (_unpacked, (buffer, layout, state, self.decoded))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-lock every tensor so the copy to the GPU can overlap."""
        pinned = {name: {k: v.pin_memory() for k, v in arrays.items()} for name, arrays in self.stored.items()}
        mix = None if self.mix is None else (self.mix[0].pin_memory(), self.mix[1].pin_memory())
        return replace(self, inputs=self.inputs.pin_memory(), labels=self.labels.pin_memory(), stored=pinned, mix=mix)

    def to(self, device: torch.device | str) -> Batch:
        """Move to ``device`` (non-blocking from pinned memory) and decode every target there (a batch that is
        decoded already keeps its targets and only moves)."""
        device = torch.device(device)
        if self.decoded is not None:
            decoded = {name: _moved(value, device) for name, value in self.decoded.items()}
        else:
            decoded = {
                name: self.decoders[name].decode({k: v.to(device, non_blocking=True) for k, v in arrays.items()})
                for name, arrays in self.stored.items()
            }
        mix = self.mix
        if mix is not None:
            mix = (mix[0].to(device, non_blocking=True), mix[1].to(device, non_blocking=True))
        return replace(
            self,
            inputs=self.inputs.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            stored={},
            decoded=decoded,
            decoders={},
            mix=mix,
        )


def source_identity(url: str, manifest_digest: str, arrays: dict[str, dict[str, str]]) -> torch.Tensor:
    """The identity of a dataset's stored targets, ``(2,)`` int64: BLAKE2b-128 of the store, its manifest's digest
    and every target's arrays and dtypes. Small enough to ride along in every per-sample item."""
    text = json.dumps([url, manifest_digest, arrays], sort_keys=True).encode()
    return torch.from_numpy(np.frombuffer(hashlib.blake2b(text, digest_size=16).digest(), dtype=np.int64).copy())


def check_source(collated: dict[str, Any], source: torch.Tensor | None, dataset: str) -> None:
    """Refuse collated items that another dataset (or none with stored targets) made: their stored arrays are not
    what this dataset's decoders read."""
    found = collated.get("source")
    if found is None and source is None:
        return
    if found is not None and source is not None:
        rows = found.reshape(-1, source.numel())
        if bool((rows == source.reshape(1, -1)).all()):
            return
    what = "no stored targets" if found is None else "stored targets of another dataset (another store or targets)"
    raise ForeignItemsError(
        f"these items carry {what}, not those of {dataset}: its decoders would read them as other numbers. "
        "Collate the items of one dataset and hand them to that dataset's as_batch (the DataLoader's dataset)"
    )


def _unpacked(buffer: torch.Tensor, layout: list[Any], state: dict[str, Any], decoded: Any) -> Batch:
    """The batch :meth:`Batch.__reduce__` packed: its tensors are views of ``buffer``."""
    return Batch(**restore(state, unpack(buffer, layout)), decoded=decoded)


def _rows(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-sample dicts from per-sample columns (``{key: sequence}``), zipped in C rather than built key by key."""
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _moved(value: Any, device: torch.device) -> Any:
    """A decoded target on ``device``: a tensor, or a dataclass of tensors (top-k logits, sampled tokens, the members
    of an ensemble); other fields (temperatures) stay as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _moved(getattr(value, f.name), device) for f in fields(value) if f.init})
    return value
