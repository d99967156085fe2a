"""A local ``transformers`` model directory as its users have it (``save_pretrained``'s layout, weights sharded or
not), and what a store records of it: the SHA-256 of every file that decides the teacher's outputs and token ids.

A teacher used from its directory as it is has no kdcache checkpoint: the directory's files are the teacher. They
are fingerprinted when the model is loaded — ``config.json``, every weights file (``*.safetensors``, ``*.bin`` and
their index), every tokenizer file — so a directory retrained or edited in place afterwards is told apart from the
one a store was cached from (:func:`changed_files`), and the tokenizer it ships is known
(:func:`teacher_tokenizer`) for stage one to compare with the data's. ``generation_config.json`` and other files
that change no logit are left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from kdcache.datasets.tokenizer import TOKENIZER_FILE, load_tokenizer

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
SOURCE_KIND = "transformers-directory"


def fingerprinted_files(directory: Path) -> list[Path]:
    """The files of ``directory`` that decide a model's logits and token ids, by name."""
    names = {"config.json", *TOKENIZER_FILES}
    return sorted(
        p for p in directory.iterdir() if p.is_file() and (p.name in names or p.name.endswith(WEIGHT_SUFFIXES))
    )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks (weights files can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def directory_source(directory: str | Path, *, files: bool = True) -> dict[str, Any]:
    """What a store records of a model directory: its path, every fingerprinted file's SHA-256 (unless ``files`` is
    False) and, when it ships a ``tokenizer.json``, the tokenizer's identity and its chat template's SHA-256
    (recorded apart: it matters for chat data only). The path is recorded as given, so a directory at the same
    path on every machine of a cluster gives one fingerprint."""
    directory = Path(directory)
    tokenizer = load_tokenizer(directory) if (directory / TOKENIZER_FILE).is_file() else None
    source: dict[str, Any] = {"kind": SOURCE_KIND, "path": str(directory)}
    if files:
        source["files"] = {p.name: file_sha256(p) for p in fingerprinted_files(directory)}
    source["tokenizer"] = None if tokenizer is None else tokenizer.fingerprint()
    source["chat_template_sha256"] = None if tokenizer is None else tokenizer.chat_template_sha256
    return source


def model_source(model: nn.Module) -> dict[str, Any] | None:
    """The directory a teacher was loaded from, fingerprinted: a :class:`~kdcache.models.CausalLM` built from
    ``path`` records it when loaded; a raw ``transformers`` model names its directory in ``config._name_or_path``
    (``from_pretrained`` sets it), whose tokenizer is read but not its weights files (the object may have been
    changed since; its state-dict digest is what the store proves). None for a model with no local directory."""
    recorded = getattr(model, "source", None)
    if isinstance(recorded, dict):
        return recorded
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(name, str) and name and (Path(name) / "config.json").is_file():
        return directory_source(name, files=False)
    return None


def teacher_tokenizer(model: nn.Module) -> dict[str, Any] | None:
    """The fingerprint of the tokenizer a teacher ships in its directory (None when it ships none)."""
    source = model_source(model)
    return None if source is None else source.get("tokenizer")


def input_vocabulary(model: nn.Module) -> int | None:
    """How many token ids a language model's input embedding takes (None when it cannot be told): the rows of
    ``get_input_embeddings()`` (``transformers`` models and :class:`~kdcache.models.CausalLM`)."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    return int(embedding.num_embeddings) if isinstance(embedding, nn.Embedding) else None


def changed_files(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The files of a directory whose bytes differ between two :func:`directory_source` records (added, removed or
    rewritten), each with both digests, for an error message."""
    before, now = recorded.get("files", {}), current.get("files", {})
    changes = []
    for name in sorted({*before, *now}):
        if before.get(name) != now.get(name):
            was, is_ = (str(d)[:12] + "…" if d else "absent" for d in (before.get(name), now.get(name)))
            changes.append(f"{name} (sha256 {was} when cached, {is_} now)")
    return changes
