"""Statistics of a store's cached teachers (``kdcache stats``), computed out of core with dask arrays.

Each teacher's ``logits`` array is opened with ``dask.array.from_zarr`` in blocks of one shard, decoded block by
block with the target's own decoder, and reduced in one pass: memory holds a few shards, never the whole array.
Every (sample, view) pair counts once, with its sample's label (``samples/label``), as for the manifest's accuracy.
Probabilities are softmax(z / T) (T = 1 unless asked).

* accuracy: the fraction of pairs whose arg-max is the label; per-class accuracy the same within each label.
* mean entropy: the mean of −Σ_c p_c log p_c, in nats.
* expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3): confidences
  (max_c p_c) in M equal-width bins B_m = ((m−1)/M, m/M] (a confidence of 0 joins the first);
  ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|. The reliability diagram plots acc(B_m) against the bins.
* top-k mass: the mean probability mass of the k most likely classes (k = 1, 5 where the store has more classes) —
  how much of the distribution a top-k encoding would keep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.errors import ConfigError, StoreFormatError, StoreMismatchError
from kdcache.store import StoreReader, open_store
from kdcache.targets import Target, build_target

DEFAULT_BINS = 15
TOP_K = (1, 5)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class TeacherStats:
    """One cached teacher's statistics over every (sample, view) pair of the store."""

    teacher: str
    temperature: float
    pairs: int
    accuracy: float
    mean_entropy: float
    ece: float
    bins: list[ReliabilityBin]
    per_class_accuracy: list[float | None]
    top_k_mass: dict[int, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def store_stats(
    store: str | StoreReader, *, temperature: float = 1.0, bins: int = DEFAULT_BINS, progress: bool = True
) -> list[TeacherStats]:
    """Statistics of every teacher in ``store`` that cached ``logits``, teacher by teacher.

    >>> [s.accuracy for s in store_stats("runs/digits_kd/cache/train.zarr")]  # doctest: +SKIP
    [0.9992]
    """
    if temperature <= 0 or bins < 1:
        raise ConfigError(f"stats need a temperature > 0 and at least one bin; got T={temperature}, bins={bins}")
    cache = store if isinstance(store, StoreReader) else open_store(store)
    labels = cache.manifest.samples.arrays.get("samples/label")
    if labels is None:
        raise StoreMismatchError(
            f"store {cache.url!r} has no samples/label array (a dataset without class labels); accuracy and "
            "calibration need one label per sample"
        )
    names = [n for n in cache.teachers if "logits" in cache.teacher(n).targets]
    if not names:
        raise StoreMismatchError(f"store {cache.url!r} has no teacher with a logits target; it holds {cache.teachers}")
    return [_teacher_stats(cache, name, temperature, bins, progress) for name in names]


def _teacher_stats(cache: StoreReader, name: str, temperature: float, bins: int, progress: bool) -> TeacherStats:
    import dask
    import dask.array as da
    from tqdm.dask import TqdmCallback

    cache.require_complete(name)
    target = cache.teacher(name).targets["logits"]
    ((rel, record),) = target.arrays.items()
    if len(record.shape) != 3:
        raise StoreFormatError(
            f"store {cache.url!r}: teacher {name!r} logits have shape {record.shape}; stats cover classification "
            "logits (samples, views, classes)"
        )
    n, v, c = record.shape
    shard = cache.manifest.shard_samples
    decoder = build_target(target.kind, target.params)
    stored = da.from_zarr(cache.open_array(record.path), chunks=(shard, v, c))
    z = stored.map_blocks(_decode, decoder, rel, dtype=np.float64).reshape(n * v, c) / temperature
    label_array = cache.open_array("samples/label")
    labels = da.repeat(da.from_zarr(label_array, chunks=(shard,)), v)  # row s*V + j holds sample s, view j

    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - da.log(da.exp(shifted).sum(axis=1, keepdims=True))
    p = da.exp(log_p)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    bin_id = da.clip(da.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ks = [k for k in TOP_K if k < c]
    parts = {
        "correct": correct.sum(),
        "entropy": -(p * log_p).sum(axis=1).sum(),
        "bin_count": da.bincount(bin_id, minlength=bins),
        "bin_conf": da.bincount(bin_id, weights=confidence, minlength=bins),
        "bin_hits": da.bincount(bin_id, weights=correct, minlength=bins),
        "class_count": da.bincount(labels, minlength=c),
        "class_hits": da.bincount(labels, weights=correct, minlength=c),
        **{f"top{k}": da.topk(p, k, axis=1).sum() for k in ks},
    }
    with TqdmCallback(desc=f"stats {name}", disable=not progress):
        (values,) = dask.compute(parts)
    if len(values["class_count"]) != c:
        raise StoreMismatchError(f"store {cache.url!r}: samples/label holds labels outside 0..{c - 1}")
    pairs = n * v
    return TeacherStats(
        teacher=name,
        temperature=temperature,
        pairs=pairs,
        accuracy=float(values["correct"]) / pairs,
        mean_entropy=float(values["entropy"]) / pairs,
        ece=float(np.abs(values["bin_hits"] - values["bin_conf"]).sum()) / pairs,
        bins=_bins(values["bin_count"], values["bin_conf"], values["bin_hits"]),
        per_class_accuracy=[_ratio(h, k) for h, k in zip(values["class_hits"], values["class_count"], strict=True)],
        top_k_mass={k: float(values[f"top{k}"]) / pairs for k in ks},
    )


def _decode(block: np.ndarray, target: Target, rel: str) -> np.ndarray:
    """Stored rows -> float64 logits, through the target's own decoder (fp16, bf16 bits, fp32 alike)."""
    return target.decode({rel: torch.from_numpy(np.ascontiguousarray(block))}).numpy().astype(np.float64)


def _bins(count: np.ndarray, conf: np.ndarray, hits: np.ndarray) -> list[ReliabilityBin]:
    m = len(count)
    return [
        ReliabilityBin(i / m, (i + 1) / m, int(count[i]), _ratio(conf[i], count[i]), _ratio(hits[i], count[i]))
        for i in range(m)
    ]


def _ratio(part: float, whole: float) -> float | None:
    return float(part) / float(whole) if whole else None


def _filled(bins: list[ReliabilityBin]) -> tuple[list[float], list[float], list[float]]:
    """Lower edge, accuracy and mean confidence of the bins that hold pairs (the ones a diagram draws)."""
    lower: list[float] = []
    accuracy: list[float] = []
    confidence: list[float] = []
    for b in bins:
        if not b.count:
            continue
        if b.accuracy is None or b.confidence is None:
            raise ValueError(f"reliability bin ({b.lower:g}, {b.upper:g}] holds {b.count} pairs but no ratios")
        lower.append(b.lower)
        accuracy.append(b.accuracy)
        confidence.append(b.confidence)
    return lower, accuracy, confidence


def plot_reliability(stats: list[TeacherStats], path: Path) -> Path:
    """Reliability diagrams, one panel per teacher: accuracy per confidence bin against the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stats), figsize=(4.2 * len(stats), 4.2), squeeze=False)
    for ax, s in zip(axes[0], stats, strict=True):
        width = 1.0 / len(s.bins)
        lower, accuracy, confidence = _filled(s.bins)
        ax.bar(
            lower,
            accuracy,
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        ax.bar(
            lower,
            [abs(c - a) for a, c in zip(accuracy, confidence, strict=True)],
            bottom=[min(a, c) for a, c in zip(accuracy, confidence, strict=True)],
            width=width,
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            linewidth=0.5,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{s.teacher}: ECE {100 * s.ece:.2f}% (T={s.temperature:g})")
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_stats(
    store: str, out: Path, *, temperature: float = 1.0, bins: int = DEFAULT_BINS, progress: bool = True
) -> list[TeacherStats]:
    """``kdcache stats``: compute, print a table per teacher, write ``stats.json`` and ``reliability.png`` to ``out``."""
    from kdcache.tables import render_table, write_json

    stats = store_stats(store, temperature=temperature, bins=bins, progress=progress)
    ks = sorted({k for s in stats for k in s.top_k_mass})
    header = [
        "teacher",
        "pairs",
        "accuracy",
        "mean entropy (nats)",
        f"ECE ({bins} bins)",
        *(f"top-{k} mass" for k in ks),
    ]
    rows = [
        [s.teacher, f"{s.pairs:,}", _pct(s.accuracy), f"{s.mean_entropy:.4f}", _pct(s.ece)]
        + [_pct(s.top_k_mass.get(k)) for k in ks]
        for s in stats
    ]
    render_table(f"{store} (T={temperature:g})", header, rows)
    classes = len(stats[0].per_class_accuracy)
    render_table(
        "per-class accuracy",
        ["teacher", *map(str, range(classes))],
        [[s.teacher, *map(_pct, s.per_class_accuracy)] for s in stats],
    )
    write_json(out / "stats.json", {"store": store, "teachers": [s.to_json() for s in stats]})
    plot_reliability(stats, out / "reliability.png")
    print(f"wrote {out / 'stats.json'} and {out / 'reliability.png'}")
    return stats


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
