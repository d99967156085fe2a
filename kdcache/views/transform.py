"""Views: the exact model input for (sample i, view v), replayable anywhere from (seed, i, v) alone.

View 0 is the eval view: the ``eval`` pipeline (if any) and normalisation, no augmentation. A store with
``count = 1`` caches the classic single clean view; with ``count = V`` it caches that clean view plus ``V - 1``
augmented ones, and test-time evaluation (:meth:`ViewTransform.eval_view`) always sees view 0. Views ``v >= 1`` are
made by one of two kinds of augmentation:

* kdcache's own ops (``augment``, :mod:`kdcache.views.ops`), whose drawn numbers are stored in ``views/params``;
* a torchvision v2 ``pipeline`` (any transform, from YAML names or your own callable), run under generators seeded
  from (seed, i, v) (:mod:`kdcache.views.keyed`);

and optionally mixed (``mix``: MixUp or CutMix with a keyed partner). Raw images may be uint8 or float and of any
size; the pipeline makes them the model's size, then they become float in [0, 1] and are normalised.

The view spec (count, seed, every op or transform with every argument, the generators, the torchvision version) is
part of the store's identity: stage two replays the same views, so cached targets and student inputs match bit for
bit. How stage two picks a view per epoch (the ``policy``) is not part of it: one store serves every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2.functional import to_dtype

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError
from kdcache.fingerprint import with_digest
from kdcache.views.keyed import MIX_PARAMS, TRANSFORM_RNG, Mix, Transform, describe_transform, one_thread, run_keyed
from kdcache.views.ops import Size, ViewOp, build_view_op
from kdcache.views.rng import RNG_NAME, KeyedRandom, check_seed, keyed_words, uniforms_of

EVAL_VIEW = 0
Images = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class ViewBatch:
    """Model inputs for (sample, view) pairs and everything that made them: the raw inputs and labels, the drawn
    numbers, and for mixed views the partner samples (their raw inputs and labels) and each label's weight."""

    inputs: torch.Tensor
    raw: Images
    labels: torch.Tensor
    params: np.ndarray
    partners: np.ndarray | None = None
    partner_raw: Images | None = None
    partner_labels: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    @property
    def mix(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For mixed views, ``(partner labels, weight of labels)`` of every sample (what a training batch carries)."""
        if self.partner_labels is None or self.weights is None:
            return None
        return self.partner_labels, self.weights


class ViewTransform:
    """Turns raw inputs of given (sample, view) pairs into model inputs.

    >>> from kdcache.views import build_view_op
    >>> views = ViewTransform(count=8, seed=0, mean=(0.3,), std=(0.37,),
    ...                       augment=[build_view_op("random_crop", {"padding": 1})])
    >>> views.param_names
    ['0.random_crop.top', '0.random_crop.left']
    >>> from torchvision.transforms import v2
    >>> rrc = ViewTransform(count=4, seed=0, pipeline=v2.RandomResizedCrop(32), eval=v2.Resize((32, 32)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        count: int,
        seed: int,
        mean: tuple[float, ...] = (0.0,),
        std: tuple[float, ...] = (1.0,),
        augment: Sequence[ViewOp] = (),
        pipeline: Transform | None = None,
        eval: Transform | None = None,
        mix: Mix | None = None,
    ) -> None:
        if count < 1:
            raise ConfigError(f"a view transform needs count >= 1 views (view 0 is the eval view), got {count}")
        if bad := [op for op in augment if not isinstance(op, ViewOp)]:
            raise ConfigError(
                f"augment takes kdcache view ops (build_view_op), not {type(bad[0]).__name__}; pass torchvision "
                "transforms as pipeline=v2.Compose([...]) (or views.pipeline in a pipeline file)"
            )
        if augment and pipeline is not None:
            raise ConfigError(
                "use either augment (kdcache's ops) or pipeline (torchvision v2) for views >= 1, not both"
            )
        self.count, self.seed = count, check_seed(seed)
        self.augment, self.pipeline, self.eval, self.mix = tuple(augment), pipeline, eval, mix
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # what the steps are, by content (never their repr); a step that cannot be identified is refused here
        self._described = {
            "pipeline": describe_transform(pipeline) if pipeline is not None else [],
            "eval": describe_transform(eval) if eval is not None else [],
        }

    def __repr__(self) -> str:
        parts = f"augment={list(self.augment)}" if self.augment else f"pipeline={self.pipeline!r}"
        return f"ViewTransform(count={self.count}, seed={self.seed}, {parts})"

    @property
    def param_names(self) -> list[str]:
        """Names of the columns of ``views/params``: ``<position>.<op>.<value>``, then the mixing numbers."""
        names = [f"{k}.{op.name}.{value}" for k, op in enumerate(self.augment) for value in op.values]
        return names + (list(MIX_PARAMS) if self.mix else [])

    @property
    def seeded_code(self) -> bool:
        """Whether views run code whose random numbers are internal (a torchvision pipeline, an eval pipeline or
        mixing): replayed by seeding its generators, so stage one checks the replay before it caches anything."""
        return self.pipeline is not None or self.eval is not None or self.mix is not None

    def eval_view(self) -> ViewTransform:
        """One view, no augmentation: what test-time evaluation sees (the same pixels as view 0 of this transform)."""
        mean, std = tuple(self.mean.flatten().tolist()), tuple(self.std.flatten().tolist())
        return ViewTransform(count=1, seed=self.seed, mean=mean, std=std, eval=self.eval)

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest.

        With kdcache's ops only, the spec is exactly what kdcache 0.1 recorded, so existing stores keep matching."""
        transform: dict[str, Any] = {
            "normalize": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        }
        if self.augment:
            transform.update(augment=[op.describe() for op in self.augment], rng=RNG_NAME)
        if self.seeded_code:
            transform.update(
                pipeline=self._described["pipeline"],
                eval=self._described["eval"],
                pipeline_rng=TRANSFORM_RNG,
                torchvision=torchvision.__version__,
                torch=torch.__version__.split("+")[0],
            )
            if self.mix is not None:
                transform["mix"] = self.mix.describe()
        if self.param_names:
            transform.update(params=self.param_names, eval_view=EVAL_VIEW)
        return with_digest({"count": self.count, "seed": self.seed, "transform": transform})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ViewTransform:
        """The views a store's spec describes, when they are made of normalisation and kdcache's ops alone (what
        :class:`~kdcache.train.CachedDataset` uses when no ``views`` are given). A torchvision pipeline or mixing is
        code, not data: pass the same ``ViewTransform`` stage one used."""
        transform = spec.get("transform", {})
        if any(key in transform for key in ("pipeline", "eval", "mix")):
            raise ConfigError(
                "the store's views were made by a torchvision pipeline (views.pipeline / eval / mix); pass views= the "
                f"ViewTransform stage one used (its spec is {transform.get('pipeline') or transform.get('eval')})"
            )
        augment = [
            build_view_op(d["op"], {k: v for k, v in d.items() if k != "op"}) for d in transform.get("augment", [])
        ]
        normalize = transform.get("normalize", {"mean": [0.0], "std": [1.0]})
        return cls(
            count=int(spec["count"]),
            seed=int(spec["seed"]),
            mean=tuple(normalize["mean"]),
            std=tuple(normalize["std"]),
            augment=augment,
        )

    # ---------------------------------------------------------------- drawn numbers
    def params(
        self, indices: np.ndarray, view_ids: np.ndarray, sizes: Size | Sequence[Size], num_samples: int | None = None
    ) -> np.ndarray:
        """The drawn numbers of each (sample, view) pair, ``(B, P)`` float32 (the eval view gets identity numbers).

        ``sizes`` is each raw image's (height, width), or one size for all; ``num_samples`` is the dataset's length
        (mixing draws a partner among them). kdcache's ops draw the whole batch at once from its Philox words
        (:func:`~kdcache.views.rng.keyed_words`): the same numbers, bit for bit, as drawing view by view."""
        indices = np.asarray(indices, dtype=np.int64)
        view_ids = np.asarray(view_ids, dtype=np.int64)
        out = np.empty((len(indices), len(self.param_names)), dtype=np.float32)
        if not self.param_names:
            return out
        if not isinstance(sizes, tuple) and len(set(sizes)) == 1:  # one size for all: identities broadcast
            sizes = sizes[0]
        width = sum(len(op.values) for op in self.augment)
        out[:, :width] = self._op_params(indices, view_ids, sizes)
        if self.mix is not None:
            if num_samples is None:
                raise ConfigError("mixed views draw a partner among the dataset's samples: pass num_samples")
            for row, (i, v) in enumerate(zip(indices.tolist(), view_ids.tolist(), strict=True)):
                out[row, width:] = (
                    self.mix.draw(self.seed, i, v, num_samples) if v != EVAL_VIEW else (-1.0, 1.0, 0.0, 0.0)
                )
        return out

    def _op_params(self, indices: np.ndarray, view_ids: np.ndarray, sizes: Size | Sequence[Size]) -> np.ndarray:
        """The numbers of kdcache's ops, ``(B, values)`` float64: identities for the eval view, draws for the others
        (vectorised when every op draws a fixed number of uniforms, view by view otherwise)."""
        out = np.empty((len(indices), sum(len(op.values) for op in self.augment)), dtype=np.float64)
        if not self.augment:
            return out
        eval_rows, rows = np.flatnonzero(view_ids == EVAL_VIEW), np.flatnonzero(view_ids != EVAL_VIEW)
        size_of = (lambda _: sizes) if isinstance(sizes, tuple) else sizes.__getitem__
        if isinstance(sizes, tuple):
            out[eval_rows] = [x for op in self.augment for x in op.identity(sizes)]
        else:
            for row in eval_rows.tolist():
                out[row] = [x for op in self.augment for x in op.identity(size_of(row))]
        if all(op.draws is not None for op in self.augment):
            counts = [int(op.draws or 0) for op in self.augment]
            uniforms = uniforms_of(keyed_words(self.seed, indices[rows], view_ids[rows], sum(counts)))
            column = start = 0
            for op, count in zip(self.augment, counts, strict=True):
                out[rows, column : column + len(op.values)] = op.draw_many(uniforms[:, start : start + count])
                column, start = column + len(op.values), start + count
            return out
        for row in rows.tolist():
            rng = KeyedRandom(self.seed, sample=int(indices[row]), view=int(view_ids[row]))
            out[row] = [x for op in self.augment for x in op.draw(rng, size_of(row))]
        return out

    # ---------------------------------------------------------------- pixels
    def batch(self, dataset: SampleDataset, indices: np.ndarray, view_ids: np.ndarray) -> ViewBatch:
        """Read samples ``indices`` (and, for mixed views, their partners) and make their views ``view_ids``."""
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        view_ids = np.ascontiguousarray(view_ids, dtype=np.int64)
        raw, labels = dataset.get_batch(indices)
        params = self.params(indices, view_ids, sizes_of(raw), num_samples=len(dataset))
        if self.mix is None:
            return ViewBatch(self.apply(raw, params, view_ids, indices), raw, labels, params)
        images = self._images(raw, indices, view_ids, params)
        partners = params[:, len(self.param_names) - len(MIX_PARAMS)].astype(np.int64)
        mixed = np.flatnonzero(partners >= 0)
        partner_raw, partner_labels = dataset.get_batch(partners[mixed])
        partner_params = self.params(partners[mixed], view_ids[mixed], sizes_of(partner_raw), num_samples=len(dataset))
        partner_images = self._images(partner_raw, partners[mixed], view_ids[mixed], partner_params)
        weights = torch.ones(len(indices))
        all_partner_labels = labels.clone()
        for slot, row in enumerate(mixed.tolist()):
            images[row], weights[row] = self.mix.apply(
                images[row], partner_images[slot], params[row, -len(MIX_PARAMS) :]
            )
            all_partner_labels[row] = partner_labels[slot]
        inputs = self._normalised(images, indices, view_ids)
        return ViewBatch(inputs, raw, labels, params, partners, partner_raw, all_partner_labels, weights)

    def apply(
        self, inputs: Images, params: np.ndarray, view_ids: np.ndarray, indices: np.ndarray | None = None
    ) -> torch.Tensor:
        """Model inputs from raw inputs and the numbers :meth:`params` drew for them (no mixing: see :meth:`batch`)."""
        if self.mix is not None:
            raise ConfigError("mixed views need the partner samples: make them with ViewTransform.batch(dataset, ...)")
        indices = np.zeros(len(view_ids), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        view_ids = np.asarray(view_ids, dtype=np.int64)
        if self._plain(inputs, view_ids):
            return (_as_float(inputs) - self.mean).div_(self.std)  # one new tensor: the same bits as `/`
        return self._normalised(self._images(inputs, indices, view_ids, params), indices, view_ids)

    def __call__(self, inputs: Images, indices: np.ndarray | None, view_ids: np.ndarray | None) -> torch.Tensor:
        """Model inputs for raw inputs of samples ``indices`` under views ``view_ids`` (view 0 when not given)."""
        count = len(inputs)
        indices = np.zeros(count, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        view_ids = np.zeros(count, dtype=np.int64) if view_ids is None else np.asarray(view_ids, dtype=np.int64)
        return self.apply(inputs, self.params(indices, view_ids, sizes_of(inputs)), view_ids, indices)

    def _plain(self, inputs: Images, view_ids: np.ndarray) -> bool:
        """No per-sample work: a stacked batch, no eval pipeline, and no augmentation on its views."""
        augmented = (self.augment or self.pipeline is not None) and bool((view_ids != EVAL_VIEW).any())
        return isinstance(inputs, torch.Tensor) and self.eval is None and not augmented

    def _images(self, raw: Images, indices: np.ndarray, view_ids: np.ndarray, params: np.ndarray) -> list[torch.Tensor]:
        """Each sample's view as a float ``(C, H, W)`` image in [0, 1], before normalisation."""
        pairs = zip(raw, indices.tolist(), view_ids.tolist(), params, strict=True)
        with one_thread():
            return [self._image(image, i, v, values) for image, i, v, values in pairs]

    def _image(self, image: torch.Tensor, sample: int, view: int, values: np.ndarray) -> torch.Tensor:
        """View ``view`` of one sample: its pipeline run under the key, then kdcache's ops with their numbers."""
        transform = self.eval if view == EVAL_VIEW else self.pipeline
        if transform is not None:
            image = run_keyed(transform, image, self.seed, sample, view)
        image = _as_float(image)
        start = 0
        for op in self.augment if view != EVAL_VIEW else ():
            image = op.apply(image, values[start : start + len(op.values)].tolist())
            start += len(op.values)
        return image

    def _normalised(self, images: list[torch.Tensor], indices: np.ndarray, view_ids: np.ndarray) -> torch.Tensor:
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) > 1:
            seen = {tuple(x.shape): (int(i), int(v)) for x, i, v in zip(images, indices, view_ids, strict=True)}
            raise ConfigError(
                f"the views of one batch have different sizes {dict(list(seen.items())[:4])} (size: (sample, view)): "
                "the model needs one input size. End the view pipeline (and eval) with a fixed-size step, e.g. "
                "RandomResizedCrop(size) or Resize + CenterCrop"
            )
        stacked = torch.stack(images) if images else torch.empty(0)
        return (stacked - self.mean) / self.std


def sizes_of(raw: Images) -> Size | list[Size]:
    """(height, width) of a stacked batch's images (one size for all), or of every image of a list."""
    if isinstance(raw, torch.Tensor):
        return (int(raw.shape[-2]), int(raw.shape[-1]))
    return [(int(image.shape[-2]), int(image.shape[-1])) for image in raw]


def _as_float(images: Images | torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to float32 in [0, 1] (as torchvision's ``ToDtype(float32, scale=True)``), float ones as
    float32."""
    if isinstance(images, torch.Tensor):
        return to_dtype(images, torch.float32, scale=True) if images.dtype == torch.uint8 else images.float()
    return torch.stack([_as_float(x) for x in images])
