"""Markdown tables render as tables: a separator row follows each header, every row has the header's number of
cells, and a pipe inside a cell is escaped (``\\|``; GitHub splits cells on a bare pipe even inside backticks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [
    ROOT / "README.md",
    ROOT / "pipelines" / "README.md",
    ROOT / "tests" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
SEPARATOR = re.compile(r"^\|?(\s*:?-+:?\s*\|)*\s*:?-+:?\s*\|?$")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def cells(row: str) -> int:
    """How many cells a table row has when split on unescaped pipes (leading and trailing pipes are borders)."""
    parts = UNESCAPED_PIPE.split(row.strip())
    return len(parts) - (parts[0].strip() == "") - (parts[-1].strip() == "" and len(parts) > 1)


def tables(text: str) -> list[list[tuple[int, str]]]:
    """Runs of lines starting with a pipe, outside fenced code, with their 1-based line numbers."""
    found: list[list[tuple[int, str]]] = []
    fenced, current = False, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            current.append((number, line.strip()))
            continue
        if current:
            found.append(current)
        current = []
    return found + ([current] if current else [])


def table_problems(text: str, name: str) -> list[str]:
    problems = []
    for table in tables(text):
        (first, header), rest = table[0], table[1:]
        width = cells(header)
        if not rest or not SEPARATOR.match(rest[0][1]):
            problems.append(f"{name}:{first}: the table header is not followed by a separator row (|---|---|)")
            continue
        for number, row in rest:
            if cells(row) != width:
                problems.append(
                    f"{name}:{number}: {cells(row)} cells, the header has {width} (escape a pipe "
                    f"inside a cell as \\|): {row[:80]}"
                )
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_tables_are_well_formed(doc: Path) -> None:
    assert table_problems(doc.read_text(), str(doc.relative_to(ROOT))) == []


def test_the_table_lint_can_fail() -> None:
    text = "\n".join(
        [
            "| a | b |",
            "|---|---|",
            "| `x \\| y` | ok |",
            "| `none|cached` | raw pipe |",
            "",
            "```",
            "| not | a | table |",
            "```",
            "| no | separator |",
            "| c | d |",
        ]
    )
    assert table_problems(text, "t.md") == [
        "t.md:4: 3 cells, the header has 2 (escape a pipe inside a cell as \\|): | `none|cached` | raw pipe |",
        "t.md:9: the table header is not followed by a separator row (|---|---|)",
    ]
