"""Pipelines: YAML → validated config → objects → the stage-one and stage-two engines → reports.

:func:`load_pipeline` reads and validates a pipeline file against the model of its ``method``; :func:`run_pipeline`
runs it (``kdcache run``). The ``distill`` method's steps — stage one for the pipeline's teacher
(:func:`run_precompute`), one student variant (:func:`train_student`), the storage plan (:func:`plan_storage`) — are
what ``kdcache precompute``, ``train`` and ``plan`` call. Importing this package registers every method.
"""

from kdcache.pipeline import compare as _compare  # noqa: F401  (registers the distill method)
from kdcache.pipeline import schemes as _schemes  # noqa: F401  (registers lwf, rocket, selfkd)
from kdcache.pipeline.config import DistillConfig, RunConfig
from kdcache.pipeline.distill import StudentRun, run_precompute, train_student
from kdcache.pipeline.loading import distill_pipeline, load_pipeline, parse_pipeline, with_overrides
from kdcache.pipeline.methods import METHODS, Method, run_pipeline
from kdcache.pipeline.plan import plan_storage
from kdcache.registry import moved_names

__all__ = [
    "METHODS",
    "DistillConfig",
    "Method",
    "RunConfig",
    "StudentRun",
    "distill_pipeline",
    "load_pipeline",
    "parse_pipeline",
    "plan_storage",
    "run_pipeline",
    "run_precompute",
    "train_student",
    "with_overrides",
]

__getattr__ = moved_names(
    __name__, {"PipelineConfig": "kdcache.pipeline:DistillConfig", "RunSettings": "kdcache.pipeline:RunConfig"}
)
