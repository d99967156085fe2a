"""kdcache: knowledge distillation with cached teachers.

Stage one (:func:`precompute`) runs a frozen teacher once and writes its targets into a sharded Zarr v3 store;
stage two streams them (:func:`open_cache`, :class:`CachedDataset`, :func:`batch_loader`) into student training.
"""

from kdcache.config import PipelineConfig, RunSettings, load_pipeline
from kdcache.datasets import (
    ClassSubset,
    DigitsSegmentation,
    HDF5Dataset,
    SampleDataset,
    TensorDataset,
    VOCSegmentation,
)
from kdcache.distributed import precompute_on_dask
from kdcache.errors import KdcacheError
from kdcache.hdf5 import export_hdf5, import_hdf5
from kdcache.losses import LOSSES, build_objective, kd_divergence, logit_hint
from kdcache.models import MultiHeadNet
from kdcache.precompute import PrecomputeReport, precompute
from kdcache.recompute import FidelityReport, Tolerance, recompute_check
from kdcache.stats import TeacherStats, store_stats
from kdcache.store import Cache, open_cache
from kdcache.stream import Batch, CachedDataset, ViewDataset, batch_loader, set_loader_epoch
from kdcache.targets import TARGETS, build_target
from kdcache.targets.ensemble import Ensemble, ProbabilityEnsemble
from kdcache.views import VIEW_OPS, ViewTransform, build_view_op
from kdcache.world import World, process_group

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "TARGETS",
    "VIEW_OPS",
    "Batch",
    "Cache",
    "CachedDataset",
    "Ensemble",
    "ClassSubset",
    "FidelityReport",
    "DigitsSegmentation",
    "HDF5Dataset",
    "KdcacheError",
    "MultiHeadNet",
    "PipelineConfig",
    "PrecomputeReport",
    "ProbabilityEnsemble",
    "RunSettings",
    "SampleDataset",
    "TeacherStats",
    "TensorDataset",
    "Tolerance",
    "VOCSegmentation",
    "ViewDataset",
    "ViewTransform",
    "World",
    "batch_loader",
    "build_objective",
    "build_target",
    "export_hdf5",
    "import_hdf5",
    "build_view_op",
    "kd_divergence",
    "logit_hint",
    "load_pipeline",
    "open_cache",
    "precompute",
    "precompute_on_dask",
    "process_group",
    "recompute_check",
    "set_loader_epoch",
    "store_stats",
]
