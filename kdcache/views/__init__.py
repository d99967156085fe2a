"""Views: the exact input a model sees for (sample, view), and the replayable augmentation ops that make it.

See docs/views.md. ``ViewTransform`` turns raw inputs into model inputs; ``build_view_op`` builds a registered op
(``VIEW_OPS``) for its ``augment`` list; ``KeyedRandom`` is the per-(seed, sample, view) random stream.
``TokenViews`` is the view of language-model inputs: the token ids, unchanged (docs/language-models.md).
"""

from __future__ import annotations

from kdcache.views.ops import VIEW_OPS, ViewOp, ViewOpParams, build_view_op
from kdcache.views.rng import RNG_NAME, KeyedRandom
from kdcache.views.tokens import TokenViews
from kdcache.views.transform import EVAL_VIEW, ViewTransform

__all__ = [
    "EVAL_VIEW",
    "RNG_NAME",
    "VIEW_OPS",
    "KeyedRandom",
    "TokenViews",
    "ViewOp",
    "ViewOpParams",
    "ViewTransform",
    "build_view_op",
]
