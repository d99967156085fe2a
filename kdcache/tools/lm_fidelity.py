"""``kdcache fidelity --store``: what a language model's stored token targets cost and keep, on the user's own store.

For each token target of a store: bytes per token on disk (its arrays' committed shards over the store's token
positions) and laid out; for top-k, the mass of the kept tokens and the tail outside them at every stored
temperature, from the stored values alone (mean and 90th percentile over labelled positions); and the KL kept
against the live teacher's full logits (:mod:`kdcache.tools.token_fidelity`: the ``token_kd`` divergence of the
student to the decoded stored target over its divergence to the full logits, summed over labelled positions only:
label −100, i.e. padding and, for chat data, every position without an assistant label, counts nowhere). Beside
them, every encoding of :data:`~kdcache.tools.token_fidelity.ENCODINGS`, the narrowest packed ids and sampled tokens,
re-encoded from the live logits at the store's k and temperatures: what each would keep on this teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcache.checkpoint import load_model
from kdcache.datasets.base import SampleDataset
from kdcache.datasets.items import as_sample_dataset
from kdcache.datasets.text import tokens_per_sample
from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.pipeline import DistillConfig
from kdcache.pipeline.build import build_student, device_of
from kdcache.pipeline.cached import cached_train_split
from kdcache.store import Requirements, StoreReader, open_store
from kdcache.store.layout import owner_of_teacher
from kdcache.targets import SampledTokens, Target, TargetExtractor, TokenTopK, build_target
from kdcache.targets.tokens import TokenLogitsParams
from kdcache.tools.recompute import pipeline_teacher, same_teacher, sample_pairs
from kdcache.tools.recompute_kinds import kind_label, params_as
from kdcache.tools.token_fidelity import (
    ENCODINGS,
    IGNORE_INDEX,
    Scored,
    TokenBatch,
    bytes_per_token,
    kl_sums,
    live_decoder,
)
from kdcache.views import TokenViews


def tail_mass(decoded: TokenTopK) -> torch.Tensor:
    """``(..., len(temperatures))`` float64: 1 − Σ of the kept tokens' p_T = exp(log p / T − lse_T), at each T."""
    values, lse = decoded.values.double(), decoded.lse.double()
    return torch.stack(
        [1 - (values / t - lse[..., m : m + 1]).exp().sum(-1) for m, t in enumerate(decoded.temperatures)], dim=-1
    )


def temperatures_of(target: Target) -> tuple[float, ...]:
    """The temperatures a token target is exact at: top-k's declared ones, or the one sampled tokens were drawn at."""
    p = params_as(target, TokenLogitsParams)
    return (p.sample_temperature,) if p.encoding == "sampled" else tuple(p.temperatures)


def on_device(decoded: TokenTopK | SampledTokens, device: torch.device) -> TokenTopK | SampledTokens:
    """``decoded`` with every tensor on ``device``."""
    if isinstance(decoded, TokenTopK):
        return dataclasses.replace(
            decoded, values=decoded.values.to(device), indices=decoded.indices.to(device), lse=decoded.lse.to(device)
        )
    return dataclasses.replace(decoded, ids=decoded.ids.to(device), counts=decoded.counts.to(device))


class StoredTokens:
    """One token target as ``cache`` holds it, read at each batch's rows and decoded; a top-k target records the
    tail mass of every labelled position it decodes (:attr:`tails`, ``(positions, len(temperatures))``)."""

    def __init__(self, cache: StoreReader, teacher_name: str, name: str) -> None:
        record = cache.teacher(teacher_name).targets[name]
        self.name, self.target = name, build_target(record.kind, record.params)
        owner = owner_of_teacher(teacher_name)
        self.readers = {rel: cache.array_reader(a, owner, in_memory=False) for rel, a in record.arrays.items()}
        self.disk_bytes = sum(cache.array_bytes(a.path) for a in record.arrays.values())
        self.tails: list[np.ndarray] = []

    def __call__(self, live: torch.Tensor, batch: TokenBatch) -> TokenTopK | SampledTokens:
        if batch.rows is None:
            raise TargetMismatchError(
                f"stored target {self.name!r} is read at the store rows of a batch, and this batch has none: make "
                "the batches with token_batches (a TokenBatch with rows)"
            )
        views = np.zeros(len(batch.rows), dtype=np.int64)
        arrays = {
            rel: torch.from_numpy(np.ascontiguousarray(r.read_rows(batch.rows, views)))
            for rel, r in self.readers.items()
        }
        decoded = self.target.decode(arrays)
        if isinstance(decoded, TokenTopK):
            self.tails.append(tail_mass(decoded)[batch.labels != IGNORE_INDEX].numpy())
        return on_device(decoded, live.device)


