"""docs/language-models.md's Python examples run as written: a student trained in a loop of one's own from a real
token store, and that store decoded with nothing but zarr and numpy (checked against the live teacher)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import torch

from kdcache.checkpoint import save_model
from kdcache.losses import token_kd_divergence
from kdcache.models import CausalLM
from tests.conftest import ROOT

GPT2 = {"model_type": "gpt2", "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}


def test_language_model_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "language-models.md").read_text(), flags=re.S)
    decode, train = blocks  # the format section comes first, then the training loop that writes the store
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data" / "stdlib-bpe-1024.json", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # an untrained teacher of the pipeline's architecture stands in for the trained one,
    teacher = CausalLM(1024, config={**GPT2, "n_layer": 4, "n_embd": 128, "n_head": 4}, pad_token_id=1)
    with torch.no_grad():  # its (tied) embeddings scaled up so that its distributions are far from uniform
        teacher.model.transformer.wte.weight.mul_(30)
    save_model(teacher, tmp_path / "runs/stdlib_lm/teacher.safetensors", spec={})

    ns: dict = {}
    exec(compile(train, "docs/language-models.md", "exec"), ns)
    batch = ns["data"][np.arange(16)].to("cpu")
    torch.manual_seed(1)
    fresh = CausalLM(1024, config={**GPT2, "n_layer": 2, "n_embd": 64, "n_head": 2}, pad_token_id=1).eval()
    with torch.no_grad():
        target = batch.targets["token_logits_topk"]
        trained = float(token_kd_divergence(ns["student"].eval()(batch.inputs), batch.labels, target))
        untrained = float(token_kd_divergence(fresh(batch.inputs), batch.labels, target))
    assert trained < 0.8 * untrained  # 12 steps toward a random teacher: the student learned its distribution

    out: dict = {}
    exec(compile(decode, "docs/language-models.md", "exec"), out)
    inputs, _ = ns["train"].get_batch(np.arange(4))
    with torch.no_grad():
        live = torch.softmax(teacher.eval()(inputs).double(), dim=-1).numpy()
    expected = np.take_along_axis(live, out["ids"], axis=-1)
    assert np.abs(out["p_top"] - expected).max() < 2e-3  # fp16 log-probs
    assert np.allclose(out["p_tail"], 1 - expected.sum(axis=-1), atol=2e-3)
    assert np.allclose(out["weights"].sum(axis=-1), 1.0)
    assert (out["tokens"][out["weights"] > 0] < 1024).all()
