"""Bytes on disk of token targets on chat data with and without ``masked: skip`` (positions without a label stored
as one constant row), for top-k and sampled tokens, and what blosc-zstd alone does to unmasked top-k arrays.

The data is ``pipelines/chat_lm.yaml``'s training split (``data/chat``, assistant tokens labelled); the teacher is a
``transformers`` directory (``--teacher``) or, without one, the pipeline's teacher built from its config (random
weights, ``torch.manual_seed(0)``). Each variant is cached into its own store; the figures are the committed shard
files' bytes (what ``kdcache inspect`` reports), per position and per labelled position.

    python -m kdcache.tools.bench.masked --teacher DIR --workdir /tmp/masked-bench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from kdcache.datasets import ChatDataset
from kdcache.datasets.chat import TrainOn
from kdcache.models import CausalLM
from kdcache.precompute import precompute
from kdcache.store import SAMPLES_OWNER, open_store
from kdcache.targets import build_target
from kdcache.views import TokenViews

TARGETS = {"topk": {"k": 32, "temperatures": [1.0]}, "sampled": {"encoding": "sampled", "samples": 32}}


class ChatArgs(TypedDict):
    """The keywords :class:`ChatDataset` is built with here."""

    tokenizer: str
    seq_len: int
    pad_token: str
    train_on: TrainOn


CHAT: ChatArgs = {"tokenizer": "data/chat/tokenizer", "seq_len": 192, "pad_token": "<|pad|>", "train_on": "assistant"}
TEACHER = {
    "model_type": "gpt2",
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 192,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def zstd_bytes(cache: Any, path: str) -> int:
    """Bytes of an uncompressed array's inner chunks compressed as a ``zstd`` array is (blosc-zstd, clevel 1,
    byte shuffle): an estimate of the array stored with that compressor and no masking."""
    import numcodecs

    record = next(r for arrays in cache.owner_arrays().values() for p, r in arrays.items() if p == path)
    owner = next(o for o, arrays in cache.owner_arrays().items() if path in arrays)
    data = cache.array_reader(record, owner, in_memory=True).read_all()
    codec = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    step = record.chunks[0]
    return sum(len(codec.encode(np.ascontiguousarray(data[lo : lo + step]))) for lo in range(0, len(data), step))


def measure(teacher: torch.nn.Module, workdir: Path) -> dict[str, Any]:
    train = ChatDataset(["data/chat/train.jsonl"], **CHAT)
    labels = train.labels.numpy()
    positions, labelled = labels.size, int((labels >= 0).sum())
    out: dict[str, Any] = {"samples": len(train), "positions": positions, "labelled": labelled, "arrays": {}}
    for masked in ("keep", "skip"):
        store = workdir / f"chat-{masked}.zarr"
        targets = [build_target("token_logits", {**t, "masked": masked}) for t in TARGETS.values()]
        precompute(
            teacher,
            train,
            str(store),
            targets=targets,
            views=TokenViews(),
            num_classes=train.vocab_size,
            teacher_name="lm",
            batch_size=32,
            progress=False,
        )
        cache = open_store(str(store))
        for owner, arrays in cache.owner_arrays().items():
            for path in arrays if owner != SAMPLES_OWNER else ():
                row = out["arrays"].setdefault(path.split("/", 2)[-1], {})
                row[masked] = cache.array_bytes(path)
                if masked == "keep" and "topk" in path:
                    row["zstd, keep"] = zstd_bytes(cache, path)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None, help="a transformers directory (default: random)")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    teacher = (
        CausalLM(1024, path=args.teacher, pad_token_id=1)
        if args.teacher
        else CausalLM(1024, config=TEACHER, pad_token_id=1)
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = measure(teacher.eval(), args.workdir)
    for name, row in result["arrays"].items():
        per = {k: f"{v / result['positions']:.2f}" for k, v in row.items()}
        print(f"{name}: bytes {row}, per position {per}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