def alternatives(stored: list[StoredTokens], vocab: int) -> list[tuple[str, Target]]:
    """Every encoding of :data:`ENCODINGS` at the store's first top-k target's k and temperatures (k = 32 without
    one), the narrowest packed ids for ``vocab``, and sampled tokens (the store's n, else k) at each temperature."""
    params = [params_as(s.target, TokenLogitsParams) for s in stored]
    topk = next((p for p in params if p.encoding == "topk"), None)
    sampled = next((p for p in params if p.encoding == "sampled"), None)
    if topk is not None:
        k, temperatures = topk.top_k, list(topk.temperatures)
    elif sampled is not None:
        k, temperatures = min(32, vocab), [sampled.sample_temperature]
    else:
        raise ConfigError("alternatives need at least one stored token target to take k and temperatures from")
    bits = max(1, (vocab - 1).bit_length())
    encodings = dict(ENCODINGS)
    if bits != 17:
        encodings |= {
            f"{bits}-bit ids (narrowest)": {"index_bits": bits},
            f"7-bit values + {bits}-bit ids": {"value_bits": 7, "index_bits": bits},
        }
    made = [
        (label, build_target("token_logits", {"k": k, "temperatures": temperatures, **params}))
        for label, params in encodings.items()
    ]
    n = sampled.draws if sampled else k
    return made + [
        (
            f"{n} sampled tokens",
            build_target("token_logits", {"encoding": "sampled", "samples": n, "sample_temperature": t}),
        )
        for t in temperatures
    ]


def token_batches(
    cache: StoreReader, dataset: SampleDataset, sequences: int, seed: int, batch_size: int
) -> list[TokenBatch]:
    """``sequences`` random rows of ``cache`` (sorted: chunk-sequential reads), in batches, with the dataset's ids and
    labels for them."""
    rows, _ = sample_pairs(cache.num_samples, 1, sequences, seed)
    index, views = cache.sample_index(), TokenViews()
    batches = []
    for b in range(0, len(rows), batch_size):
        r = rows[b : b + batch_size]
        made = views.batch(dataset, index[r], np.zeros(len(r), dtype=np.int64))
        batches.append(TokenBatch(made.inputs, made.labels, index[r], r))
    return batches


def _kept(sums: dict[tuple[str, float], float], label: str, temperatures: tuple[float, ...]) -> dict[str, float]:
    return {f"T={t:g}": sums[label, t] / sums["full", t] for t in temperatures}


