"""What kdcache prints and writes for people: rich tables in the terminal, markdown tables, JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdcache.atomic import atomic_write_text


def console() -> Console:
    """A rich console; wide when output is piped, so tables in logs and files are not truncated."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def render_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print a table to the terminal."""
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="right" if column != header[0] else "left")
    for row in rows:
        table.add_row(*row)
    console().print(table)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as sorted, indented JSON, atomically: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
