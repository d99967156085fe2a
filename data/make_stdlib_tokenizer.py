"""Build data/stdlib-bpe-1024.json, the tokenizer of pipelines/stdlib_lm.yaml: a byte-level BPE with 1,024 tokens
(two of them special: ``<|endoftext|>`` = 0, the document separator, and ``<|pad|>`` = 1) trained with the
``tokenizers`` library on the pipeline's training files, read from the YAML so the two cannot drift apart.

Run from the repository root: ``python data/make_stdlib_tokenizer.py``. Training is deterministic (same files, same
bytes out); the shipped file was made with tokenizers 0.23.3 from CPython 3.11.7's standard library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kdcache.datasets.text import check_pins, file_sha256, resolve_file

PIPELINE = Path("pipelines/stdlib_lm.yaml")
OUT = Path("data/stdlib-bpe-1024.json")
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def main() -> int:
    args = yaml.safe_load(PIPELINE.read_text())["data"]["args"]
    names = args["splits"]["train"]
    files = [resolve_file(args["root"], name) for name in names]
    check_pins(names, [file_sha256(f) for f in files], {n: d for n, d in args["sha256"].items() if n in names})
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(f) for f in files], trainer)
    tokenizer.save(str(OUT))
    print(f"{OUT}: {tokenizer.get_vocab_size()} tokens from {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
