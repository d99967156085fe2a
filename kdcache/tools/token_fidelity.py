"""What each top-k token encoding costs and keeps, measured against the live teacher's full vocabulary.

For a causal-LM teacher and a student over the same token batches, every encoding is written by the target's own
``encode``, decoded by its ``decode`` (the bytes a store holds, the ``TokenTopK`` every loss takes) and scored by
the ``token_kd`` divergence to the student: its ratio to the same divergence from the teacher's full logits is
the KL kept. Bytes per token are the encoding's layout. ``python -m kdcache.tools.token_fidelity`` measures a tiny
Llama at the full 128,256-token vocabulary (random weights, seeded; no download).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kdcache.losses import token_kd_divergence
from kdcache.tables import markdown_table
from kdcache.targets import build_target

ENCODINGS = {
    "fp16 values, narrowest ids (today)": {},
    "7-bit values (step 1/8)": {"value_bits": 7},
    "8-bit values (step 1/16)": {"value_bits": 8, "value_step": 0.0625},
    "17-bit ids": {"index_bits": 17},
    "7-bit values + 17-bit ids": {"value_bits": 7, "index_bits": 17},
    "6-bit values (step 1/4) + 17-bit ids": {"value_bits": 6, "value_step": 0.25, "index_bits": 17},
}


def measure(teacher: Callable, student: Callable, batches: list[torch.Tensor], k: int, temperature: float = 1.0,
            progress: bool = True) -> list[dict]:  # fmt: skip
    """One row per encoding of :data:`ENCODINGS`: bytes per token and KL kept (mean over ``batches``'s tokens)."""
    targets = {label: build_target("token_logits", {"k": k, "temperatures": [temperature], **params})
               for label, params in ENCODINGS.items()}  # fmt: skip
    sums = dict.fromkeys(["full", *targets], 0.0)
    for inputs in tqdm(batches, desc="token fidelity", disable=not progress):
        with torch.no_grad():
            live, logits = teacher(inputs).float(), student(inputs).float()
        labels = torch.zeros(inputs.shape, dtype=torch.long)
        sums["full"] += token_kd_divergence(logits, labels, live, temperature).item()
        for label, target in targets.items():
            target.layout(tuple(live.shape[1:]))
            decoded = target.decode({a: torch.from_numpy(v) for a, v in target.encode(live).items()})
            sums[label] += token_kd_divergence(logits, labels, decoded, temperature).item()
    rows = []
    for label, target in targets.items():
        arrays = target.layout(tuple(live.shape[1:]))
        per_token = sum(np.dtype(a.dtype).itemsize * a.sample_shape[1] for a in arrays.values())
        rows.append({"encoding": label, "bytes/token": per_token, "KL kept": sums[label] / sums["full"],
                     "vs today": sums[label] / sums[next(iter(targets))]})  # fmt: skip
    return rows


def tiny_llama(vocab: int, seed: int, init: float) -> torch.nn.Module:
    """A 2-layer, 64-wide Llama with the full ``vocab``, seeded random weights at ``initializer_range`` ``init``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, initializer_range=init,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return lambda ids: model(ids).logits


def report_token_fidelity(vocab: int, tokens: int, k: int, init: float = 0.5, progress: bool = True) -> str:
    """The markdown table of :func:`measure` for a tiny Llama teacher (``initializer_range`` ``init``) and a
    student of another seed over ``tokens`` Zipf-distributed token ids (sequences of 256)."""
    ids = np.random.default_rng(0).zipf(1.2, size=max(256, tokens // 256 * 256)) % vocab
    batches = list(torch.from_numpy(ids).long().view(-1, 1, 256))
    rows = measure(tiny_llama(vocab, 0, init), tiny_llama(vocab, 1, 0.02), batches, k, progress=progress)
    header = ["encoding", "bytes/token", "KL kept", "vs today"]
    return markdown_table(header, [[r["encoding"], str(r["bytes/token"]), f"{r['KL kept']:.4f}",
                                    f"{r['vs today']:.4f}"] for r in rows])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--init", type=float, default=0.5, help="teacher initializer_range (peakier when larger)")
    args = parser.parse_args()
    print(report_token_fidelity(args.vocab, args.tokens, args.k, args.init))


if __name__ == "__main__":
    main()
