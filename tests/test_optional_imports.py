"""The language-model extra is optional: importing kdcache, its pipelines and its CLI (the vision path) never
imports ``transformers``, ``tokenizers`` or ``datasets``; they load only when a text dataset or a causal LM is built."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

LM_LIBRARIES = ("transformers", "tokenizers", "datasets")


def loaded_after(code: str) -> list[str]:
    """The LM libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(LM_LIBRARIES)!r})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_kdcache_does_not_import_transformers() -> None:
    assert loaded_after("import kdcache, kdcache.cli, kdcache.pipeline, kdcache.tools.bench") == []


def test_the_vision_path_does_not_import_transformers() -> None:
    code = (
        "from kdcache.pipeline import load_pipeline, plan_storage\n"
        "plan_storage(load_pipeline('pipelines/digits_kd.yaml'))"
    )
    assert loaded_after(code) == []


def test_a_causal_lm_imports_transformers_when_built() -> None:
    code = (
        "from kdcache.models import build_model\n"
        "build_model('causal-lm', 64, {'config': {'model_type': 'gpt2', 'n_layer': 1, 'n_embd': 16, 'n_head': 2}})"
    )
    assert "transformers" in loaded_after(code)
