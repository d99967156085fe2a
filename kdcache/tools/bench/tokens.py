"""Figure 6: token-level stage one — tokens/s of caching a causal LM's targets against bare teacher inference over
the same sequences and batches, and the bytes each target costs per token — and figure 1's stage-two step times
(student-only vs cached vs online KD) for the same teacher and the pipeline's student.

The teacher is ``pipelines/stdlib_lm.yaml``'s (a 4-block GPT-2 built from its config, untrained: only its cost
matters) with the pipeline's targets, top-k log-probs and sampled tokens, each cached alone. Its data are generated
token ids of the pipeline's sequence length and vocabulary: timing does not depend on the text, and generated ids
keep the bench independent of the Python version whose standard library the pipeline trains on.

The same store's targets are then read streamed (no RAM budget) in stage two's block order against a memmap gather
of the same rows (:func:`measure_token_reads`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.datasets import TensorDataset
from kdcache.models import build_model
from kdcache.pipeline.build import build_student, loss_setup, targets_to_write
from kdcache.pipeline.config import DistillConfig
from kdcache.pipeline.loading import distill_pipeline, parse_pipeline
from kdcache.pipeline.plan import DISTILLKIT_BYTES_PER_TOKEN
from kdcache.store import open_store
from kdcache.store.layout import owner_of_teacher
from kdcache.targets import Target
from kdcache.tools.bench.reads import memmap_pass, reader_pass
from kdcache.tools.bench.rounds import interleave
from kdcache.tools.bench.settings import BenchSettings
from kdcache.tools.bench.stage_one import measure_stage_one, write_store
from kdcache.tools.bench.steps import measure_steps
from kdcache.tools.bench.workloads import TEACHER, Workload
from kdcache.train import StageConfig
from kdcache.train.sampler import block_shuffle
from kdcache.views import TokenViews

GPT2 = {"model_type": "gpt2", "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}
STDLIB_LM: dict[str, Any] = {  # pipelines/stdlib_lm.yaml's models and targets (a test keeps the two equal): the bench
    # times them on generated sequences, so it runs from any directory and needs neither the text nor the tokenizer
    "name": "stdlib_lm",
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "text", "task": "language-model", "num_classes": 1024, "args": {"seq_len": 128}},
    "teacher": {
        "name": "gpt2-4x128",
        "model": {
            "arch": "causal-lm",
            "args": {"pad_token_id": 1, "config": {**GPT2, "n_layer": 4, "n_embd": 128, "n_head": 4}},
        },
        "train": {
            "batch_size": 16,
            "stages": [
                {
                    "epochs": 5,
                    "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01},
                    "losses": [{"name": "next_token"}],
                }
            ],
        },
    },
    "student": {
        "model": {
            "arch": "causal-lm",
            "args": {"pad_token_id": 1, "config": {**GPT2, "n_layer": 2, "n_embd": 64, "n_head": 2}},
        },
        "train": {
            "batch_size": 16,
            "stages": [
                {
                    "epochs": 3,
                    "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
                    "losses": [
                        {"name": "next_token", "weight": 0.5},
                        {"name": "token_kd", "weight": 0.5, "temperature": 1, "target": "token_logits_topk"},
                    ],
                }
            ],
        },
    },
    "scratch_losses": [{"name": "next_token"}],
    "cache": {
        "batch_size": 32,
        "targets": [
            {"kind": "token_logits", "encoding": "topk", "k": 32, "temperatures": [1.0]},
            {"kind": "token_logits", "encoding": "sampled", "samples": 32},
        ],
    },
}


class GeneratedTokens(TensorDataset):
    """``count`` sequences of ``seq_len`` uniform token ids below ``vocab_size`` (seeded), labelled with the next id:
    a :class:`TensorDataset` whose inputs stay int64 token ids (``TensorDataset`` itself stores float pixels)."""

    def __init__(self, count: int, seq_len: int, vocab_size: int, *, seed: int = 0) -> None:
        stream = torch.randint(0, vocab_size, (count * seq_len + 1,), generator=torch.Generator().manual_seed(seed))
        self.inputs = stream[:-1].view(count, seq_len)
        self.labels = stream[1:].reshape(count, seq_len)
        self.split = "train"
        self._source = {
            "kind": "generated-tokens",
            "count": count,
            "seq_len": seq_len,
            "vocab": vocab_size,
            "seed": seed,
        }


def token_workload(settings: BenchSettings) -> tuple[Workload, int]:
    """The stdlib_lm teacher and targets over generated sequences, and the pipeline's sequence length."""
    source = "the bench's stdlib_lm"
    cfg = distill_pipeline(parse_pipeline(STDLIB_LM, source=source), source)
    seq_len = int(cfg.data.args["seq_len"])

    def one_epoch(variant: str) -> list[StageConfig]:
        return [cfg.variant_stages(cfg.variant(variant))[0].model_copy(update={"epochs": 1})]

    workload = Workload(
        name="tokens",
        label=f"stdlib_lm teacher ({cfg.teacher.model.args['config']['n_layer']}-block GPT-2), {seq_len}-token "
        f"sequences, vocabulary {cfg.data.num_classes}",
        train=GeneratedTokens(settings.token_sequences, seq_len, cfg.data.num_classes, seed=settings.seed),
        views=TokenViews(),
        setup=loss_setup(cfg),
        batch_size=cfg.student.train.batch_size,
        make_teacher=lambda: _seeded_teacher(cfg, settings.seed),
        make_student=lambda: build_student(cfg),
        targets=targets_to_write(cfg),
        student_only=one_epoch("scratch"),
        distill=one_epoch("cached"),
        seed=settings.seed,
    )
    return workload, seq_len


