"""``kdcache verify``: the digest scrub, and ``--recompute`` re-running the teacher against every kind of cached
class target (dense, int8 and top-k logits, features, embeddings, FSP matrices)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kdcache.checkpoint import save_model
from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import load_teacher, model_spec
from kdcache.pipeline.distill import run_precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.tools.recompute import Tolerance, recompute_check, recompute_pipeline_store
from tests.conftest import cache_digits, pipeline_dict
from tests.helpers import kdcache

VIEWS = {
    "count": 4,
    "augment": [{"op": "random_resized_crop", "scale": [0.6, 1.0]}, {"op": "random_crop", "padding": 1}],
}
TARGETS = [
    {"kind": "logits"},
    {"kind": "logits", "encoding": "int8"},
    {"kind": "logits", "encoding": "topk", "k": 3, "dtype": "bfloat16", "temperatures": [1.0, 4.0]},
    {"kind": "features", "layer": "layer2", "pool": [2, 2]},
    {"kind": "embedding", "layer": "layer3", "dtype": "float32"},
    {"kind": "fsp", "layers": ["layer1", "layer2"], "dtype": "bfloat16"},
]
LOGITS = {"logits", "logits_int8", "logits_topk"}
LAYERS = {"features/layer2", "embedding/layer3", "fsp/layer1__layer2"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 4-view store of the test pipeline (its teacher trained briefly) holding every class target kind, and the
    pipeline as a YAML file."""
    tmp = tmp_path_factory.mktemp("verify")
    raw = pipeline_dict(tmp, views=VIEWS, cache__targets=TARGETS)
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


def relabelled_teacher(raw: dict, path: Path) -> Path:
    """The store's own teacher with the rows of its classifier reversed: every layer's output is unchanged, the
    logits are the same numbers for other classes (so their log-sum-exp is unchanged too)."""
    cfg = parse_pipeline(raw)
    teacher = load_teacher(cfg)
    with torch.no_grad():
        teacher.fc.weight.copy_(teacher.fc.weight.flip(0))
        teacher.fc.bias.copy_(teacher.fc.bias.flip(0))
    save_model(teacher, path, spec=model_spec(cfg, "teacher"))
    return path


def test_recompute_is_exact_for_every_class_target_kind(built):
    store, _, raw = built
    report = recompute_pipeline_store(parse_pipeline(raw), str(store), pairs=200, progress=False)
    assert report.passed and report.pairs == 200 and report.fingerprint_matches
    assert report.params_mismatches == 0 and set(report.targets) == LOGITS | LAYERS
    for name, t in report.targets.items():
        assert (t.pairs, t.exact, t.max_abs_error) == (200, 200, 0.0), name
    dense = [report.targets[name] for name in ("logits", "logits_int8", *LAYERS)]
    assert all(t.min_cosine == pytest.approx(1.0, abs=1e-12) and t.lse_error is None for t in dense)
    assert 0 < report.targets["logits"].encoding_error < 0.02  # float16 rounding of logits of magnitude < 20
    assert 0 < report.targets["logits_int8"].encoding_error < 0.1  # half a step of (max - min) / 255
    assert report.targets["embedding/layer3"].encoding_error == 0.0  # stored as float32
    topk = report.targets["logits_topk"]
    assert (topk.ids_agreement, topk.lse_error, topk.min_cosine) == (1.0, 0.0, None)
    assert 0 < topk.encoding_error < 0.2  # bfloat16 rounding of the kept logits
    assert topk.kind == "logits top-3 bfloat16" and report.targets["logits_int8"].kind == "logits int8"


def test_recompute_fails_the_targets_another_teacher_changes(built, tmp_path):
    store, _, raw = built
    swapped = dict(raw, teacher={**raw["teacher"], "checkpoint": str(other_teacher(raw, tmp_path / "o.safetensors"))})
    report = recompute_pipeline_store(parse_pipeline(swapped), str(store), pairs=200, progress=False)
    logits = report.targets["logits"]
    assert not report.passed and report.fingerprint_matches is False
    assert logits.max_abs_error > 0.1 and logits.min_cosine < 0.999 and logits.exact == 0
    assert not any(t.passed(report.tolerance) for t in report.targets.values())

    relabelled = relabelled_teacher(raw, tmp_path / "r.safetensors")
    moved = dict(raw, teacher={**raw["teacher"], "checkpoint": str(relabelled)})
    report = recompute_pipeline_store(parse_pipeline(moved), str(store), pairs=200, progress=False)
    verdict = {name: t.passed(report.tolerance) for name, t in report.targets.items()}
    assert verdict == {**dict.fromkeys(LOGITS, False), **dict.fromkeys(LAYERS, True)}
    assert all(report.targets[name].max_abs_error == 0.0 for name in LAYERS)
    topk = report.targets["logits_topk"]
    assert topk.ids_agreement < 0.5 and topk.max_abs_error > 0.1
    assert topk.lse_error < 1e-4  # the same numbers under other ids: only the ids and values by id tell

    chosen = recompute_pipeline_store(
        parse_pipeline(moved), str(store), pairs=50, targets=["features/layer2"], progress=False
    )
    assert list(chosen.targets) == ["features/layer2"] and chosen.passed


