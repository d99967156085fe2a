"""Real parts for language-model tests: a small text corpus on disk, tokenizers trained locally with ``tokenizers``,
and tiny GPT-2 teachers built from a ``transformers`` config (seeded, a few training steps, no download).

The fixtures are registered in ``tests/conftest.py``; the functions are importable by worker processes (dask,
torchrun), which rebuild the same objects from the same arguments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.datasets import TextDataset
from kdcache.models import CausalLM

SPECIALS = ["<|endoftext|>", "<|pad|>"]
WORDS = (  # noqa: SIM905  (a sentence reads better than a list of its words)
    "the cache holds every token of the teacher and the student reads it back in order while the loss "
    "compares both distributions at each position of a packed sequence with its next token"
).split()
SEQ_LEN = 16


def write_corpus(directory: Path, *, documents: int = 6, seed: int = 0) -> list[Path]:
    """Plain-text documents of seeded word salad with repeated phrases (a tiny LM learns something from them),
    one file per document, plus the same documents as one JSON lines file (``corpus.jsonl``)."""
    import json

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths, texts = [], []
    for d in range(documents):
        lines = []
        for _ in range(12 + 3 * d):
            start = int(rng.integers(0, len(WORDS) - 8))
            lines.append(" ".join(WORDS[start : start + int(rng.integers(4, 9))]))
        texts.append("\n".join(lines) + "\n")
        path = directory / f"doc{d}.txt"
        path.write_text(texts[-1])
        paths.append(path)
    (directory / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return paths


def train_bpe(files: list[Path], path: Path, *, vocab_size: int = 300, specials: list[str] = SPECIALS) -> Path:
    """A byte-level BPE trained on ``files`` (ids 0.. are ``specials``), saved as ``tokenizer.json`` at ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(f) for f in files], trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def train_wordlevel(files: list[Path], path: Path) -> Path:
    """A word-level tokenizer (a different vocabulary, under 256 ids) trained on ``files``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train([str(f) for f in files], trainers.WordLevelTrainer(special_tokens=[*SPECIALS, "<unk>"]))
    tokenizer.save(str(path))
    return path


def text_split(files: list[Path], tokenizer: Path, *, seq_len: int = SEQ_LEN, split: str = "train") -> TextDataset:
    return TextDataset([str(f) for f in files], tokenizer=tokenizer, seq_len=seq_len, split=split, pad_token="<|pad|>")


def tiny_lm(vocab_size: int, *, seed: int = 0, layers: int = 1, width: int = 32) -> CausalLM:
    """A seeded GPT-2 of ``layers`` blocks of ``width`` built from a config (dropout 0: every forward is exact)."""
    torch.manual_seed(seed)
    config = {
        "model_type": "gpt2",
        "n_layer": layers,
        "n_embd": width,
        "n_head": 2,
        "n_positions": 64,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    return CausalLM(vocab_size, config=config, pad_token_id=1)


def trained_lm(dataset: TextDataset, vocab_size: int, *, seed: int = 0, steps: int = 30) -> CausalLM:
    """:func:`tiny_lm` after ``steps`` Adam steps of next-token loss on ``dataset`` (spread-out, realistic logits)."""
    model = tiny_lm(vocab_size, seed=seed, layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, labels = dataset.get_batch(np.arange(len(dataset)))
    for step in range(steps):
        batch = torch.arange(len(labels)).roll(-8 * step)[:16]
        logits = model(inputs[batch])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[batch].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_teacher_dir(model: CausalLM, directory: Path, tokenizer: Path, *, shard: str = "50KB") -> Path:
    """``model`` as its users have it: ``save_pretrained(directory, max_shard_size=shard)`` (sharded safetensors with
    their index and ``config.json``) and the tokenizer re-saved there by ``transformers`` (``tokenizer.json``,
    ``tokenizer_config.json``), the layout ``from_pretrained`` reads."""
    from transformers import PreTrainedTokenizerFast

    model.model.save_pretrained(directory, max_shard_size=shard)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), eos_token=SPECIALS[0], pad_token=SPECIALS[1])
    fast.save_pretrained(directory)
    return directory


def lm_teacher_factory(corpus: str, tokenizer: str, vocab_size: int, steps: int = 30) -> CausalLM:
    """The trained tiny teacher rebuilt from paths: what a dask worker or torchrun rank imports."""
    files = sorted(Path(corpus).glob("doc*.txt"))
    return trained_lm(text_split(files, Path(tokenizer)), vocab_size, steps=steps)


def lm_train_factory(corpus: str, tokenizer: str) -> TextDataset:
    return text_split(sorted(Path(corpus).glob("doc*.txt")), Path(tokenizer))


@pytest.fixture(scope="session")
def lm_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def lm_tokenizer(lm_corpus: list[Path]) -> Path:
    return train_bpe(lm_corpus, lm_corpus[0].parent.parent / "tokenizer" / "tokenizer.json")


@pytest.fixture(scope="session")
def lm_train(lm_corpus: list[Path], lm_tokenizer: Path) -> TextDataset:
    return text_split(lm_corpus, lm_tokenizer)


@pytest.fixture(scope="session")
def _lm_teacher(lm_train: TextDataset) -> CausalLM:
    return trained_lm(lm_train, lm_train.vocab_size)


@pytest.fixture
def lm_teacher(_lm_teacher: CausalLM) -> CausalLM:
    """A private copy of the trained tiny teacher."""
    import copy

    return copy.deepcopy(_lm_teacher)


TINY_GPT2 = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": 64,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


def lm_pipeline_dict(root: Path, corpus: list[Path], tokenizer: Path, *, vocab_size: int = 300) -> dict:
    """A language-model pipeline sized for tests: the corpus's first documents train, the last one tests; a 2-block
    teacher and a 1-block student (GPT-2 configs), top-k and sampled targets, absolute paths (workers resolve them)."""
    stages = [
        {
            "epochs": 2,
            "optimizer": {"name": "adamw", "lr": 0.01},
            "losses": [{"name": "next_token", "weight": 0.5}, {"name": "token_kd", "weight": 0.5}],
        }
    ]
    sampled = [
        {
            **stages[0],
            "losses": [
                {"name": "next_token", "weight": 0.5},
                {"name": "token_kd", "weight": 0.5, "target": "token_logits_sampled"},
            ],
        }
    ]
    model = {"arch": "causal-lm", "args": {"pad_token_id": 1, "config": TINY_GPT2}}
    return {
        "name": "test_lm",
        "seed": 0,
        "output_dir": str(root / "run"),
        "data": {
            "dataset": "text",
            "task": "language-model",
            "num_classes": vocab_size,
            "args": {
                "tokenizer": str(tokenizer),
                "seq_len": SEQ_LEN,
                "pad_token": "<|pad|>",
                "splits": {"train": [str(f) for f in corpus[:-1]], "test": [str(corpus[-1])]},
            },
        },
        "teacher": {
            "name": "gpt2-2x32",
            "model": {"arch": "causal-lm", "args": {"pad_token_id": 1, "config": {**TINY_GPT2, "n_layer": 2}}},
            "train": {
                "batch_size": 16,
                "stages": [
                    {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, "losses": [{"name": "next_token"}]}
                ],
            },
        },
        "student": {"model": model, "train": {"batch_size": 16, "stages": stages}},
        "scratch_losses": [{"name": "next_token"}],
        "cache": {
            "shard_samples": 64,
            "batch_size": 16,
            "targets": [
                {"kind": "token_logits", "encoding": "topk", "k": 8},
                {"kind": "token_logits", "encoding": "sampled", "samples": 8},
            ],
        },
        "compare": ["scratch", "online", "cached", {"name": "cached-sampled", "source": "cached", "stages": sampled}],
    }
