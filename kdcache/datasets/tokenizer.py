"""A local tokenizer for text datasets, and the fingerprint that ties a store's token targets to it.

A tokenizer is a Hugging Face ``tokenizer.json`` (the format of the ``tokenizers`` library, which every "fast"
tokenizer of ``transformers`` saves), given as the file or as a model directory that holds it. A directory may also
hold ``tokenizer_config.json`` with a ``chat_template``.

The fingerprint is the tokenizer's identity: what changes the token ids of a text as kdcache encodes it (without
the tokenizer's own special tokens) — the model section (vocabulary, merges, unknown token, byte fallback, ...),
the normaliser, the pre-tokeniser, the added tokens and any truncation or padding. What does not change an id is
left out, so a re-save by ``save_pretrained`` (which adds a post-processor and a ``tokenizer_config.json``) keeps
the fingerprint: the post-processor (special tokens kdcache never adds), the decoder and the format version. The
chat template is hashed apart (:attr:`LocalTokenizer.chat_template_sha256`): it changes the ids of chat data only, and kdcache's
text datasets apply none, so a tokenizer that differs only in an unused template tokenizes the same.

Nothing is downloaded: the path must exist locally. ``tokenizers`` is imported only here, when a text dataset is
built (``pip install kdcache[lm]``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcache.errors import ConfigError
from kdcache.fingerprint import canonical_digest, with_digest

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZED_KINDS = frozenset({"text", "chat"})
"""Dataset kinds whose descriptions hold a tokenizer fingerprint and a ``packing`` (token targets fit them)."""
IDENTITY_PARTS = ("model", "normalizer", "pre_tokenizer", "added_tokens", "truncation", "padding")
"""The sections of a ``tokenizer.json`` that decide the token ids of an encoding without special tokens."""


def require_tokenizers() -> Any:
    """The ``tokenizers`` module, or an error that says how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "text datasets need the `tokenizers` library; install the language-model extra: pip install 'kdcache[lm]'"
        ) from None
    return tokenizers


@dataclass(frozen=True)
class LocalTokenizer:
    """A loaded tokenizer, where it came from, its chat template (if any) and its fingerprint."""

    tokenizer: Any  # tokenizers.Tokenizer
    path: Path
    chat_template: str | None

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer can produce, added (special) tokens included."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str, *, role: str) -> int:
        """The id of special token ``token``; an unknown token names the tokenizer's special tokens."""
        found = self.tokenizer.token_to_id(token)
        if found is None:
            specials = [t for _, t in special_tokens(self.tokenizer)]
            raise ConfigError(
                f"tokenizer {str(self.path)!r} has no {role} token {token!r}; its special tokens are {specials}. "
                f"Set data.args.{role}_token to one of them"
            )
        return int(found)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without the tokenizer's own special tokens (packing adds the separator).

        ``encode_batch_fast`` (tokenizers ≥ 0.21) gives the same ids without computing character offsets."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def fingerprint(self) -> dict[str, Any]:
        """The tokenizer's identity (:func:`tokenizer_fingerprint`); the chat template is not part of it."""
        return tokenizer_fingerprint(self.tokenizer)

    @property
    def chat_template_sha256(self) -> str | None:
        """SHA-256 of the chat template (None without one): it matters for chat data only."""
        return None if self.chat_template is None else _sha256(self.chat_template)


def load_tokenizer(path: str | Path) -> LocalTokenizer:
    """The tokenizer at ``path``: a ``tokenizer.json`` file, or a directory holding one (and optionally
    ``tokenizer_config.json`` with a chat template)."""
    tokenizers = require_tokenizers()
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"no tokenizer at {str(path)!r}: expected a {TOKENIZER_FILE} file or a directory holding one (as "
            "`tokenizer.save_pretrained(dir)` writes). Nothing is downloaded; point data.args.tokenizer at a local file"
        )
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001  (the Rust side raises plain Exceptions for malformed files)
        raise ConfigError(f"{str(file)!r} is not a tokenizers JSON file: {exc}") from None
    template = _chat_template(file.parent) if path.is_dir() else None
    return LocalTokenizer(tokenizer, file, template)


def special_tokens(tokenizer: Any) -> list[tuple[int, str]]:
    """``(id, content)`` of every special added token, by id."""
    decoder = tokenizer.get_added_tokens_decoder()
    return sorted((int(i), t.content) for i, t in decoder.items() if t.special)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What makes two tokenizers give the same ids: the vocabulary and special tokens (hashed and listed, what an
    error names when two differ) and ``tokenizer_sha256`` over every section of :data:`IDENTITY_PARTS` (merges,
    normaliser, pre-tokeniser, ...), plus ``digest`` over all of it. Two tokenizers with one digest encode every text
    to the same ids."""
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    canonical = json.loads(tokenizer.to_str())
    identity = {part: canonical.get(part) for part in IDENTITY_PARTS}
    identity["added_tokens"] = sorted(identity["added_tokens"] or [], key=lambda token: token["id"])
    return with_digest(
        {
            "vocab_size": len(vocab),
            "vocab_sha256": canonical_digest({"vocab": vocab}),
            "special_tokens": [[i, t] for i, t in special_tokens(tokenizer)],
            "tokenizer_sha256": canonical_digest(identity),
        }
    )


def describe_tokenizer(fingerprint: dict[str, Any]) -> str:
    """A tokenizer fingerprint in a few words, for error messages."""
    return (
        f"vocabulary {fingerprint.get('vocab_size')} (sha256 {str(fingerprint.get('vocab_sha256'))[:12]}…), "
        f"special tokens {[t for _, t in fingerprint.get('special_tokens', [])]}, "
        f"rules (merges, normaliser, pre-tokeniser) sha256 {str(fingerprint.get('tokenizer_sha256'))[:12]}…"
    )


def _chat_template(directory: Path) -> str | None:
    """The chat template of a model directory: ``chat_template.jinja`` (transformers 5 writes it there) or the
    ``chat_template`` of ``tokenizer_config.json``."""
    if (directory / TEMPLATE_FILE).is_file():
        return (directory / TEMPLATE_FILE).read_text()
    config = directory / CONFIG_FILE
    if not config.is_file():
        return None
    template = json.loads(config.read_text()).get("chat_template")
    if template is None or isinstance(template, str):
        return template
    return json.dumps(template, sort_keys=True)  # a list of named templates


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
