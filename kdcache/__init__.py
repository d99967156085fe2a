"""kdcache: knowledge distillation with cached teachers.

Stage one (:func:`precompute`, :func:`precompute_on_dask`) runs a frozen teacher once and writes its targets into a
sharded Zarr v3 store; stage two streams them (:func:`open_cache`, :class:`CachedDataset`, :func:`batch_loader`,
:func:`fit`) into student training. Language models: :class:`TextDataset`, :class:`ChatDataset`, :class:`TokenViews`,
:class:`CachedTokenDataset`, :func:`token_kd_divergence` (docs/language-models.md). Pipelines (:func:`load_pipeline`, :func:`run_pipeline`) build both from YAML.
The layers and what each package owns: docs/design.md.
"""

from kdcache.datasets import (
    ChatDataset,
    ClassSubset,
    DigitsSegmentation,
    HDF5Dataset,
    ItemDataset,
    SampleDataset,
    TensorDataset,
    TextDataset,
    VOCSegmentation,
    as_sample_dataset,
)
from kdcache.errors import KdcacheError, PerformanceWarning
from kdcache.losses import LOSSES, build_objective, kd_divergence, logit_hint, token_kd_divergence
from kdcache.models import MultiHeadNet
from kdcache.pipeline import PipelineConfig, RunSettings, load_pipeline, run_pipeline
from kdcache.precompute import PrecomputeReport, StageOneJob, precompute, precompute_on_dask
from kdcache.registry import Factory
from kdcache.store import Cache, Requirements, open_cache
from kdcache.targets import TARGETS, Ensemble, ProbabilityEnsemble, build_target
from kdcache.tools.stats import TeacherStats, store_stats
from kdcache.tools.transfer import export_hdf5, import_hdf5
from kdcache.tools.verify import FidelityReport, Tolerance, recompute_check
from kdcache.train import (
    Batch,
    BlockShuffleSampler,
    CachedDataset,
    CachedTokenDataset,
    LossConfig,
    OptimizerConfig,
    StageConfig,
    ViewDataset,
    World,
    batch_loader,
    fit,
    process_group,
    set_loader_epoch,
)
from kdcache.views import VIEW_OPS, Mix, TokenViews, ViewTransform, build_pipeline, build_view_op

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "TARGETS",
    "VIEW_OPS",
    "Batch",
    "BlockShuffleSampler",
    "Cache",
    "CachedDataset",
    "CachedTokenDataset",
    "ChatDataset",
    "ClassSubset",
    "DigitsSegmentation",
    "Ensemble",
    "Factory",
    "FidelityReport",
    "HDF5Dataset",
    "ItemDataset",
    "KdcacheError",
    "LossConfig",
    "Mix",
    "MultiHeadNet",
    "OptimizerConfig",
    "PerformanceWarning",
    "PipelineConfig",
    "PrecomputeReport",
    "ProbabilityEnsemble",
    "Requirements",
    "RunSettings",
    "SampleDataset",
    "StageConfig",
    "StageOneJob",
    "TeacherStats",
    "TensorDataset",
    "TextDataset",
    "TokenViews",
    "Tolerance",
    "VOCSegmentation",
    "ViewDataset",
    "ViewTransform",
    "World",
    "as_sample_dataset",
    "batch_loader",
    "build_objective",
    "build_pipeline",
    "build_target",
    "build_view_op",
    "export_hdf5",
    "fit",
    "import_hdf5",
    "kd_divergence",
    "load_pipeline",
    "logit_hint",
    "open_cache",
    "precompute",
    "precompute_on_dask",
    "process_group",
    "recompute_check",
    "run_pipeline",
    "set_loader_epoch",
    "store_stats",
    "token_kd_divergence",
]
