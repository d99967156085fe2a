"""Build data/chat/teacher/, the teacher of pipelines/chat_lm.yaml: a 4-layer GPT-2 (4 blocks of 128) trained on
data/chat/train.jsonl with kdcache's own training code (:func:`kdcache.pipeline.teacher.train_teacher`: next-token
loss over the assistant's tokens, 12 epochs of AdamW at lr 2e-3, batch 16, seed 0), written the way a model is
handed over: ``save_pretrained`` as *sharded* safetensors (``model-0000i-of-0000n.safetensors`` and their index),
``config.json``, and the data's tokenizer files (``data/chat/tokenizer``, copied byte for byte), so the directory
is a complete ``from_pretrained`` layout and the pipeline uses it as it is (no ``teacher.train``).

Run from the repository root after data/make_chat_data.py: ``python data/make_chat_teacher.py`` (3 minutes on one
CPU core, OMP_NUM_THREADS=1). Deterministic on one machine: the same data, seed and library versions train the same
weights there, but the weights' bytes depend on the CPU's float kernels (another CPU, thread count or torch build
gives other last bits), so no test pins them; the pipeline's store records every file's SHA-256 instead and refuses
a store cached from other bytes. The shipped directory was made with torch 2.14.1, transformers 5.24.0.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from kdcache.pipeline.loading import parse_pipeline
from kdcache.pipeline.teacher import train_teacher
from kdcache.pipeline.yamlsafe import read_yaml_file

PIPELINE = Path("pipelines/chat_lm.yaml")  # its data section: the same conversations, template and labels
TOKENIZER = Path("data/chat/tokenizer")
OUT = Path("data/chat/teacher")
MAX_SHARD_SIZE = "1MB"  # ≈ 3.8 MB of float32 weights: several shards and an index, as large models ship
TEACHER = {
    "name": "gpt2-4x128-chat",
    "model": {
        "arch": "causal-lm",
        "args": {
            "pad_token_id": 1,
            "config": {
                "model_type": "gpt2",
                "n_layer": 4,
                "n_embd": 128,
                "n_head": 4,
                "n_positions": 192,
                "bos_token_id": 0,
                "eos_token_id": 0,
            },
        },
    },
    "train": {
        "batch_size": 16,
        "stages": [
            {
                "epochs": 12,
                "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01},
                "losses": [{"name": "next_token"}],
            }
        ],
    },
}


def main() -> int:
    raw = read_yaml_file(PIPELINE)
    raw.update(teacher=TEACHER, seed=0)
    teacher = train_teacher(parse_pipeline(raw, source=str(PIPELINE)))
    shutil.rmtree(OUT, ignore_errors=True)  # no shard of an earlier layout left behind
    teacher.model.save_pretrained(OUT, max_shard_size=MAX_SHARD_SIZE)
    for path in sorted(TOKENIZER.iterdir()):
        shutil.copyfile(path, OUT / path.name)
    files = sorted(p.name for p in OUT.iterdir())
    print(f"{OUT}: {len(files)} files, {sum(p.stat().st_size for p in OUT.iterdir()) / 1e6:.2f} MB: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
