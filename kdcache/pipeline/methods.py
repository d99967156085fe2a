"""Pipeline methods: ``distill`` and the distillation schemes register here, each with its config model and runner.

The config layer owns this registry and never imports a method: methods register themselves when
:mod:`kdcache.pipeline` is imported, so adding a scheme touches no code above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdcache.pipeline.config import RunConfig
from kdcache.registry import Registry


@dataclass(frozen=True)
class Method:
    """A pipeline ``method``: the pydantic model of its YAML and the function that runs it and returns a summary."""

    config: type[RunConfig]
    run: Callable[..., dict[str, Any]]


METHODS: Registry[Method] = Registry("method")


def run_pipeline(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """What ``kdcache run`` does: the runner of the pipeline's method, which prints and writes its report."""
    return METHODS.get(cfg.method).run(cfg, progress=progress)
