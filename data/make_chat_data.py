"""Build data/chat/, the data of pipelines/chat_lm.yaml, offline from the Python running it: conversations about
standard-library functions (the user asks what ``module.name`` does, the assistant answers with the first paragraph
of its docstring; some conversations open with a system turn, some go on to ask for the signature) and a byte-level
BPE of 1,024 tokens trained on the training conversations, saved with kdcache's role template
(:data:`kdcache.datasets.chat.ROLE_TEMPLATE`) as a ``transformers`` tokenizer directory.

Run from the repository root: ``python data/make_chat_data.py``. Deterministic: the same Python and library
versions give the same bytes (the shipped files were made with CPython 3.11.7, tokenizers 0.23.3, transformers
5.24.0; the pipeline pins the JSON lines files' SHA-256, so another standard library's docstrings are refused).
Training modules and held-out modules are disjoint.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kdcache.datasets.chat import save_chat_tokenizer

OUT = Path("data/chat")
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPLITS = {
    "train": [
        "os.path",
        "shutil",
        "json",
        "re",
        "functools",
        "itertools",
        "textwrap",
        "string",
        "glob",
        "fnmatch",
        "random",
        "statistics",
        "math",
        "operator",
        "copy",
        "heapq",
        "bisect",
        "base64",
        "zlib",
        "inspect",
        "typing",
        "tempfile",
        "pathlib",
        "subprocess",
        "threading",
        "collections",
        "dataclasses",
    ],
    "test": ["os", "shlex", "pprint", "difflib", "calendar", "html", "csv", "secrets", "uuid"],
}
QUESTIONS = ("What does `{}` do?", "Explain `{}`.", "In Python, what is `{}` for?", "Tell me about `{}`.")
SYSTEM = "You answer questions about the Python standard library in one paragraph."
MAX_ANSWER = 400  # characters: one paragraph, so a conversation fits a 256-token sample


def first_paragraph(obj: object) -> str | None:
    """The docstring's first paragraph on one line, or None when there is none or it is too long."""
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return paragraph if 20 <= len(paragraph) <= MAX_ANSWER else None


def functions(module_name: str) -> list[tuple[str, object]]:
    """The module's public functions defined by it (or builtins it exports), by name."""
    module = importlib.import_module(module_name)
    found = []
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        own = getattr(obj, "__module__", None) == module.__name__ or inspect.isbuiltin(obj)
        if not name.startswith("_") and callable(obj) and not inspect.isclass(obj) and own:
            found.append((f"{module_name}.{name}", obj))
    return found


def conversation(index: int, qualified: str, obj: object, answer: str) -> list[dict[str, str]]:
    """Turns for one function: system (every third), question, answer, and (every fourth) the signature."""
    messages = [{"role": "system", "content": SYSTEM}] if index % 3 == 0 else []
    messages += [
        {"role": "user", "content": QUESTIONS[index % len(QUESTIONS)].format(qualified)},
        {"role": "assistant", "content": answer},
    ]
    if index % 4 == 1:
        try:
            signature = str(inspect.signature(obj))  # type: ignore[arg-type]
        except (TypeError, ValueError):  # builtins without text signatures
            return messages
        if " at 0x" in signature:  # a default's repr holds a memory address: not deterministic
            return messages
        messages += [
            {"role": "user", "content": "What is its signature?"},
            {"role": "assistant", "content": f"`{qualified.rsplit('.', 1)[1]}{signature}`"},
        ]
    return messages


def split_conversations(modules: list[str]) -> list[list[dict[str, str]]]:
    found, seen = [], set()
    for module in modules:
        for qualified, obj in functions(module):
            answer = first_paragraph(obj)
            if answer is not None and id(obj) not in seen:
                seen.add(id(obj))
                found.append(conversation(len(found), qualified, obj, answer))
    return found


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    splits = {name: split_conversations(modules) for name, modules in SPLITS.items()}
    for name, conversations in splits.items():
        lines = "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations)
        (OUT / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        print(f"{OUT / name}.jsonl: {len(conversations)} conversations")
    texts = [m["content"] for c in splits["train"] for m in c] + [f"<|{r}|>" for r in ("system", "user", "assistant")]
    raw = OUT / "bpe-1024.json"
    train_tokenizer(texts).save(str(raw))
    save_chat_tokenizer(raw, OUT / "tokenizer")
    raw.unlink()
    print(f"{OUT / 'tokenizer'}: 1024-token BPE with the role template")
    return 0


if __name__ == "__main__":
    sys.exit(main())
