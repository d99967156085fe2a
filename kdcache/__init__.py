"""kdcache: knowledge distillation with cached teachers.

Stage one (:func:`precompute`, :func:`precompute_on_dask`, given targets from :func:`build_target` and a
:class:`ViewTransform`) runs a frozen teacher once and writes its targets into a sharded Zarr v3 store; stage two
streams them (:func:`open_store`, :class:`CachedDataset`, :class:`CachedTokenDataset`, :func:`batch_loader`,
:func:`fit`) into student training. Pipelines (:func:`load_pipeline`, :func:`run_pipeline`) build both from YAML.
Everything else lives in the package that owns it (``kdcache.datasets``, ``kdcache.losses``, ``kdcache.tools``, ...);
the layers and what each package owns: docs/design.md ("Front door" says why these names).

Names import on first use (PEP 562), so ``import kdcache.store`` or ``import kdcache.errors`` loads neither torch
nor the engines. The names that used to be here resolve for one more release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from kdcache.registry import lazy_exports

if TYPE_CHECKING:
    from kdcache.errors import KdcacheError, PerformanceWarning
    from kdcache.losses import kd_divergence
    from kdcache.pipeline import load_pipeline, run_pipeline
    from kdcache.precompute import precompute, precompute_on_dask
    from kdcache.store import StoreReader, open_store
    from kdcache.targets import build_target
    from kdcache.train import BlockShuffleSampler, CachedDataset, CachedTokenDataset, batch_loader, fit
    from kdcache.views import ViewTransform

_EXPORTS = {
    "precompute": "kdcache.precompute",
    "precompute_on_dask": "kdcache.precompute",
    "build_target": "kdcache.targets",
    "ViewTransform": "kdcache.views",
    "open_store": "kdcache.store",
    "StoreReader": "kdcache.store",
    "BlockShuffleSampler": "kdcache.train",
    "kd_divergence": "kdcache.losses",
    "CachedDataset": "kdcache.train",
    "CachedTokenDataset": "kdcache.train",
    "batch_loader": "kdcache.train",
    "fit": "kdcache.train",
    "load_pipeline": "kdcache.pipeline",
    "run_pipeline": "kdcache.pipeline",
    "KdcacheError": "kdcache.errors",
    "PerformanceWarning": "kdcache.errors",
}

_PACKAGE_OF_MOVED = {
    "kdcache.datasets": (
        "ChatDataset",
        "ClassSubset",
        "DigitsSegmentation",
        "HDF5Dataset",
        "ItemDataset",
        "SampleDataset",
        "TensorDataset",
        "TextDataset",
        "VOCSegmentation",
        "as_sample_dataset",
    ),
    "kdcache.losses": ("LOSSES", "build_objective", "logit_hint", "token_kd_divergence"),
    "kdcache.models": ("MultiHeadNet",),
    "kdcache.precompute": ("PrecomputeReport", "StageOneJob"),
    "kdcache.registry": ("Factory",),
    "kdcache.targets": ("TARGETS", "Ensemble", "ProbabilityEnsemble"),
    "kdcache.tools": (
        "FidelityReport",
        "TeacherStats",
        "Tolerance",
        "export_hdf5",
        "import_hdf5",
        "recompute_check",
        "store_stats",
    ),
    "kdcache.store": ("Requirements",),
    "kdcache.train": (
        "Batch",
        "LossConfig",
        "OptimizerConfig",
        "StageConfig",
        "ViewDataset",
        "World",
        "process_group",
        "set_loader_epoch",
    ),
    "kdcache.views": ("VIEW_OPS", "Mix", "TokenViews", "build_view_op"),
}
"""Names the front door exported before it was made small: deprecated here, each at home in its package."""

_RENAMED = {
    "Cache": "kdcache.store:StoreReader",
    "open_cache": "kdcache.store:open_store",
    "PipelineConfig": "kdcache.pipeline:DistillConfig",
    "RunSettings": "kdcache.pipeline:RunConfig",
    "build_pipeline": "kdcache.views:build_transform",
}
"""Names renamed in 0.2 that the front door exported (CHANGELOG.md)."""

_lazy_getattr, __dir__ = lazy_exports(
    __name__,
    _EXPORTS,
    moved={name: f"{package}:{name}" for package, names in _PACKAGE_OF_MOVED.items() for name in names} | _RENAMED,
)


def __getattr__(name: str) -> Any:
    """A front-door name on first use; ``__version__`` from the installed package's metadata (read once)."""
    if name == "__version__":
        from importlib.metadata import version as installed  # ~20 ms, paid only by who asks

        version = globals()["__version__"] = installed("kdcache")
        return version
    return _lazy_getattr(name)


__all__ = [
    "BlockShuffleSampler",
    "CachedDataset",
    "CachedTokenDataset",
    "KdcacheError",
    "PerformanceWarning",
    "StoreReader",
    "ViewTransform",
    "batch_loader",
    "build_target",
    "fit",
    "kd_divergence",
    "load_pipeline",
    "open_store",
    "precompute",
    "precompute_on_dask",
    "run_pipeline",
]


class _FrontDoor(types.ModuleType):
    """The ``kdcache`` module, whose ``precompute`` is the function even once the subpackage ``kdcache.precompute`` is
    imported: the import system binds a loaded subpackage as an attribute of its parent, which would shadow the lazy
    name (an eager front door rebound it after its imports)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _FrontDoor
