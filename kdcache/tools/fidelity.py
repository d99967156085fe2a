"""What each logits encoding costs and loses, measured on real stores (``kdcache fidelity``).

For a teacher with C classes, one store is written holding the same logits as dense fp16, int8 and top-k for
several k. Each encoding is read back through the normal stage-two path and compared with the teacher's float32
distribution at temperature T: mean KL(p_T ‖ p̂_T), and for top-k the probability mass the kept classes carry. A
top-k encoding is turned into a full distribution by spreading the exact tail mass evenly over the other classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdcache.datasets import DIGITS_FILE, HDF5Dataset, SampleDataset, TensorDataset
from kdcache.losses import kd_divergence, topk_kd_divergence
from kdcache.models import build_model
from kdcache.precompute import precompute
from kdcache.store import StoreReader, open_store, row_nbytes
from kdcache.tables import markdown_table, render_table, write_json
from kdcache.targets import Target, TopKLogits, build_target
from kdcache.train import CachedDataset, ViewDataset
from kdcache.views import Views, ViewTransform

TOP_K = (1, 5, 10, 20)


def reconstruct(decoded: torch.Tensor | TopKLogits, temperature: float, num_classes: int) -> torch.Tensor:
    """Probabilities at ``temperature`` from a decoded target; top-k tails are spread evenly."""
    if not isinstance(decoded, TopKLogits):
        return F.softmax(decoded / temperature, dim=1)
    top = (decoded.values / temperature - decoded.lse_at(temperature)[:, None]).exp()
    k = top.shape[1]
    tail = (1 - top.sum(dim=1, keepdim=True)).clamp_min(0) / max(num_classes - k, 1)
    probs = tail.expand(-1, num_classes).clone()
    return probs.scatter(1, decoded.indices, top)


def mean_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over rows of KL(p ‖ q), with 0·log 0 = 0 and q floored at 1e-30."""
    return float(torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), 0.0).sum(1).mean())


