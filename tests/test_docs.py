"""The documentation names things that exist: every ``kdcache.…`` path in README.md and docs/ imports, and every
name docs/api.md lists at the head of an entry is exported by ``kdcache`` (or by the package it names)."""

from __future__ import annotations

import importlib
import re

import pytest

import kdcache
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "pipelines" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bkdcache(?:\.[A-Za-z_]\w*)+")
KEYS = {"kdcache.manifest.json", "kdcache.manifest", "kdcache.target", "kdcache.train_state", "kdcache.spec"}
"""Names of files, HDF5 attributes and safetensors metadata keys, not Python paths."""
ENTRY = re.compile(r"^(?:\* )?`([A-Za-z_][\w.]*)\(", re.M)


def resolve(path: str) -> object:
    """The module or attribute a dotted ``kdcache.…`` path names."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(path)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_dotted_kdcache_path_resolves(doc) -> None:
    paths = sorted({m.rstrip(".") for m in DOTTED.findall(doc.read_text())} - KEYS)
    missing = []
    for path in paths:
        try:
            resolve(path)
        except (ModuleNotFoundError, AttributeError):
            missing.append(path)
    assert missing == []


def test_api_entries_are_exported() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    names = sorted(set(ENTRY.findall(text)))
    assert len(names) > 25
    missing = []
    for name in names:
        head, *rest = name.split(".")
        if head == "kdcache":
            continue  # dotted paths are checked above
        if head not in kdcache.__all__:
            missing.append(name)
            continue
        found: object = getattr(kdcache, head)
        for attribute in rest:
            if not hasattr(found, attribute):
                missing.append(name)
    assert missing == []
