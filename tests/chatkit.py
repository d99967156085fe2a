"""Real parts for chat-data tests: a byte-level BPE with role tokens trained locally, saved with a chat template as
a ``transformers`` tokenizer directory, and JSON lines of conversations (no download)."""

from __future__ import annotations

import json
from pathlib import Path

from kdcache.datasets.chat import ROLE_TEMPLATE, save_chat_tokenizer
from tests.lmkit import train_bpe

CHAT_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
GENERATION_TEMPLATE = ROLE_TEMPLATE
PLAIN_TEMPLATE = GENERATION_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
"""The same rendering without generation blocks: assistant tokens are found from rendered prefixes."""

CONVERSATIONS = [
    [
        {"role": "user", "content": "what does the cache hold"},
        {"role": "assistant", "content": "every token of the teacher"},
    ],
    [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "who reads it back"},
        {"role": "assistant", "content": "the student"},
        {"role": "user", "content": "and the loss"},
        {"role": "assistant", "content": "compares both"},
    ],
    [{"role": "user", "content": "the next token"}, {"role": "assistant", "content": "of a packed sequence"}],
]


def write_chat(directory: Path, conversations: list = CONVERSATIONS, name: str = "chat.jsonl") -> Path:
    """Conversations as JSON lines ``{"messages": [...]}``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def chat_tokenizer(directory: Path, template: str = GENERATION_TEMPLATE) -> Path:
    """A 300-token BPE with :data:`CHAT_SPECIALS` trained on :data:`CONVERSATIONS`, saved with ``template``."""
    corpus = directory / "corpus.txt"
    directory.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(m["content"] for c in CONVERSATIONS for m in c) * 4)
    raw = train_bpe([corpus], directory / "raw" / "tokenizer.json", specials=CHAT_SPECIALS)
    return save_chat_tokenizer(raw, directory / "tokenizer", template)
