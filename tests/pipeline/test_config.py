"""Pipeline files are validated; each error names the key and the valid choices."""

from __future__ import annotations

import pytest

from kdcache.errors import ConfigError
from kdcache.pipeline import load_pipeline, parse_pipeline
from tests.conftest import ROOT, pipeline_dict


def test_every_shipped_pipeline_validates():
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        assert load_pipeline(path).name == path.stem


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"data__shuffle": True},
            r"data\.shuffle: unknown key; valid keys here: dataset, args, splits, num_classes, task",
        ),
        ({"student__train__batch_size": "many"}, r"student\.train\.batch_size: Input should be a valid integer"),
        (
            {"student__model": {"arch": "resnet-9000"}},
            r"unknown model 'resnet-9000'.*Valid choices: (.*, )?digits-cnn, digits-mlp",
        ),
        ({"student__model": {"arch": "digits-cnm"}}, r"Did you mean 'digits-cnn'\?"),
        ({"data__dataset": "mnist"}, r"unknown dataset 'mnist'.*Valid choices: chat, digits, .*hdf5"),
        ({"cache__shard_samples": 100}, r"shard_samples must be a power of two"),
        ({"data__num_classes": 1}, r"data\.num_classes: Input should be greater than 1"),
        ({"views": {"eval": []}}, r"views\.eval: views\.eval is an empty list: list at least one torchvision step"),
        ({"views": {"pipeline": []}}, r"views\.pipeline: views\.pipeline is an empty list"),
    ],
    ids=[
        *("unknown-key", "wrong-type", "unknown-model", "typo-model", "unknown-dataset", "shard-not-pow2"),
        *("one-class", "empty-eval", "empty-pipeline"),
    ],
)
def test_invalid_values_are_explained(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(pipeline_dict(tmp_path, **changes))


def test_loss_parameters_are_checked_against_the_named_loss(tmp_path):
    stages = [{"epochs": 1, "losses": [{"name": "kd", "temprature": 4}]}]
    with pytest.raises(
        ConfigError,
        match=r"kd: temprature: Extra inputs are not permitted \(valid keys: temperature, target, student_layer\)",
    ):
        parse_pipeline(pipeline_dict(tmp_path, student__train__stages=stages))


def test_unknown_loss_and_target_kind(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown loss 'kld'. Did you mean 'kd'\?.*Valid choices: (.*, )?ce, .*feature_kd, fsp, hint, kd, (.*, )?rkd_angle",
    ):
        parse_pipeline(pipeline_dict(tmp_path, student__train__stages=[{"epochs": 1, "losses": [{"name": "kld"}]}]))
    with pytest.raises(ConfigError, match=r"unknown target kind 'logit'. Did you mean 'logits'\?"):
        parse_pipeline(pipeline_dict(tmp_path, cache__targets=[{"kind": "logit"}]))


def test_overrides_apply_dotted_paths(tmp_path):
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump(pipeline_dict(tmp_path)))
    cfg = load_pipeline(path, ["student.train.stages.0.epochs=7", "seed=3"])
    assert cfg.student.train.stages[0].epochs == 7 and cfg.seed == 3


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(bad)


def test_losses_must_read_targets_the_cache_produces(tmp_path):
    stages = [{"epochs": 1, "losses": [{"name": "kd", "target": "logits_topk"}]}]
    with pytest.raises(
        ConfigError,
        match=r"loss 'kd' reads teacher target\(s\) \['logits_topk'\], but cache.targets produces \['logits'\]",
    ):
        parse_pipeline(pipeline_dict(tmp_path, student__train__stages=stages))


def test_compare_accepts_named_variants_with_their_own_stages(tmp_path):
    variants = [
        "scratch",
        {"name": "kd-t2", "source": "cached", "stages": [{"epochs": 1, "losses": [{"name": "kd", "temperature": 2}]}]},
    ]
    cfg = parse_pipeline(pipeline_dict(tmp_path, compare=variants))
    assert [(v.name, v.source) for v in cfg.compare] == [("scratch", "none"), ("kd-t2", "cached")]
    assert cfg.variant_stages(cfg.variant("kd-t2"))[0].losses[0].params == {"temperature": 2}
    scratch = cfg.variant_stages(cfg.variant("scratch"))
    assert [loss.name for loss in scratch[0].losses] == ["ce"] and scratch[0].epochs == 2
    assert cfg.variant("online").source == "online"  # shorthands are always available to `kdcache train`
    with pytest.raises(ConfigError, match=r"unknown variant 'kd-t4'; this pipeline has \['cached', 'kd-t2'"):
        cfg.variant("kd-t4")


def test_a_variant_without_a_teacher_cannot_read_targets(tmp_path):
    bad = [{"name": "oops", "source": "none", "stages": [{"epochs": 1, "losses": [{"name": "kd"}]}]}]
    with pytest.raises(
        ConfigError,
        match=r"variant 'oops', stage 0 \(main\), loss 'kd' reads teacher targets \['logits'\] but the source is none",
    ):
        parse_pipeline(pipeline_dict(tmp_path, compare=bad))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.train.stages.0.losses.1.weight=.nan", r"losses\.1\.weight: Input should be a finite number"),
        ("student.train.stages.0.losses.0.weight=-.inf", r"losses\.0\.weight: Input should be a finite number"),
        ("student.train.stages.0.losses.1.temperature=.nan", r"kd: temperature: Input should be a finite number"),
        ("student.train.stages.0.losses.1.temperature=.inf", r"kd: temperature: Input should be a finite number"),
        ("student.train.stages.0.optimizer.lr=.nan", r"optimizer\.lr: Input should be a finite number"),
        ("seed=-1", r"seed: seed -1 is outside 0\.\.4294967295, the range every generator a run seeds accepts"),
        ("seed=1.0e+23", r"seed: seed 1e\+23 is outside 0\.\.4294967295"),
        (
            "teacher.name=cnn64/logits",
            r"teacher name 'cnn64/logits' is not allowed: .* may not contain '/'.*'cnn64-logits'",
        ),
        ("teacher.name=../x", r"teacher name '\.\./x' is not allowed"),
        ("teacher.name=a b", r"teacher name 'a b' is not allowed: use letters, digits"),
    ],
    ids=[
        "nan-weight",
        "inf-weight",
        "nan-temperature",
        "inf-temperature",
        "nan-lr",
        "negative-seed",
        "huge-seed",
        "nested-teacher-name",
        "escaping-teacher-name",
        "space-in-teacher-name",
    ],
)
def test_values_the_run_cannot_use_are_refused_at_load(tmp_path, override, message):
    """``.nan`` in YAML would train a NaN student and exit 0; a seed out of range or a teacher name that nests in
    another's arrays would fail later with a raw ValueError: all are ConfigErrors naming the file and the key."""
    import yaml

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(tmp_path)))
    with pytest.raises(ConfigError, match=message) as raised:
        load_pipeline(path, [override])
    assert str(path) in str(raised.value)


def test_the_largest_seed_and_finite_values_load(tmp_path):
    cfg = parse_pipeline(pipeline_dict(tmp_path, seed=2**32 - 1, teacher__name="cnn16.v2-final"))
    assert (cfg.seed, cfg.teacher.name) == (4294967295, "cnn16.v2-final")


def test_ensemble_member_names_are_one_level(tmp_path):
    raw = pipeline_dict(tmp_path)
    raw["teacher"]["ensemble"] = {"members": ["a", "b/logits"]}
    raw["compare"] = ["scratch", "cached"]
    with pytest.raises(ConfigError, match=r"teacher\.ensemble\.members.*teacher name 'b/logits' is not allowed"):
        parse_pipeline(raw)