def measure_tokens(workdir: Path, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Figure 2's measurement on the token workload, per target, with tokens/s and bytes per token; then figure 1's
    step times of the pipeline's student (student-only, cached top-k KD, online KD) from a store of the same data."""
    workload, seq_len = token_workload(settings)
    kinds = {target.name: [target] for target in workload.targets}
    result = measure_stage_one(
        workload,
        kinds,
        workdir,
        settings,
        batch_size=settings.token_batch,
        shard_samples=settings.token_shard,
        rounds=settings.stage_one_rounds,
        progress=progress,
    )
    bare = result["bare_samples_per_second"]
    result["seq_len"] = seq_len
    result["bare_tokens_per_second"] = _scaled(bare, seq_len)
    for name, kind in result["kinds"].items():
        kind["tokens_per_second"] = _scaled(kind["samples_per_second"], seq_len)
        kind["disk_bytes_per_token"] = kind["disk_bytes_per_sample"] / seq_len
        kind.update(_raw_bytes(kinds[name][0], seq_len, workload.setup.num_classes))
    store = workdir / "tokens.zarr"
    write_store(
        workload,
        store,
        workload.targets,
        batch_size=settings.token_batch,
        shard_samples=settings.token_shard,
        device=settings.device,
    )
    result["reads"] = measure_token_reads(store, workdir, settings, progress=progress)
    rounds = replace(settings, step_rounds=settings.token_step_rounds)
    result["step_time"] = measure_steps(workload, str(store), rounds, progress=progress)
    return result


def measure_token_reads(
    store: Path, workdir: Path, settings: BenchSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Each token target of ``store`` read streamed (a fresh reader, every shard verified beforehand) and in RAM
    (loaded and verified before the epoch) in stage two's block order, batches of ``token_batch``, against a memmap
    gather of the same rows of the same arrays (saved as ``.npy``, view 0), interleaved in rounds, page cache warm."""
    cache = open_store(str(store))
    return {
        name: _target_reads(cache, list(target.arrays.values()), workdir / f"tokens-{name}", settings, progress)
        for name, target in cache.teacher(TEACHER).targets.items()
    }


def _target_reads(cache: Any, records: list, prefix: Path, settings: BenchSettings, progress: bool) -> dict[str, Any]:
    """:func:`measure_token_reads` of one target's arrays."""
    owner = owner_of_teacher(TEACHER)
    raws = [Path(f"{prefix}-{record.path.rsplit('/', 1)[-1]}.npy") for record in records]
    for record, raw in zip(records, raws, strict=True):
        np.save(raw, cache.array_reader(record, owner, in_memory=True).read_all()[:, 0])
    order = block_shuffle(cache.num_samples, seed=settings.seed, epoch=1, block=max(r.chunks[0] for r in records))
    batches = np.array_split(order, -(-len(order) // settings.token_batch))

    def library() -> float:
        readers = [cache.array_reader(record, owner, in_memory=False) for record in records]
        for reader in readers:
            for index in range(reader.num_shards):
                reader.verify_shard(index)
        return sum(reader_pass(reader, batches) for reader in readers)

    def in_ram() -> float:
        readers = [cache.array_reader(record, owner, in_memory=True) for record in records]
        for reader in readers:
            reader.read_all()  # loaded and verified once, before the epoch (as CachedDataset does)
        return sum(reader_pass(reader, batches) for reader in readers)

    def memmap() -> float:
        return sum(memmap_pass(raw, batches) for raw in raws)

    variants = {"library": library, "library, in RAM": in_ram, "memmap": memmap}
    samples = interleave(
        variants,
        rounds=settings.read_rounds,
        warmup=settings.warmup,
        desc=f"fig 6 reads {prefix.name}",
        progress=progress,
    )
    result = {
        "ratio_to_memmap": samples.ratio("memmap", "library"),
        "in_ram_ratio_to_memmap": samples.ratio("memmap", "library, in RAM"),
        "arrays": {record.path.rsplit("/", 1)[-1]: record.compressor for record in records},
        "bytes_per_sample": sum(int(np.load(raw, mmap_mode="r")[0].nbytes) for raw in raws),
    }
    for raw in raws:
        raw.unlink()
    return result


def _raw_bytes(target: Target, seq_len: int, vocab: int) -> dict[str, Any]:
    """Bytes per token of the target's arrays as laid out, and for top-k the goal 4 + 6·k and DistillKit's figure."""
    arrays = target.layout((seq_len, vocab))
    raw = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.sample_shape)) for a in arrays.values()) / seq_len
    params = target.describe()
    out: dict[str, Any] = {"raw_bytes_per_token": raw, "params": {k: v for k, v in params.items() if v is not None}}
    if params.get("encoding") == "topk":
        out["goal_bytes_per_token"] = 4 + 6 * int(params["k"])
        out["distillkit_bytes_per_token_at_k128"] = DISTILLKIT_BYTES_PER_TOKEN
    return out


def _scaled(spread: dict[str, Any], factor: int) -> dict[str, Any]:
    return {k: [v * factor for v in spread[k]] if k == "rounds" else spread[k] * factor for k in spread}


def _seeded_teacher(cfg: DistillConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
