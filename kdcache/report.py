"""Reports people read: result tables (terminal and markdown) and plots saved as PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdcache.metrics import METRIC_TITLES
from kdcache.train import TrainResult


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def plot_curves(
    runs: dict[str, TrainResult],
    path: Path,
    *,
    metric: str = "accuracy",
    reference: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """Test ``metric`` per epoch of each run, with horizontal reference lines (e.g. the teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, result in runs.items():
        xs = [e.epoch + 1 for e in result.history if metric in e.metrics]
        ys = [100 * e.metrics[metric] for e in result.history if metric in e.metrics]
        ax.plot(xs, ys, label=name, marker="o", markersize=2.5, linewidth=1.4)
    for name, value in (reference or {}).items():
        ax.axhline(100 * value, linestyle="--", linewidth=1, color="gray", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {METRIC_TITLES.get(metric, metric)} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
