"""The front door: a small top level served lazily, and the commands and modules that need no torch start without it.

Each check runs in a fresh interpreter (``sys.modules`` of this test process already holds torch).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import kdcache
from tests.conftest import cache_digits

ROOT = Path(__file__).resolve().parents[1]


def fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it leaves its findings in ``found`` (a dict), printed as JSON."""
    program = f"import json, sys\nfound = {{}}\n{code}\nprint(json.dumps(found))"
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = "found['heavy'] = sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules)"


@pytest.mark.parametrize("module", ["kdcache", "kdcache.errors", "kdcache.store", "kdcache.cli", "kdcache.tools"])
def test_importing_a_light_module_loads_no_torch(module: str) -> None:
    found = fresh(f"import {module}\n{HEAVY}\nfound['kdcache'] = sum(m.startswith('kdcache') for m in sys.modules)")
    assert found["heavy"] == []
    assert found["kdcache"] <= 30, found  # import kdcache.store: 24 kdcache modules (was 103 with torch)


def test_reading_a_store_as_numpy_loads_no_torch(tmp_path, teacher, digits_small, views, logits_target) -> None:
    store = tmp_path / "s.zarr"
    cache_digits(store, teacher, digits_small, views, [logits_target])
    found = fresh(
        "from kdcache.store import open_store\n"
        f"cache = open_store({str(store)!r})\n"
        "record = next(iter(cache.teacher('t8').targets['logits'].arrays.values()))\n"
        "reader = cache.array_reader(record, 'teachers/t8', in_memory=False)\n"
        "found['row'] = reader.read_shard(0)[0].astype(float).tolist()\n"
        f"{HEAVY}"
    )
    assert found["heavy"] == []
    assert len(found["row"]) == views.count and len(found["row"][0]) == 10


def test_store_commands_run_without_torch(tmp_path, teacher, digits_small, views, logits_target) -> None:
    store = tmp_path / "s.zarr"
    cache_digits(store, teacher, digits_small, views, [logits_target])
    for command in (["--help"], ["inspect", str(store)], ["train", "--help"], ["verify", "--help"]):
        found = fresh(
            "from kdcache.cli import main\n"
            f"try:\n    found['code'] = main({command!r})\nexcept SystemExit as exit:\n    found['code'] = exit.code\n"
            f"{HEAVY}"
        )
        assert found == {"code": 0, "heavy": []}, command


def test_verify_checks_every_kind_without_torch(tmp_path, teacher, digits_small, views) -> None:
    """``kdcache verify`` (no ``--recompute``) scrubs the store and checks every target's stored values against its
    parameters, importing the targets for their rules but never torch: a good store passes, a damaged one fails."""
    from kdcache.targets import build_target

    store = tmp_path / "s.zarr"
    targets = [
        build_target("logits", {"dtype": "float16"}),
        build_target("logits", {"encoding": "int8"}),
        build_target("logits", {"encoding": "topk", "k": 3, "temperatures": [1.0, 4.0]}),
        build_target("features", {"layer": "layer2"}),
        build_target("embedding", {"layer": "layer2"}),
        build_target("fsp", {"layers": ["layer1", "layer2"]}),
    ]
    cache_digits(store, teacher, digits_small, views, targets)
    program = (
        "from kdcache.cli import main\n"
        f"found['code'] = main(['verify', {str(store)!r}])\n"
        "found['targets'] = 'kdcache.targets.logits' in sys.modules\n"
        f"{HEAVY}"
    )
    assert fresh(program) == {"code": 0, "targets": True, "heavy": []}
    shard = store / "teachers/t8/logits_int8/scale/c/1/0"
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, other bytes: the scrub's SHA-256 tells
    assert fresh(program) == {"code": 1, "targets": True, "heavy": []}


def test_top_level_is_small_and_every_name_resolves() -> None:
    assert len(kdcache.__all__) <= 16
    assert all(getattr(kdcache, name) is not None for name in kdcache.__all__)
    assert set(kdcache.__all__) <= set(dir(kdcache))
    assert kdcache.__version__ == importlib.metadata.version("kdcache")


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("TextDataset", "kdcache.datasets"),
        ("logit_hint", "kdcache.losses"),
        ("store_stats", "kdcache.tools"),
        ("World", "kdcache.train"),
    ],
)
def test_names_that_left_the_top_level_warn_and_resolve(name: str, home: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"kdcache\.{name} is deprecated: use {home}\.{name} "):
        value = getattr(kdcache, name)
    assert value is getattr(importlib.import_module(home), name)


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
            _ = kdcache.no_such_thing


def test_a_loaded_subpackage_does_not_shadow_its_function() -> None:
    found = fresh("import kdcache.precompute.local\nimport kdcache\nfound['kind'] = type(kdcache.precompute).__name__")
    assert found == {"kind": "function"}
