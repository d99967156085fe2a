"""Chat (SFT) data for causal language models: conversations rendered with the tokenizer's chat template, one
conversation per sample, with next-token labels on the assistant's tokens only.

Records are JSON lines whose field ``messages_field`` (default ``messages``) holds ``[{role, content}, ...]``. Each
conversation is rendered by ``transformers``' ``apply_chat_template`` with the chat template of the tokenizer
directory (``chat_template.jinja`` or ``tokenizer_config.json``), so its ids are exactly those of
``tokenizer.apply_chat_template(messages, tokenize=True)``. Which tokens the loss sees:

* a template with ``{% generation %}`` blocks marks them itself (``return_assistant_tokens_mask``): what the template
  author says the model generates (content and end-of-turn token, typically);
* any other template is rendered once per assistant turn: the characters between the conversation so far with the
  generation prompt and the conversation including the turn are the assistant's, and the tokens of the whole
  rendering that start there are marked. The ids are always those of the whole rendering (tokenising turn by turn
  could cut a token at a turn boundary differently).

Labels are the next tokens where the next token is marked (``train_on: assistant``) or everywhere
(``train_on: all``), ``ignore_index`` elsewhere, so every token loss and metric (they skip ``ignore_index``) applies
the mask unchanged. Samples never mix conversations: each is right-padded to ``seq_len`` (pad positions: label
``ignore_index``, ``attention_mask`` 0); a longer conversation is refused unless ``truncate`` is set.

The description (a store's dataset fingerprint) names every file with its SHA-256, the tokenizer's fingerprint and,
under ``packing``, the chat template's SHA-256, ``train_on`` and the padding, so a store is refused for chat data
rendered or masked another way (:func:`kdcache.train.require_token_alignment` compares ``packing``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from kdcache.datasets.corpus import expand_files, source_sha256
from kdcache.datasets.text import IGNORE_INDEX, TokenSequences, _names, check_pins
from kdcache.datasets.tokenizer import LocalTokenizer, load_tokenizer
from kdcache.errors import ConfigError

TrainOn = Literal["assistant", "all"]
ROLES = ("system", "user", "assistant")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
Conversation = list[dict[str, str]]
ROLE_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{% else %}"
    "{{ message['content'] + '<|end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""A small chat template: per turn the role token (``<|user|>``, ...), a newline, the content, ``<|end|>`` and a
newline; the assistant's content and ``<|end|>`` in a generation block (what the loss trains on)."""


