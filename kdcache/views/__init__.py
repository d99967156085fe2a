"""Views: the exact input a model sees for (sample, view), and the replayable augmentation that makes it.

See docs/views.md. ``ViewTransform`` turns raw inputs into model inputs; ``build_view_op`` builds a registered op
(``VIEW_OPS``) for its ``augment`` list, ``build_transform`` a torchvision v2 pipeline from a pipeline file, ``Mix``
keyed MixUp/CutMix; ``KeyedRandom`` is the per-(seed, sample, view) random stream.
``TokenViews`` is the view of language-model inputs: the token ids, unchanged (docs/language-models.md). Both
implement ``Views``, the protocol stage one, stage two and the tools type their views against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache.registry import lazy_exports

if TYPE_CHECKING:
    from kdcache.views.keyed import Mix, build_transform
    from kdcache.views.ops import VIEW_OPS, ViewOp, ViewOpParams, build_view_op
    from kdcache.views.protocol import Views, check_replayable
    from kdcache.views.rng import RNG_NAME, KeyedRandom
    from kdcache.views.tokens import TokenViews, views_from_spec
    from kdcache.views.transform import EVAL_VIEW, ViewBatch, ViewTransform

# Names import on first use (PEP 562): the keyed random streams (``kdcache.views.rng``) need numpy alone, and the
# targets that use them are imported by ``kdcache verify``, which must start without torch
_MODULES = {
    "kdcache.views.keyed": ["Mix", "build_transform"],
    "kdcache.views.ops": ["VIEW_OPS", "ViewOp", "ViewOpParams", "build_view_op"],
    "kdcache.views.protocol": ["Views", "check_replayable"],
    "kdcache.views.rng": ["RNG_NAME", "KeyedRandom"],
    "kdcache.views.tokens": ["TokenViews", "views_from_spec"],
    "kdcache.views.transform": ["EVAL_VIEW", "ViewBatch", "ViewTransform"],
}
__getattr__, __dir__ = lazy_exports(
    __name__,
    {name: module for module, names in _MODULES.items() for name in names},
    moved={"build_pipeline": "kdcache.views:build_transform"},
)

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
