"""YAML read within bounds: pipeline files are shared between teams, so a file is untrusted input.

``yaml.safe_load`` constructs no objects, but it still expands aliases lazily into shared references: a 600-byte
"billion laughs" file in ``teacher.model.args`` loads at once and then takes minutes and gigabytes in everything that
walks it (validation, fingerprints, JSON). Here a document is refused, with a :class:`ConfigError` naming the file and
the limit, when its expansion (every alias counted as a full copy of what it names) exceeds :data:`MAX_NODES`
nodes, when it nests deeper than :data:`MAX_DEPTH` levels, or when the file is larger than :data:`MAX_BYTES`.
Real pipelines are a few KB, a few hundred nodes and less than 10 levels deep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdcache.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 100


class _Refused(yaml.YAMLError):
    """A bound was crossed; the message says which."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting while it scans and an alias bomb before constructing."""

    def fetch_flow_collection_start(self, token_class: Any) -> None:  # ``[`` and ``{``
        super().fetch_flow_collection_start(token_class)
        if self.flow_level > MAX_DEPTH:
            raise _Refused(f"it nests deeper than {MAX_DEPTH} levels")

    def add_indent(self, column: int) -> bool:  # block mappings and sequences
        added = super().add_indent(column)
        if len(self.indents) > MAX_DEPTH:
            raise _Refused(f"it nests deeper than {MAX_DEPTH} levels")
        return added

    def compose_document(self) -> Any:
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_NODES:
            raise _Refused(f"its aliases expand to more than {MAX_NODES:,} values (an alias bomb)")
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded, counted once per node object (so a bomb costs its size)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_NODES + 1  # a recursive alias expands without end
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML from ``where`` (a file, an override) within the bounds; invalid YAML is a :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # BoundedLoader is a SafeLoader subclass: no object tags
    except _Refused as exc:
        raise ConfigError(
            f"{where} is refused: {exc}; kdcache reads pipelines of at most {MAX_BYTES:,} bytes, {MAX_NODES:,} values "
            f"and {MAX_DEPTH} levels. Write the values out without the aliases, or split the file"
        ) from None
    except RecursionError:
        raise ConfigError(f"{where} is refused: it nests deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None


def read_yaml_file(path: Path) -> Any:
    """The YAML document of ``path``, which must be a regular file of at most :data:`MAX_BYTES` bytes."""
    if not path.is_file():
        raise ConfigError(f"pipeline file {str(path)!r} does not exist (or is not a regular file)")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(
            f"pipeline file {str(path)!r} is {size:,} bytes, over the {MAX_BYTES:,}-byte limit for pipelines (real "
            "ones are a few KB); it is not a pipeline, or split it"
        )
    with path.open(encoding="utf-8") as f:
        return load_yaml(f.read(MAX_BYTES + 1), str(path))  # a file grown since the check stays bounded