def constant_teacher(bias: list[float]) -> DigitsCNN:
    """A digits CNN whose logits are ``bias`` for every input (classifier weights zero)."""
    model = DigitsCNN(10, width=2)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor(bias))
    return model.eval()


def test_top_k_ids_may_differ_only_where_the_live_values_tie(tmp_path, digits_small, views):
    """Classes 2 and 3 tie exactly for third place: the store keeps one of them. A live teacher that lifts the other
    by 1e-4 (less than float16's rounding at 3) picks it instead: tied, so it passes, with 2 of 3 ids agreeing. Lifted
    by 0.5 it is no tie and fails."""
    bias = [5.0, 4.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    cache_digits(
        tmp_path / "s.zarr",
        constant_teacher(bias),
        digits_small,
        views,
        [build_target("logits", {"encoding": "topk", "k": 3})],
    )
    cache = open_store(str(tmp_path / "s.zarr"))
    kept = int(cache.open_array("teachers/t8/logits_topk/indices")[0, 0, 2])
    assert kept in (2, 3)
    other = 5 - kept
    reports = {}
    for lift in (1e-4, 0.5):
        live = constant_teacher([b + lift * (c == other) for c, b in enumerate(bias)])
        reports[lift] = recompute_check(
            cache, live, digits_small, views, teacher_name="t8", pairs=60, progress=False
        ).targets["logits_topk"]
    tied, apart = reports[1e-4], reports[0.5]
    assert tied.passed(Tolerance()) and tied.ids_agreement == pytest.approx(2 / 3) and tied.max_abs_error == 0.0
    assert tied.lse_error < 1e-4 and tied.exact == 0
    assert not apart.passed(Tolerance()) and apart.ids_agreement == pytest.approx(2 / 3)


def test_unknown_target_names_are_refused_with_the_known_ones(built):
    store, _, raw = built
    with pytest.raises(ConfigError, match=r"no target named \['logit'\]; its targets are \['embedding/layer3', "):
        recompute_pipeline_store(parse_pipeline(raw), str(store), pairs=8, targets=["logits", "logit"])


def verify(capsys, *args: str) -> tuple[int, str]:
    """``kdcache verify ...`` through the CLI's entry point: its exit status and what it printed."""
    capsys.readouterr()
    status = main(["verify", *args])
    return status, capsys.readouterr().out


def test_cli_verify_exit_codes(built, tmp_path, capsys):
    store, pipeline, raw = built
    status, out = verify(capsys, str(store))
    assert (
        status == 0
        and "committed shard file(s) checked (metadata, records, size, SHA-256 and stored values): no problems" in out
    )

    status, out = verify(capsys, str(store), "--recompute", "64", "--pipeline", str(pipeline), "--quiet")
    assert status == 0, out
    for text in (
        "re-run on 64 (sample, view) pairs",
        "64/64",
        "view parameters: 64/64 identical",
        "PASSED",
        "ids agree",
        "lse error",
        "logits top-3 bfloat16",
        "fsp/layer1__layer2",
        "100.0000%",
    ):
        assert text in out
    assert out.count(" pass ") == len(TARGETS)

    relabelled = relabelled_teacher(raw, tmp_path / "relabelled.safetensors")
    moved = [
        str(store),
        "--recompute",
        "32",
        "--pipeline",
        str(pipeline),
        "--quiet",
        "--set",
        f"teacher.checkpoint={relabelled}",
    ]
    status, out = verify(capsys, *moved, "--targets", "features/layer2,embedding/layer3")
    assert status == 0 and "PASSED" in out and "embedding/layer3" in out and "logits" not in out.split("PASSED")[0]
    status, out = verify(capsys, *moved, "--targets", "features/layer2,logits_topk")
    assert status == 1 and "FAILED" in out and out.count(" FAIL ") == 1 and "embedding" not in out
    status = main(["verify", *moved, "--targets", "logits,fsp"])
    err = capsys.readouterr().err
    assert status == 2 and "no target named ['fsp']" in err and "'fsp/layer1__layer2'" in err

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
    cache = open_store(str(copy))
    key = cache.manifest.teachers["cnn16"].shards[0].files["teachers/cnn16/logits"].key
    shard = copy / key
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the digest can tell
    shard.write_bytes(bytes(data))
    result = kdcache("verify", str(copy))
    assert result.returncode == 1
    assert "damaged" in result.stdout and "teachers/cnn16/logits, shard 0" in result.stdout
    assert "1 problem(s)" in result.stdout
