"""``kdcache verify``: the digest scrub, and ``--recompute`` re-running the teacher against the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kdcache.checkpoint import save_model
from kdcache.cli import main
from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import model_spec
from kdcache.pipeline.distill import run_precompute
from kdcache.store import open_cache
from kdcache.tools.verify import recompute_pipeline_store
from tests.conftest import pipeline_dict
from tests.helpers import kdcache

VIEWS = {
    "count": 4,
    "augment": [{"op": "random_resized_crop", "scale": [0.6, 1.0]}, {"op": "random_crop", "padding": 1}],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 4-view store of the test pipeline (its teacher trained briefly) and the pipeline as a YAML file."""
    tmp = tmp_path_factory.mktemp("verify")
    raw = pipeline_dict(tmp, views=VIEWS)
    cfg = parse_pipeline(raw)
    run_precompute(cfg, progress=False)
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Path(cfg.store_url), path, raw


def other_teacher(raw: dict, path: Path) -> Path:
    """A teacher of the same architecture with other weights, saved where a pipeline can point at it."""
    torch.manual_seed(1)
    save_model(DigitsCNN(10, width=16), path, spec=model_spec(parse_pipeline(raw), "teacher"))
    return path


def test_recompute_is_exact_on_a_fresh_store_and_fails_for_another_teacher(built, tmp_path):
    store, _, raw = built
    report = recompute_pipeline_store(parse_pipeline(raw), str(store), pairs=200, progress=False)
    logits = report.targets["logits"]
    assert report.passed and report.pairs == 200 and report.fingerprint_matches
    assert report.params_mismatches == 0
    assert (logits.max_abs_error, logits.min_cosine, logits.exact) == (0.0, pytest.approx(1.0, abs=1e-12), 200)
    assert 0 < logits.encoding_error < 0.02  # float16 rounding of logits of magnitude < 20

    swapped = dict(raw, teacher={**raw["teacher"], "checkpoint": str(other_teacher(raw, tmp_path / "o.safetensors"))})
    report = recompute_pipeline_store(parse_pipeline(swapped), str(store), pairs=200, progress=False)
    logits = report.targets["logits"]
    assert not report.passed and report.fingerprint_matches is False
    assert logits.max_abs_error > 0.1 and logits.min_cosine < 0.999 and logits.exact == 0


def verify(capsys, *args: str) -> tuple[int, str]:
    """``kdcache verify ...`` through the CLI's entry point: its exit status and what it printed."""
    capsys.readouterr()
    status = main(["verify", *args])
    return status, capsys.readouterr().out


def test_cli_verify_exit_codes(built, tmp_path, capsys):
    store, pipeline, raw = built
    status, out = verify(capsys, str(store))
    assert status == 0 and "committed shard file(s) checked (metadata, size and SHA-256): no problems" in out

    status, out = verify(capsys, str(store), "--recompute", "64", "--pipeline", str(pipeline), "--quiet")
    assert status == 0, out
    for text in ("re-run on 64 (sample, view) pairs", "64/64", "view parameters: 64/64 identical", "PASSED"):
        assert text in out

    other = other_teacher(raw, tmp_path / "other.safetensors")
    status, out = verify(
        capsys, str(store), "--recompute", "64", "--pipeline", str(pipeline), "--set", f"teacher.checkpoint={other}"
    )
    assert status == 1 and "FAILED" in out and "DIFFERS from the store's" in out

    with pytest.raises(SystemExit) as usage:
        main(["verify", str(store), "--recompute", "8"])
    assert usage.value.code == 2 and "--recompute needs --pipeline" in capsys.readouterr().err


def test_cli_scrub_reports_a_damaged_shard(built, tmp_path):
    """Through a fresh interpreter, as users run it: a flipped byte is found and the exit status is 1."""
    store, _, _ = built
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    cache = open_cache(str(copy))
    key = cache.manifest.teachers["cnn16"].shards[0].files["teachers/cnn16/logits"].key
    shard = copy / key
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the digest can tell
    shard.write_bytes(bytes(data))
    result = kdcache("verify", str(copy))
    assert result.returncode == 1
    assert "damaged" in result.stdout and "teachers/cnn16/logits, shard 0" in result.stdout
    assert "1 problem(s)" in result.stdout
