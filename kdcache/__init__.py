"""kdcache: knowledge distillation with cached teachers.

Stage one (:func:`precompute`) runs a frozen teacher once and writes its targets into a sharded Zarr v3 store;
stage two streams them (:func:`open_cache`, :class:`CachedDataset`, :func:`batch_loader`) into student training.
"""

from kdcache.config import PipelineConfig, load_pipeline
from kdcache.datasets import HDF5Dataset, SampleDataset, TensorDataset
from kdcache.errors import KdcacheError
from kdcache.fidelity import FidelityReport, Tolerance, recompute_check
from kdcache.losses import LOSSES, build_objective, kd_divergence
from kdcache.precompute import PrecomputeReport, precompute
from kdcache.store import Cache, open_cache
from kdcache.stream import Batch, CachedDataset, ViewDataset, batch_loader, set_loader_epoch
from kdcache.targets import TARGETS, build_target
from kdcache.views import VIEW_OPS, ViewTransform, build_view_op

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "TARGETS",
    "VIEW_OPS",
    "Batch",
    "Cache",
    "CachedDataset",
    "FidelityReport",
    "HDF5Dataset",
    "KdcacheError",
    "PipelineConfig",
    "PrecomputeReport",
    "SampleDataset",
    "TensorDataset",
    "Tolerance",
    "ViewDataset",
    "ViewTransform",
    "batch_loader",
    "build_objective",
    "build_target",
    "build_view_op",
    "kd_divergence",
    "load_pipeline",
    "open_cache",
    "precompute",
    "recompute_check",
    "set_loader_epoch",
]