def gaussian_classes(num_classes: int, num_samples: int, *, seed: int = 0) -> TensorDataset:
    """Generated 1x8x8 inputs: one Gaussian blob per class around a random prototype (for wide teachers)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, size=(num_classes, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(num_classes, size=num_samples)
    inputs = np.clip(prototypes[labels] + rng.normal(0, 0.25, size=(num_samples, 1, 8, 8)), 0, 1).astype(np.float32)
    return TensorDataset(
        torch.from_numpy(inputs),
        torch.from_numpy(labels),
        split="train",
        source={"kind": "gaussian-classes", "classes": num_classes, "seed": seed},
    )


def train_teacher(
    dataset: SampleDataset, num_classes: int, views: Views, *, epochs: int, seed: int, hidden: int = 256
) -> torch.nn.Module:
    """A digits-mlp (hidden 256: the teacher) trained with cross-entropy: realistic, peaked-but-not-onehot logits;
    with a small ``hidden`` and few epochs, a student part-way through training."""
    torch.manual_seed(seed)
    model = build_model("digits-mlp", num_classes, {"hidden": hidden})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = ViewDataset(dataset, views)
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch_indices in np.array_split(order.permutation(len(dataset)), max(1, len(dataset) // 128)):
            batch = data[batch_indices]
            loss = F.cross_entropy(model(batch.inputs), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def measure(
    num_classes: int, workdir: Path, *, temperatures: tuple[float, ...] = (1.0, 4.0), seed: int = 0, samples: int = 4096
) -> list[dict]:
    """Rows of (encoding, bytes/sample on disk, mean KL at each T, top-k mass kept) for one class count."""
    if num_classes == 10:
        dataset: SampleDataset = HDF5Dataset(DIGITS_FILE, "train")
        source = "digits (UCI, 1,257 train samples), digits-mlp teacher"
    else:
        dataset = gaussian_classes(num_classes, samples, seed=seed)
        source = f"generated Gaussian classes ({samples} samples), digits-mlp teacher"
    views = ViewTransform(count=1, seed=seed, mean=(0.5,), std=(0.25,))
    teacher = train_teacher(dataset, num_classes, views, epochs=15, seed=seed)
    specs: dict[str, dict[str, object]] = {"dense fp16": {"dtype": "float16"}, "int8": {"encoding": "int8"}}
    specs |= {
        f"top-{k}": {"encoding": "topk", "k": k, "temperatures": list(temperatures)} for k in TOP_K if k < num_classes
    }
    targets = {label: build_target("logits", params) for label, params in specs.items()}
    # top-k targets of different k would share a name: store each under its own teacher name
    store = workdir / f"fidelity-{num_classes}.zarr"
    for label, target in targets.items():
        precompute(
            teacher,
            dataset,
            str(store),
            targets=[target],
            views=views,
            num_classes=num_classes,
            teacher_name=label.replace(" ", "-"),
            progress=False,
        )
    cache = open_store(str(store))
    inputs = ViewDataset(dataset, views)[np.arange(len(dataset))].inputs
    student = train_teacher(dataset, num_classes, views, epochs=3, seed=seed + 1, hidden=32)
    with torch.no_grad():
        live, student_logits = teacher(inputs), student(inputs)
    head = {"classes": num_classes, "source": source}
    return [
        {**head, **_encoding_row(cache, dataset, views, label, target, live, student_logits, temperatures)}
        for label, target in targets.items()
    ]


def _encoding_row(
    cache: StoreReader,
    dataset: SampleDataset,
    views: Views,
    label: str,
    target: Target,
    live: torch.Tensor,
    student: torch.Tensor,
    temperatures: tuple[float, ...],
) -> dict:
    """Bytes, KL to the live distribution, and for top-k the mass kept and the share of the KD loss kept."""
    name = label.replace(" ", "-")
    everything = np.arange(len(dataset))
    decoded = CachedDataset(dataset, cache, teacher=name, targets=[target.name], views=views)[everything].to("cpu")
    value = decoded.targets[target.name]
    arrays = cache.teacher(name).targets[target.name].arrays.values()
    row = {
        "encoding": label,
        "raw_bytes_per_sample": sum(row_nbytes(tuple(a.shape[1:]), a.dtype) for a in arrays),
        "bytes_per_sample": sum(cache.array_bytes(a.path) for a in arrays) / len(dataset),
    }
    for t in temperatures:
        p = F.softmax(live / t, dim=1)
        row[f"kl_T{t:g}"] = mean_kl(p, reconstruct(value, t, live.shape[1]))
        if isinstance(value, TopKLogits):
            row[f"mass_T{t:g}"] = float(p.gather(1, value.indices).sum(1).mean())
            # the k+1-bin KD loss against the full one, for a student part-way through training: a lower bound
            row[f"kd_kept_T{t:g}"] = float(topk_kd_divergence(student, value, t) / kd_divergence(student, live, t))
    return row


def fidelity_table(class_counts: list[int], workdir: Path, *, progress: bool = True) -> list[dict]:
    """:func:`measure` for each class count."""
    workdir.mkdir(parents=True, exist_ok=True)
    return [row for c in tqdm(class_counts, desc="fidelity", disable=not progress) for row in measure(c, workdir)]


def report_fidelity(classes: list[int], out: Path, *, progress: bool = True) -> list[dict]:
    """``kdcache fidelity``: measure, print the table, write ``fidelity.md`` and ``fidelity.json`` to ``out``."""
    rows = fidelity_table(classes, out, progress=progress)
    header = [
        "classes",
        "encoding",
        "bytes/sample (raw)",
        "bytes/sample (disk)",
        "KL T=1",
        "KL T=4",
        "mass kept T=1",
        "mass kept T=4",
        "KD loss kept T=1",
        "KD loss kept T=4",
    ]
    table = [
        [
            str(r["classes"]),
            r["encoding"],
            str(r["raw_bytes_per_sample"]),
            f"{r['bytes_per_sample']:.1f}",
            f"{r['kl_T1']:.2e}",
            f"{r['kl_T4']:.2e}",
            _pct(r.get("mass_T1")),
            _pct(r.get("mass_T4")),
            _pct(r.get("kd_kept_T1")),
            _pct(r.get("kd_kept_T4")),
        ]
        for r in rows
    ]
    render_table("logits encodings: size and fidelity", header, table)
    sources = sorted({f"{r['classes']} classes: {r['source']}" for r in rows})
    (out / "fidelity.md").write_text(markdown_table(header, table) + "\n" + "\n".join(f"* {s}" for s in sources) + "\n")
    write_json(out / "fidelity.json", rows)
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"
