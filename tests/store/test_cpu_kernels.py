"""Stored bytes do not depend on the CPU's vectorised kernels (``ATEN_CPU_CAPABILITY``: default, avx2, avx512).

ATen picks its exp, log and reduction kernels by CPU capability, so a float32 log-sum-exp differs in its last bits
from one machine to the next. Stage one computes every stored number that goes through exp or log in float64 and
rounds it once (docs/store-format.md, "Where byte identity holds"). Here a store is built under ATen's default
(scalar) kernels in a subprocess and under this machine's own kernels in this process, from teachers whose forward
pass is exact (dyadic weights and inputs), and every file of both stores is compared byte for byte; and the golden
test and a resume byte-identity test run under the default kernels in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcache import build_target, precompute
from kdcache.views import TokenViews
from tests.conftest import ROOT
from tests.helpers import all_files
from tests.lmkit import text_split, train_bpe, write_corpus
from tests.store.test_golden import build_golden_store

SUITE_UNDER_DEFAULT = [  # the golden store, and the cheapest test that an interrupted run resumes byte-identical
    "tests/store/test_golden.py",
    "tests/precompute/test_resume.py::test_resume_gives_identical_bytes[mid-shard-1]",
]
LSE_SHARDS = {  # each store's last shard of log-sum-exps: what the float32 kernels used to change
    "golden.zarr": "teachers/golden/logits_topk/lse/c/2/0/0",
    "tokens.zarr": "teachers/lm/token_logits_topk/lse/c/2/0/0/0",
}


class DyadicLM(nn.Module):
    """A token-to-logits table with entries in multiples of 1/8 in [-8, 8]: its (B, L, V) logits are exact."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.table.weight.copy_(torch.from_numpy(np.random.default_rng(5).integers(-64, 65, (vocab, vocab)) / 8))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


def build_stores(corpus: Path, root: Path) -> str:
    """Under ``root``: the golden store and a token store of the documents and tokenizer in ``corpus`` (top-k
    log-probs with lse at two temperatures, and sampled tokens); returns the ATen CPU capability they were built
    with. The manifest records the corpus paths, so the stores compared share one corpus."""
    build_golden_store(root / "golden.zarr")
    data = text_split(sorted(corpus.glob("doc*.txt")), corpus / "tokenizer.json")
    targets = [
        build_target("token_logits", {"k": 8, "temperatures": [1.0, 2.0]}),
        build_target("token_logits", {"encoding": "sampled", "samples": 12, "seed": 3}),
    ]
    precompute(
        DyadicLM(data.vocab_size),
        data,
        str(root / "tokens.zarr"),
        targets=targets,
        views=TokenViews(),
        num_classes=data.vocab_size,
        teacher_name="lm",
        shard_samples=64,
        progress=False,
    )
    return torch.backends.cpu.get_cpu_capability()


def under_default_kernels(*args: str) -> subprocess.CompletedProcess:
    """``python args`` from the repository root with ATen's default kernels (and no golden-file rewrite)."""
    env = {k: v for k, v in os.environ.items() if k != "KDCACHE_WRITE_GOLDEN"}
    env |= {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_stores_built_under_default_and_this_machines_kernels_are_byte_identical(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    train_bpe(write_corpus(corpus), corpus / "tokenizer.json")
    script = "import sys; from pathlib import Path; from tests.store.test_cpu_kernels import build_stores as b; "
    built = under_default_kernels(
        "-c", script + "print(b(*map(Path, sys.argv[1:])))", str(corpus), str(tmp_path / "default")
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.split()[-1] == "DEFAULT"
    own = build_stores(corpus, tmp_path / "own")
    for store, lse_shard in LSE_SHARDS.items():
        default, mine = all_files(tmp_path / "default" / store), all_files(tmp_path / "own" / store)
        assert lse_shard in mine
        manifests = [without_kernels(files.pop("kdcache.manifest.json")) for files in (default, mine)]
        differ = sorted(k for k in mine if default.get(k) != mine[k])
        assert sorted(default) == sorted(mine) and not differ, f"{store}: {differ} differ ({own} vs DEFAULT)"
        assert manifests[0] == manifests[1], f"{store}: the manifests differ beyond the kernels they record"


def without_kernels(raw: bytes) -> dict:
    """A manifest without the one fact that must differ (the CPU kernels it records) and the digests covering it."""
    manifest = json.loads(raw)
    assert manifest["library"].pop("torch_cpu_capability") in ("DEFAULT", torch.backends.cpu.get_cpu_capability())
    manifest["sections"].pop("library")
    manifest.pop("digest")
    return manifest


def test_golden_and_resume_byte_identity_hold_under_the_default_kernels() -> None:
    run = under_default_kernels("-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE_UNDER_DEFAULT)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout
