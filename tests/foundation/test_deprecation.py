"""Every name renamed in 0.2 still works for one release, warns, and is the very object of its new name."""

from __future__ import annotations

import importlib

import pytest

from kdcache.registry import Registry
from kdcache.store import StoreReader

# (old module, old name, new module, new name): the table CHANGELOG.md shows
RENAMED = [
    ("kdcache", "Cache", "kdcache.store", "StoreReader"),
    ("kdcache", "open_cache", "kdcache.store", "open_store"),
    ("kdcache", "PipelineConfig", "kdcache.pipeline", "DistillConfig"),
    ("kdcache", "RunSettings", "kdcache.pipeline", "RunConfig"),
    ("kdcache", "build_pipeline", "kdcache.views", "build_transform"),
    ("kdcache.store", "Cache", "kdcache.store", "StoreReader"),
    ("kdcache.store", "open_cache", "kdcache.store", "open_store"),
    ("kdcache.store.reader", "Cache", "kdcache.store", "StoreReader"),
    ("kdcache.store.reader", "open_cache", "kdcache.store", "open_store"),
    ("kdcache.views", "build_pipeline", "kdcache.views", "build_transform"),
    ("kdcache.views.pipeline", "build_pipeline", "kdcache.views.keyed", "build_transform"),
    ("kdcache.views.pipeline", "Mix", "kdcache.views.keyed", "Mix"),
    ("kdcache.views.pipeline", "PIPELINE_RNG", "kdcache.views.keyed", "TRANSFORM_RNG"),
    ("kdcache.pipeline", "PipelineConfig", "kdcache.pipeline", "DistillConfig"),
    ("kdcache.pipeline", "RunSettings", "kdcache.pipeline", "RunConfig"),
    ("kdcache.pipeline.config", "PipelineConfig", "kdcache.pipeline", "DistillConfig"),
    ("kdcache.pipeline.build", "cache_targets", "kdcache.pipeline.build", "targets_to_write"),
    ("kdcache.train", "cached_targets", "kdcache.train", "batch_targets"),
    ("kdcache.train.live", "cached_targets", "kdcache.train", "batch_targets"),
    ("kdcache.names", "check_name", "kdcache.names", "check_safe_name"),
    ("kdcache.tools.verify", "recompute_check", "kdcache.tools.recompute", "recompute_check"),
    ("kdcache.tools.verify_kinds", "Tolerance", "kdcache.tools.recompute_kinds", "Tolerance"),
]


@pytest.mark.parametrize(("old_module", "old", "new_module", "new"), RENAMED)
def test_old_name_warns_and_is_the_new_object(old_module: str, old: str, new_module: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{old} is deprecated: use {new_module}\.{new}"):
        value = getattr(importlib.import_module(old_module), old)
    assert value is getattr(importlib.import_module(new_module), new)


def test_unknown_names_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = importlib.import_module("kdcache.store").no_such_name


def test_renamed_methods_forward() -> None:
    things: Registry[int] = Registry("thing")
    things.register("one")(1)
    with pytest.warns(DeprecationWarning, match=r"Registry\.check_name is deprecated: use Registry\.check_known"):
        assert things.check_name("one") == "one"
    assert StoreReader.verify.__name__ == "forward"  # a forwarding method, not a copy of check_digests
