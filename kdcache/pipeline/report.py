"""Plots people would rather see than read: test metric curves of training runs, and a store's bytes per sample
by teacher and array, saved as PNG."""

from __future__ import annotations

from pathlib import Path

from kdcache.metrics import LOWER_IS_BETTER, METRIC_TITLES
from kdcache.store import StoreReader
from kdcache.train import TrainResult


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

    scale, unit = (1, "") if metric in LOWER_IS_BETTER else (100, " (%)")  # perplexity is plotted as it is
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, result in runs.items():
        xs = [e.epoch + 1 for e in result.history if metric in e.metrics]
        ys = [scale * e.metrics[metric] for e in result.history if metric in e.metrics]
        ax.plot(xs, ys, label=name, marker="o", markersize=2.5, linewidth=1.4)
    for name, value in (reference or {}).items():
        ax.axhline(scale * value, linestyle="--", linewidth=1, color="gray", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {METRIC_TITLES.get(metric, metric)}{unit}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


SHARED = "shared by all teachers"
OVERHEAD = "metadata, manifests, locks"


def storage_breakdown(cache: StoreReader) -> dict[str, dict[str, float]]:
    """Bytes per sample on disk: each teacher's arrays (``logits``, ``logits_topk/values``, ...), the arrays every teacher
    shares (labels, view parameters), and the rest of the store (zarr.json files, manifests), which the rows sum to.
    """
    m, n = cache.manifest, max(cache.num_samples, 1)
    rows: dict[str, dict[str, float]] = {}
    for name, teacher in sorted(m.teachers.items()):
        rows[name] = {
            rel: cache.array_bytes(rec.path) / n
            for target in teacher.targets.values()
            for rel, rec in sorted(target.arrays.items())
        }
    shared = {path: cache.array_bytes(path) / n for path in sorted(m.samples.arrays)}
    counted = sum(sum(row.values()) for row in rows.values()) + sum(shared.values())
    rows[SHARED] = {**shared, OVERHEAD: cache.location.disk_usage() / n - counted}
    return rows


def plot_storage(cache: StoreReader, path: Path) -> Path:
    """Horizontal stacked bars of :func:`storage_breakdown`, one bar per teacher and one for the shared part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = storage_breakdown(cache)
    parts = sum(len(r) for r in rows.values())
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.5 * len(rows) + 0.18 * parts))
    cmap = plt.get_cmap("tab20")
    colors = iter([cmap(i) for i in range(cmap.N)] * 4)
    widest = 0.0
    for y, (row, sizes) in enumerate(rows.items()):
        left = 0.0
        for part, size in sizes.items():
            ax.barh(y, size, left=left, color=next(colors), edgecolor="black", linewidth=0.4, label=f"{row}: {part}")
            left += size
        ax.annotate(f"{left:,.1f} B", (left, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        widest = max(widest, left)
    ax.set_xlim(0, 1.18 * widest)  # room for the totals
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlabel("bytes on disk per sample")
    total = round(sum(sum(r.values()) for r in rows.values()) * max(cache.num_samples, 1))  # the bars sum to the store
    ax.set_title(f"{cache.url}\n{total:,} bytes, {cache.num_samples:,} samples", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / len(rows)), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
