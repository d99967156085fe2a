"""Stage two of a language model under `torchrun` (2 processes, gloo): a run SIGKILLed mid-epoch resumes to the
weights an uninterrupted 2-process run reaches, bit for bit, with every epoch a permutation of the sequences."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdcache.checkpoint import load_state_dict
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute
from kdcache.train.samplelog import consumed_samples
from tests.conftest import ROOT
from tests.lmkit import lm_pipeline_dict

pytestmark = pytest.mark.distributed

KILL_AFTER = 9  # steps of 16 sequences: 7 per epoch over the 98 training sequences (the last of 2), so mid-epoch 1


@pytest.fixture(scope="module")
def lm_pipeline(tmp_path_factory, lm_corpus, lm_tokenizer) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("lm-ddp")
    raw = lm_pipeline_dict(root, lm_corpus, lm_tokenizer)
    raw["teacher"]["checkpoint"] = str(root / "teacher.safetensors")
    raw["cache"]["store"] = str(root / "train.zarr")
    raw["student"]["checkpoint"] = {"every_steps": 2, "log_samples": True}
    report = run_precompute(parse_pipeline(raw), progress=False)
    path = root / "lm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, report.samples_written


def torchrun(pipeline: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "kdcache",
        "train",
        str(pipeline),
        "--quiet",
        "--set",
        f"output_dir={out}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_killed_language_model_run_resumes_bit_identical(lm_pipeline, tmp_path):
    path, sequences = lm_pipeline
    assert sequences == 98
    whole = torchrun(path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "student (cached): perplexity" in whole.stdout

    killed = torchrun(path, tmp_path / "resumed", "--set", f"student.checkpoint.stop_after_steps={KILL_AFTER}")
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stdout + killed.stderr
    resumed = torchrun(path, tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = load_state_dict(tmp_path / "whole" / "student-cached.safetensors")
    trained = load_state_dict(tmp_path / "resumed" / "student-cached.safetensors")
    assert expected.keys() == trained.keys()
    for name, tensor in expected.items():
        assert torch.equal(trained[name], tensor), name
    epochs = consumed_samples(tmp_path / "resumed" / "samples" / "student-cached")
    assert sorted(epochs) == [0, 1]
    for order in epochs.values():
        assert sorted(order.tolist()) == list(range(sequences))  # 0 missing, 0 repeated
