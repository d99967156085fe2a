"""Views: the exact input a model sees for (sample, view), and the replayable augmentation that makes it.

See docs/views.md. ``ViewTransform`` turns raw inputs into model inputs; ``build_view_op`` builds a registered op
(``VIEW_OPS``) for its ``augment`` list, ``build_transform`` a torchvision v2 pipeline from a pipeline file, ``Mix``
keyed MixUp/CutMix; ``KeyedRandom`` is the per-(seed, sample, view) random stream.
``TokenViews`` is the view of language-model inputs: the token ids, unchanged (docs/language-models.md). Both
implement ``Views``, the protocol stage one, stage two and the tools type their views against.
"""

from __future__ import annotations

from kdcache.registry import moved_names
from kdcache.views.keyed import Mix, build_transform
from kdcache.views.ops import VIEW_OPS, ViewOp, ViewOpParams, build_view_op
from kdcache.views.protocol import Views, check_replayable
from kdcache.views.rng import RNG_NAME, KeyedRandom
from kdcache.views.tokens import TokenViews, views_from_spec
from kdcache.views.transform import EVAL_VIEW, ViewBatch, ViewTransform

__all__ = [
    "EVAL_VIEW",
    "RNG_NAME",
    "VIEW_OPS",
    "KeyedRandom",
    "Mix",
    "TokenViews",
    "ViewBatch",
    "ViewOp",
    "ViewOpParams",
    "ViewTransform",
    "Views",
    "build_transform",
    "build_view_op",
    "check_replayable",
    "views_from_spec",
]

__getattr__ = moved_names(__name__, {"build_pipeline": "kdcache.views:build_transform"})