def _logits(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as ids → ``(B, L, V)`` logits on ``device`` (a raw ``transformers`` model's output ``.logits``)."""
    model.to(device).eval()
    return lambda ids: getattr(out := model(ids.to(device)), "logits", out)


def store_fidelity(
    cache: StoreReader,
    teacher: nn.Module,
    student: nn.Module,
    dataset: SampleDataset,
    *,
    teacher_name: str,
    sequences: int,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    student_name: str = "student",
    fingerprint: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The fidelity report (a JSON-ready dict) of every token target ``cache`` holds for ``teacher_name``, measured
    over ``sequences`` random sequences of ``dataset`` (the data the store was cached from) with the live
    ``teacher`` and ``student``.

    >>> report = store_fidelity(open_store(url), teacher, student, train, teacher_name="gpt2", sequences=64)  # doctest: +SKIP
    >>> report["targets"][0]["KL kept"]["T=1"], report["targets"][0]["tail"]["T=1"]["mean"]
    (0.5068, 0.3267)
    """
    cache.require(Requirements(teachers=(teacher_name,), views=TokenViews().spec()))
    tokens = tokens_per_sample(cache.manifest.dataset.get("source", {}))
    if tokens is None:
        raise ConfigError(f"kdcache fidelity --store needs a store of text; {cache.url} was cached from other data")
    stored, vocab = _token_targets(cache, teacher_name)
    others = alternatives(stored, vocab)
    scored = [Scored(s.name, s, temperatures_of(s.target)) for s in stored]
    scored += [Scored(label, live_decoder(t), temperatures_of(t)) for label, t in others]
    temperatures = sorted({t for s in scored for t in s.temperatures})
    batches = token_batches(cache, as_sample_dataset(dataset), sequences, seed, batch_size)
    labelled = sum(int((b.labels != IGNORE_INDEX).sum()) for b in batches)
    read = sum(len(b.samples) for b in batches)
    if labelled == 0:
        raise ConfigError(
            f"kdcache fidelity --store measures over labelled positions, and the {read} "
            f"sequence(s) of {cache.url} read (--sequences {sequences}) have none: ask for more sequences"
        )
    device = torch.device(device)
    with TargetExtractor(teacher, [s.target for s in stored], device) as extract:
        sums = kl_sums(lambda ids: extract(ids)[0], _logits(student, device), batches, scored, temperatures, progress)
    positions = cache.num_samples * tokens
    matches = None if fingerprint is None else same_teacher(fingerprint, cache.teacher(teacher_name).fingerprint)
    return {
        "store": cache.url,
        "teacher": teacher_name,
        "student": student_name,
        "fingerprint_matches": matches,
        "sequences": read,
        "positions": sum(b.labels.numel() for b in batches),
        "labelled": labelled,
        "temperatures": [f"T={t:g}" for t in temperatures],
        "targets": [_stored_row(s, sums, positions, vocab) for s in stored],
        "alternatives": _alternative_rows(others, sums, vocab),
    }


def _token_targets(cache: StoreReader, teacher_name: str) -> tuple[list[StoredTokens], int]:
    """Every ``token_logits`` target ``teacher_name`` stores, and the vocabulary width they were cached at."""
    stored = [
        StoredTokens(cache, teacher_name, name)
        for name, t in cache.teacher(teacher_name).targets.items()
        if t.kind == "token_logits"
    ]
    if not stored:
        raise ConfigError(f"teacher {teacher_name!r} of {cache.url} stores no token_logits target to measure")
    return stored, int(cache.teacher(teacher_name).targets[stored[0].name].params["vocab_size"])


def _stored_row(s: StoredTokens, sums: dict, positions: int, vocab: int) -> dict[str, Any]:
    """One stored target's row: bytes per token, tail mass (top-k) and KL kept at each of its temperatures."""
    tails = np.concatenate(s.tails) if s.tails else None
    tail = (
        None
        if tails is None
        else {
            f"T={t:g}": {"mean": float(tails[:, m].mean()), "p90": float(np.quantile(tails[:, m], 0.9))}
            for m, t in enumerate(temperatures_of(s.target))
        }
    )
    return {
        "target": s.name,
        "encoding": kind_label(s.target),
        "bytes/token on disk": s.disk_bytes / positions,
        "bytes/token laid out": bytes_per_token(s.target, vocab),
        "tail": tail,
        "KL kept": _kept(sums, s.name, temperatures_of(s.target)),
    }


def _alternative_rows(others: list[tuple[str, Target]], sums: dict, vocab: int) -> list[dict[str, Any]]:
    """One row per alternative encoding; the sampled ones (one target per temperature) merged into one row."""
    rows: dict[str, dict[str, Any]] = {}
    for label, target in others:
        row = rows.setdefault(label, {"encoding": label, "bytes/token": bytes_per_token(target, vocab), "KL kept": {}})
        row["KL kept"] |= _kept(sums, label, temperatures_of(target))
    return list(rows.values())


def pipeline_student(cfg: DistillConfig) -> tuple[nn.Module, str]:
    """The pipeline's trained cached-KD student (``student-<variant>.safetensors`` in its run directory, the first
    ``cached`` variant of ``compare`` that has one), else its initial weights; and which it is, in words."""
    for variant in cfg.compare:
        path = cfg.out / f"student-{variant.name}.safetensors"
        if variant.source == "cached" and path.is_file():
            return load_model(build_student(cfg), path).eval(), f"trained cached-KD student {variant.name!r} ({path})"
    return build_student(cfg).eval(), f"initial weights (seed {cfg.seed}; no cached-KD student in {cfg.out})"


def pipeline_store_fidelity(
    cfg: DistillConfig, store: str, *, sequences: int, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """:func:`store_fidelity` of ``store`` with pipeline ``cfg``'s teacher (loaded from its checkpoint, as ``verify
    --recompute`` does), student (:func:`pipeline_student`) and train split."""
    cache = open_store(store)
    teacher, fingerprint = pipeline_teacher(cfg, cache)
    student, described = pipeline_student(cfg)
    return store_fidelity(
        cache,
        teacher,
        student,
        cached_train_split(cfg, cache),
        teacher_name=cfg.teacher.name,
        sequences=sequences,
        seed=seed,
        batch_size=cfg.cache.batch_size,
        device=device_of(cfg),
        student_name=described,
        fingerprint=fingerprint,
        progress=progress,
    )


def _kept_cells(row: dict[str, Any], temperatures: list[str]) -> list[str]:
    return [f"{row['KL kept'][t]:.4f}" if t in row["KL kept"] else "—" for t in temperatures]


def _tail_cell(row: dict[str, Any], temperature: str) -> str:
    tail = (row["tail"] or {}).get(temperature)
    return "—" if tail is None else f"{tail['mean']:.4f} / {tail['p90']:.4f}"


def fidelity_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of the stored targets and of the alternative encodings."""
    temps = report["temperatures"]
    stored = [
        [
            r["target"],
            r["encoding"],
            f"{r['bytes/token on disk']:.1f}",
            str(r["bytes/token laid out"]),
            *(_tail_cell(r, t) for t in temps),
            *_kept_cells(r, temps),
        ]
        for r in report["targets"]
    ]
    header = [
        "target",
        "stored as",
        "B/token on disk",
        "B/token laid out",
        *(f"tail mean / p90 {t}" for t in temps),
        *(f"KL kept {t}" for t in temps),
    ]
    others = [[r["encoding"], str(r["bytes/token"]), *_kept_cells(r, temps)] for r in report["alternatives"]]
    return [
        ("stored token targets", header, stored),
        ("re-encoded from the live logits", ["encoding", "B/token laid out", *(f"KL kept {t}" for t in temps)], others),
    ]


def report_summary(report: dict[str, Any]) -> str:
    """What was measured, in one paragraph: store, teacher, student, sequences and labelled positions."""
    line = (
        f"{report['store']}: teacher {report['teacher']!r}, student: {report['student']}; "
        f"{report['sequences']} sequences, {report['labelled']:,} of {report['positions']:,} positions labelled "
        "(KL kept and tails over those only)"
    )
    if report["fingerprint_matches"] is False:
        line += (
            ". WARNING: the teacher's fingerprint differs from the store's, so the stored targets are another model's"
        )
    return line


def write_report(report: dict[str, Any], out: Path) -> None:
    """``out/token_fidelity.json`` and ``out/token_fidelity.md``."""
    from kdcache.tables import markdown_table, write_json

    write_json(out / "token_fidelity.json", report)
    parts = [report_summary(report) + "\n"]
    parts += [f"## {title}\n\n{markdown_table(header, rows)}" for title, header, rows in fidelity_tables(report)]
    (out / "token_fidelity.md").write_text("\n".join(parts))
