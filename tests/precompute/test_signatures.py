"""The two ways into stage one take the same parameters, every one keyword-only after the three essentials."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from kdcache.precompute import StageOneJob, precompute, precompute_on_dask

DASK_ONLY = ("workers", "scheduler", "client")


def parameters(function) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_precompute_and_precompute_on_dask_take_the_same_keywords() -> None:
    local, dask = parameters(precompute), parameters(precompute_on_dask)
    shared = {name: p for name, p in dask.items() if name not in DASK_ONLY}
    assert [(p.name, p.kind, p.default) for p in shared.values()] == [
        (p.name, p.kind, p.default) for p in local.values()
    ]
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in dask.values())  # no **options to hide a typo


def test_everything_after_teacher_dataset_and_store_is_keyword_only() -> None:
    for function in (precompute, precompute_on_dask):
        positional = [p.name for p in parameters(function).values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert positional == ["teacher", "dataset", "store"], function.__name__


def test_every_job_field_is_a_precompute_keyword_and_keyword_only() -> None:
    fields = {f.name for f in dataclasses.fields(StageOneJob)}
    assert fields <= set(parameters(precompute))
    with pytest.raises(TypeError, match="positional"):
        StageOneJob(None, None, (), None)  # type: ignore[misc]  # the mistake keyword-only fields refuse
