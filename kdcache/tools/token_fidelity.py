"""What each top-k token encoding costs and keeps, measured against the live teacher's full vocabulary.

For a causal-LM teacher and a student over the same token batches, every encoding is written by the target's own
``encode`` (``encode_at`` for sampled tokens, drawn at the batch's samples), decoded by its ``decode`` (the bytes a
store holds, the ``TokenTopK`` every loss takes) and scored by the ``token_kd`` divergence to the student, summed
over the labelled positions only (label −100 counts nowhere): its ratio to the same sum from the teacher's full
logits is the KL kept. Sampled tokens' divergence is a cross-entropy; the teacher's entropy is taken off it, so
theirs is the KL's unbiased estimate. Bytes per token are the encoding's layout. ``python -m
kdcache.tools.token_fidelity`` measures a tiny Llama at the full 128,256-token vocabulary (random weights, seeded;
no download); :mod:`kdcache.tools.lm_fidelity` measures a user's store.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdcache.losses import token_kd_divergence
from kdcache.store import row_nbytes
from kdcache.tables import markdown_table
from kdcache.targets import SampledTokens, Target, TokenTopK, build_target

IGNORE_INDEX = -100

ENCODINGS: dict[str, dict[str, int | float]] = {
    "fp16 values, narrowest ids (today)": {},
    "7-bit values (step 1/8)": {"value_bits": 7},
    "8-bit values (step 1/16)": {"value_bits": 8, "value_step": 0.0625},
    "17-bit ids": {"index_bits": 17},
    "7-bit values + 17-bit ids": {"value_bits": 7, "index_bits": 17},
    "6-bit values (step 1/4) + 17-bit ids": {"value_bits": 6, "value_step": 0.25, "index_bits": 17},
}


@dataclass(frozen=True)
class TokenBatch:
    """Token ids ``(B, L)``, their next-token ``labels`` (``IGNORE_INDEX``: no label, left out of every sum), the
    dataset ``samples`` they are (the keys sampled tokens are drawn with; stage one's own) and, read from a store,
    the ``rows`` that hold them."""

    inputs: torch.Tensor
    labels: torch.Tensor
    samples: np.ndarray
    rows: np.ndarray | None = None


Decoder = Callable[[torch.Tensor, TokenBatch], TokenTopK | SampledTokens]
"""Live teacher logits ``(B, L, V)`` and their batch → the decoded target a loss would read for them."""


@dataclass(frozen=True)
class Scored:
    """One encoding to score: its ``label``, how a batch's target is obtained, and the temperatures to score at."""

    label: str
    decode: Decoder
    temperatures: tuple[float, ...]


def live_decoder(target: Target) -> Decoder:
    """``target`` as a store would hold it: the live logits encoded (sampled tokens drawn at the batch's samples,
    view 0), then decoded, on the logits' device."""

    def decode(live: torch.Tensor, batch: TokenBatch) -> TokenTopK | SampledTokens:
        target.layout(tuple(live.shape[1:]))
        arrays = target.encode_at(live.cpu(), batch.samples, np.zeros(len(batch.samples), dtype=np.int64))
        return target.decode({a: torch.from_numpy(np.ascontiguousarray(v)).to(live.device) for a, v in arrays.items()})

    return decode


def kd_sum(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor | TokenTopK | SampledTokens,
    temperature: float,
    live: torch.Tensor,
) -> float:
    """T² · the ``token_kd`` divergence summed over labelled positions (its mean times their count, so batches of
    any mask add up); for sampled tokens less T² · the teacher's entropy there (``live``), which makes the
    cross-entropy an unbiased estimate of the KL."""
    labelled = labels != IGNORE_INDEX
    total = token_kd_divergence(logits, labels, target, temperature).item() * int(labelled.sum())
    if isinstance(target, SampledTokens):
        log_p = F.log_softmax(live.float() / temperature, dim=-1)
        total -= float(-(log_p.exp() * log_p).sum(-1)[labelled].double().sum()) * temperature**2
    return total


def kl_sums(
    teacher: Callable,
    student: Callable,
    batches: Iterable[TokenBatch],
    scored: list[Scored],
    temperatures: Iterable[float],
    progress: bool = True,
) -> dict[tuple[str, float], float]:
    """Σ over labelled positions of T² · KL(student ‖ each encoding), keyed ``(label, T)``; ``("full", T)`` is the
    divergence from the teacher's full logits at every T of ``temperatures``."""
    sums: dict[tuple[str, float], float] = {}
    for batch in tqdm(batches, desc="token fidelity", disable=not progress):
        with torch.no_grad():
            live, logits = teacher(batch.inputs).float(), student(batch.inputs).float()
        labels = batch.labels.to(logits.device)
        for t in temperatures:
            sums["full", t] = sums.get(("full", t), 0.0) + kd_sum(logits, labels, live, t, live)
        for entry in scored:
            decoded = entry.decode(live, batch)
            for t in entry.temperatures:
                key = (entry.label, t)
                sums[key] = sums.get(key, 0.0) + kd_sum(logits, labels, decoded, t, live)
    return sums


def bytes_per_token(target: Target, vocab: int) -> int:
    """The bytes one position takes in ``target``'s layout (uncompressed) at a vocabulary of ``vocab``."""
    arrays = target.layout((1, vocab))
    return sum(row_nbytes(a.sample_shape, a.dtype) for a in arrays.values())  # sample_shape (1, width)


def as_token_batch(batch: TokenBatch | torch.Tensor, number: int) -> TokenBatch:
    """``batch``, or token ids ``(B, L)`` alone as batch ``number`` with every position labelled."""
    if isinstance(batch, TokenBatch):
        return batch
    return TokenBatch(batch, torch.zeros_like(batch), np.arange(number * len(batch), (number + 1) * len(batch)))


def measure(
    teacher: Callable,
    student: Callable,
    batches: Sequence[TokenBatch | torch.Tensor],
    k: int,
    temperature: float = 1.0,
    progress: bool = True,
) -> list[dict]:
    """One row per encoding of :data:`ENCODINGS` at ``k``: bytes per token and KL kept (over ``batches``'s labelled
    positions; a batch of ids alone labels every position) against the full logits, and against today's layout."""
    token_batches = [as_token_batch(b, i) for i, b in enumerate(batches)]
    targets = {
        label: build_target("token_logits", {"k": k, "temperatures": [temperature], **params})
        for label, params in ENCODINGS.items()
    }
    scored = [Scored(label, live_decoder(target), (temperature,)) for label, target in targets.items()]
    sums = kl_sums(teacher, student, token_batches, scored, [temperature], progress)
    with torch.no_grad():
        vocab = int(teacher(token_batches[0].inputs[:1, :1]).shape[-1])
    today = sums[next(iter(targets)), temperature]
    return [
        {
            "encoding": label,
            "bytes/token": bytes_per_token(target, vocab),
            "KL kept": sums[label, temperature] / sums["full", temperature],
            "vs today": sums[label, temperature] / today,
        }
        for label, target in targets.items()
    ]


def tiny_llama(vocab: int, seed: int, init: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 2-layer, 64-wide Llama with the full ``vocab``, seeded random weights at ``initializer_range`` ``init``, as
    ids → logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        initializer_range=init,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    return lambda ids: model(ids).logits


def report_token_fidelity(vocab: int, tokens: int, k: int, init: float = 0.5, progress: bool = True) -> str:
    """The markdown table of :func:`measure` for a tiny Llama teacher (``initializer_range`` ``init``) and a
    student of another seed over ``tokens`` Zipf-distributed token ids (sequences of 256, every position labelled)."""
    ids = np.random.default_rng(0).zipf(1.2, size=max(256, tokens // 256 * 256)) % vocab
    batches = list(torch.from_numpy(ids).long().view(-1, 1, 256))
    rows = measure(tiny_llama(vocab, 0, init), tiny_llama(vocab, 1, 0.02), batches, k, progress=progress)
    header = ["encoding", "bytes/token", "KL kept", "vs today"]
    return markdown_table(
        header, [[r["encoding"], str(r["bytes/token"]), f"{r['KL kept']:.4f}", f"{r['vs today']:.4f}"] for r in rows]
    )


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
