"""Errors speak the caller's language: Python parameters by default, YAML keys and flags inside the pipeline layer
and the CLI (:func:`kdcache.errors.speaking`), with one message per site chosen by :func:`kdcache.errors.say`."""

from __future__ import annotations

import pytest

from kdcache.errors import ConfigError, StoreNotFoundError, current_speaker, say, speaking
from kdcache.precompute import check_cluster
from kdcache.store import open_store


def test_python_by_default_pipeline_inside_speaking_and_restored_after_an_error():
    assert (current_speaker(), say("break_lock=True", "--break-lock")) == ("python", "break_lock=True")
    with pytest.raises(ConfigError), speaking("pipeline"):
        assert say("break_lock=True", "--break-lock") == "--break-lock"
        check_cluster(0, None)
    assert current_speaker() == "python"


def test_a_decorated_entry_point_speaks_pipeline_only_while_it_runs():
    @speaking("pipeline")
    def entry() -> str:
        return say("teacher_name=", "teacher.name")

    assert (entry(), entry(), current_speaker()) == ("teacher.name", "teacher.name", "python")


def test_the_same_refusal_names_the_parameter_or_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^workers must be at least 1, got 0$"):
        check_cluster(0, None)
    with speaking("pipeline"), pytest.raises(ConfigError, match=r"^--workers must be at least 1, got 0$"):
        check_cluster(0, None)
    with pytest.raises(StoreNotFoundError, match=r"build it first \(kdcache\.precompute\(\.\.\.\)\), or check"):
        open_store(str(tmp_path / "none.zarr"))
    with speaking("pipeline"), pytest.raises(StoreNotFoundError, match=r"build it first \(`kdcache precompute`\), or"):
        open_store(str(tmp_path / "none.zarr"))
