"""Versions of the libraries that shape a store's bytes, recorded in its manifest."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

RECORDED = ("kdcache", "zarr", "numcodecs", "numpy", "torch")


def library_versions() -> dict[str, str]:
    found = {}
    for name in RECORDED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