class ChatDataset(TokenSequences):
    """Conversations from JSON lines files, one per sample of ``seq_len`` tokens: inputs ``(B, L)`` int64 token ids
    and labels ``(B, L)`` int64 next tokens on the trained positions (``ignore_index`` elsewhere).

    ``tokenizer`` is a directory written by ``save_pretrained`` that holds a chat template; ``root`` and ``sha256``
    are :class:`~kdcache.datasets.TextDataset`'s.

    >>> train = ChatDataset(["train.jsonl"], tokenizer="data/chat/tokenizer", seq_len=256)  # doctest: +SKIP
    >>> inputs, labels = train.get_batch(np.arange(4))  # labels: assistant tokens only, -100 elsewhere
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        tokenizer: str | Path,
        seq_len: int,
        split: str = "train",
        root: str | None = None,
        messages_field: str = "messages",
        train_on: TrainOn = "assistant",
        truncate: bool = False,
        pad_token: str = "<|pad|>",
        roles: Sequence[str] = ROLES,
        sha256: Mapping[str, str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        progress: bool = False,
    ) -> None:
        if seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2 tokens, got {seq_len}")
        if train_on not in ("assistant", "all"):
            raise ConfigError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
        if not files:
            raise ConfigError(f"split {split!r} lists no files; give at least one JSON lines file of conversations")
        self.split, self.seq_len, self.ignore_index = split, int(seq_len), ignore_index
        self.train_on, self.truncate = train_on, bool(truncate)
        self.tokenizer = load_tokenizer(tokenizer)
        self.pad_id = self.tokenizer.token_id(pad_token, role="pad")
        self.renderer = ChatRenderer(self.tokenizer)
        sources = expand_files(files, root)  # globs and directories too, each file recorded by content
        files, paths = [name for name, _ in sources], [path for _, path in sources]
        digests = [source_sha256(p) for p in paths]
        check_pins(files, digests, sha256 or {})
        records = [
            (f"{name}:{n}", c)
            for name, p in zip(files, paths, strict=True)
            for n, c in read_conversations(p, messages_field, tuple(roles), train_on)
        ]
        rendered = [self._render(where, c) for where, c in tqdm(records, desc="render", disable=not progress)]
        self.inputs = torch.from_numpy(np.stack([r[0] for r in rendered]))
        self.labels = torch.from_numpy(np.stack([r[1] for r in rendered]))
        self.lengths = np.asarray([r[2] for r in rendered], dtype=np.int64)
        self._source = {
            "kind": "chat",
            "root": root,
            "files": [[name, digest] for name, digest in zip(files, digests, strict=True)],
            "messages_field": messages_field,
            "tokenizer": self.tokenizer.fingerprint(),
            "packing": {
                "seq_len": self.seq_len,
                "pad": [self.pad_id, pad_token],
                "ignore_index": ignore_index,
                "documents": "one conversation per sample, right-padded",
                "chat_template_sha256": self.tokenizer.chat_template_sha256,
                "train_on": train_on,
                "truncate": self.truncate,
                "roles": list(roles),
                "conversations": len(records),
            },
        }

    def _render(self, where: str, conversation: Conversation) -> tuple[np.ndarray, np.ndarray, int]:
        ids, marked = self.renderer.render(conversation)
        if len(ids) > self.seq_len and not self.truncate:
            raise ConfigError(
                f"{where}: the conversation renders to {len(ids)} tokens, more than seq_len={self.seq_len}; samples "
                "never span two sequences. Raise data.args.seq_len, shorten the conversation, or set truncate: true"
            )
        return sample_arrays(
            ids,
            marked if self.train_on == "assistant" else np.ones_like(marked),
            seq_len=self.seq_len,
            pad_id=self.pad_id,
            ignore_index=self.ignore_index,
        )

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.inputs[index], self.labels[index]

    def all_labels(self) -> np.ndarray:
        """Every sample's labels ``(N, L)``: a read-only view of the labels the dataset holds, not a copy. The
        conversations are rendered into memory once (``16 · N · seq_len`` bytes of inputs and labels: 1.2 MB for
        data/chat, 3.3 GB for 100,000 conversations of 2,048 tokens); stage one asks for the labels once per shard,
        so a copy per call would cost that much again, and time linear in N, at every shard."""
        labels = self.labels.numpy()
        labels.flags.writeable = False
        return labels


class ChatRenderer:
    """A tokenizer's chat template applied by ``transformers``: token ids of a conversation and, per token, whether
    it is the assistant's (module docstring: by ``{% generation %}`` blocks, else by rendered prefixes)."""

    def __init__(self, local: LocalTokenizer) -> None:
        if local.chat_template is None:
            raise ConfigError(
                f"tokenizer {str(local.path.parent)!r} has no chat template (no chat_template.jinja, no chat_template "
                "in tokenizer_config.json); chat data needs one: save the tokenizer with a template "
                "(kdcache.datasets.chat.save_chat_tokenizer, or tokenizer.chat_template = ...; save_pretrained)"
            )
        try:
            from transformers import PreTrainedTokenizerFast
        except ImportError:
            raise ConfigError(
                "chat data needs transformers; install the language-model extra: pip install 'kdcache[lm]'"
            ) from None
        self.hf = PreTrainedTokenizerFast(tokenizer_file=str(local.path), chat_template=local.chat_template)
        self.marks_generation = bool(GENERATION_TAG.search(local.chat_template))

    def render(self, conversation: Conversation) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, marked)``: int64 token ids and int64 1 where the token is the assistant's."""
        if self.marks_generation:
            out = self.hf.apply_chat_template(
                conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            if not isinstance(out, Mapping):
                raise ConfigError(
                    f"the chat template rendered {type(out).__name__}, not token ids and an assistant "
                    "mask; use a tokenizer whose chat template transformers can apply"
                )
            return np.asarray(out["input_ids"], dtype=np.int64), np.asarray(out["assistant_masks"], dtype=np.int64)
        text = self._text(conversation)
        encoded = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
        marked = np.zeros(len(starts), dtype=np.int64)
        for begin, end in self._assistant_spans(conversation, text):
            marked[(starts >= begin) & (starts < end)] = 1
        return np.asarray(encoded["input_ids"], dtype=np.int64), marked

    def _text(self, conversation: Conversation, *, add_generation_prompt: bool = False) -> str:
        """``conversation`` rendered by the chat template as text."""
        text = self.hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(text, str):
            raise ConfigError(
                f"the chat template rendered {type(text).__name__}, not text; use a tokenizer whose "
                "chat template renders a conversation as one string"
            )
        return text

    def _assistant_spans(self, conversation: Conversation, text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in ``text``: from the end of the conversation so far with the
        generation prompt to the end of the conversation including the turn."""
        spans = []
        for turn, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            before = self._text(conversation[:turn], add_generation_prompt=True)
            through = self._text(conversation[: turn + 1])
            if not (text.startswith(before) and text.startswith(through)):
                raise ConfigError(
                    "the chat template does not render a conversation as the renderings of its beginnings followed "
                    "by more text, so assistant turns cannot be located; mark them in the template with "
                    "{% generation %}...{% endgeneration %} (transformers' assistant-mask convention)"
                )
            spans.append((len(before), len(through)))
        return spans


def sample_arrays(
    ids: np.ndarray, marked: np.ndarray, *, seq_len: int, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray, int]:
    """One conversation as a sample: inputs ``ids[:L]`` padded with ``pad_id``, labels ``ids[t + 1]`` where token
    ``t + 1`` is marked (``ignore_index`` elsewhere and at padding), and the real-token count."""
    length = min(len(ids), seq_len)
    inputs = np.full(seq_len, pad_id, dtype=np.int64)
    inputs[:length] = ids[:length]
    labels = np.full(seq_len, ignore_index, dtype=np.int64)
    following = ids[1 : seq_len + 1]
    labels[: len(following)] = np.where(marked[1 : seq_len + 1] == 1, following, ignore_index)
    return inputs, labels, length


def read_conversations(
    path: Path, field: str, roles: tuple[str, ...], train_on: TrainOn
) -> list[tuple[int, Conversation]]:
    """``(line number, messages)`` of every non-blank line of a JSON lines file, each checked: a list of
    ``{role, content}`` with known roles, string contents and (with ``train_on: assistant``) an assistant turn."""
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            found.append((n, _conversation(line, field, roles, train_on, f"{path}:{n}")))
    return found


def _conversation(line: str, field: str, roles: tuple[str, ...], train_on: TrainOn, where: str) -> Conversation:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); JSON lines files hold one object per line") from None
    messages = record.get(field) if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            f"{where}: expected a JSON object with a non-empty list {field!r} of {{role, content}} "
            "messages. Set data.args.messages_field to the field that holds them"
        )
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ConfigError(f"{where}: message {k} is not an object with a string 'content': {message!r}")
        if message.get("role") not in roles:
            raise ConfigError(
                f"{where}: message {k} has role {message.get('role')!r}; known roles are "
                f"{list(roles)}. Fix the record, or list the role in data.args.roles"
            )
    if train_on == "assistant" and not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(
            f"{where}: the conversation has no assistant message, so nothing of it would be trained "
            "on (train_on: assistant). Drop the record, or set train_on: all"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_dataset(split: str, *, splits: Mapping[str, Sequence[str]], **options: Any) -> ChatDataset:
    """The ``chat`` dataset of pipeline files: ``splits`` maps each split name to its JSON lines files; ``options``
    are :class:`ChatDataset`'s (``tokenizer``, ``seq_len``, ``train_on``, ``truncate``, ``sha256``, ...)."""
    if split not in splits:
        raise ConfigError(f"data.args.splits has no split {split!r}; it lists {sorted(splits)}")
    refuse_unlisted_pins(splits, options.get("sha256") or {})
    return ChatDataset(list(splits[split]), split=split, **options)


def refuse_unlisted_pins(splits: Mapping[str, Sequence[str]], pins: Mapping[str, str]) -> None:
    """Refuse a ``sha256`` pin of a file that no split lists (a misspelt or moved name would pin nothing, and the
    file it meant would go unchecked), naming the pinned files and the listed ones. A listed glob or directory
    lists the files it can name, matched as the text dataset matches them."""
    listed = [name for files in splits.values() for name in files]
    if unknown := sorted(name for name in pins if not any(_names(entry, name) for entry in listed)):
        raise ConfigError(
            f"data.args.sha256 pins {unknown}, which no split lists (the splits list {listed}): pin only listed "
            "files, or list the file in data.args.splits"
        )


def save_chat_tokenizer(
    tokenizer_file: str | Path, directory: str | Path, template: str = ROLE_TEMPLATE, *, pad_token: str = "<|pad|>"
) -> Path:
    """Save a ``tokenizer.json`` with a chat template as a ``transformers`` tokenizer directory
    (``save_pretrained``: ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), chat_template=template, pad_token=pad_token)
    hf.save_pretrained(str(directory))
    return Path(directory)
