"""`kdcache fidelity --store` on a real token store built by a (test-sized) language-model pipeline: bytes per token
from the store's shard files, tail mass from the stored arrays by hand, KL kept equal to token_fidelity's own
figure for the same encoding, and positions without a label left out of every figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from kdcache.checkpoint import save_model
from kdcache.datasets import SampleDataset
from kdcache.errors import ConfigError
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import build_student, load_split, load_teacher, model_spec
from kdcache.pipeline.distill import run_precompute
from kdcache.store import open_store
from kdcache.tools.lm_fidelity import pipeline_store_fidelity, pipeline_student, store_fidelity
from kdcache.tools.token_fidelity import ENCODINGS, TokenBatch, measure, report_token_fidelity
from tests.helpers import kdcache
from tests.lmkit import lm_pipeline_dict

TARGETS = [
    {"kind": "token_logits", "encoding": "topk", "k": 8, "temperatures": [1.0, 2.0]},
    {"kind": "token_logits", "encoding": "sampled", "samples": 8},
]
TODAY = next(iter(ENCODINGS))


@pytest.fixture(scope="module")
def raw(tmp_path_factory, lm_corpus, lm_tokenizer) -> dict:
    """The test LM pipeline (2-block teacher, 1-block student, vocabulary 300) caching top-8 at T = 1, 2 and 8 draws,
    its store written by stage one."""
    raw = lm_pipeline_dict(tmp_path_factory.mktemp("lm-fidelity"), lm_corpus, lm_tokenizer)
    raw["cache"]["targets"] = TARGETS
    run_precompute(parse_pipeline(raw), progress=False)
    return raw


@pytest.fixture(scope="module")
def report(raw) -> dict:
    cfg = parse_pipeline(raw)
    return pipeline_store_fidelity(cfg, cfg.store_url, sequences=10_000, progress=False)


def stored(report: dict, name: str) -> dict:
    return next(r for r in report["targets"] if r["target"] == name)


def test_bytes_per_token_are_the_store_shard_files_over_its_tokens(raw, report):
    cfg = parse_pipeline(raw)
    cache = open_store(cfg.store_url)
    tokens = cache.num_samples * raw["data"]["args"]["seq_len"]
    assert report["sequences"] == cache.num_samples and report["student"].startswith("initial weights")
    for name in ("token_logits_topk", "token_logits_sampled"):
        folder = Path(cfg.store_url) / "teachers" / cfg.teacher.name / name
        files = [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert files and stored(report, name)["bytes/token on disk"] == sum(p.stat().st_size for p in files) / tokens
    assert stored(report, "token_logits_topk")["bytes/token laid out"] == 8 * (2 + 2) + 4 * 2  # uint16 ids, 2 lse
    assert stored(report, "token_logits_sampled")["bytes/token laid out"] == 8 * (2 + 1)


def test_tail_mass_is_the_hand_computation_from_the_stored_arrays(raw, report):
    cfg = parse_pipeline(raw)
    group = zarr.open_group(cfg.store_url, mode="r")
    top = f"teachers/{cfg.teacher.name}/token_logits_topk"
    log_p, lse = (group[f"{top}/{a}"][:, 0].astype(np.float64) for a in ("values", "lse"))
    cache = open_store(cfg.store_url)
    _, labels = load_split(cfg, "train").get_batch(cache.sample_index())
    labelled = labels.numpy() != -100
    assert report["labelled"] == labelled.sum() and report["positions"] == labelled.size
    for m, t in enumerate((1.0, 2.0)):
        tail = (1 - np.exp(log_p / t - lse[..., m : m + 1]).sum(-1))[labelled]
        got = stored(report, "token_logits_topk")["tail"][f"T={t:g}"]
        assert got["mean"] == pytest.approx(tail.mean(), abs=1e-12)
        assert got["p90"] == pytest.approx(np.quantile(tail, 0.9), abs=1e-12)
    assert 0 < tail.mean() < 1 and stored(report, "token_logits_sampled")["tail"] is None


def test_stored_kl_kept_is_token_fidelitys_figure_for_the_same_encoding(raw, report):
    cfg = parse_pipeline(raw)
    teacher, student = load_teacher(cfg), build_student(cfg).eval()
    inputs, labels = load_split(cfg, "train").get_batch(open_store(cfg.store_url).sample_index())
    batches = [
        TokenBatch(inputs[b : b + 5], labels[b : b + 5], np.arange(b, min(b + 5, len(inputs))))
        for b in range(0, len(inputs), 5)
    ]
    topk = stored(report, "token_logits_topk")
    for t in (1.0, 2.0):
        direct = next(r for r in measure(teacher, student, batches, 8, t, progress=False) if r["encoding"] == TODAY)
        assert topk["KL kept"][f"T={t:g}"] == pytest.approx(direct["KL kept"], abs=1e-6)
        assert 0 < direct["KL kept"] < 1
    again = {r["encoding"]: r for r in report["alternatives"]}
    assert again[TODAY]["KL kept"] == pytest.approx(topk["KL kept"], abs=1e-9)  # replayed bytes: the same
    sampled = stored(report, "token_logits_sampled")["KL kept"]
    assert list(sampled) == ["T=1"] and again["8 sampled tokens"]["KL kept"]["T=1"] == pytest.approx(sampled["T=1"])
    assert set(again) >= {*ENCODINGS, "9-bit ids (narrowest)", "7-bit values + 9-bit ids"}
    assert again["9-bit ids (narrowest)"]["bytes/token"] == 16 + 9 + 8 and again["7-bit values + 9-bit ids"]["KL kept"]


def hand_kl(p_logits: np.ndarray, q_logits: np.ndarray, t: float) -> float:
    """T² · KL(softmax(p / T) ‖ softmax(q / T)) of one position, float64."""
    p, q = (np.exp(x / t - np.logaddexp.reduce(x / t)) for x in (p_logits, q_logits))
    return t * t * float((p * np.log(p / q)).sum())


def hand_topk_kl(log_p: np.ndarray, ids: np.ndarray, lse: float, q_logits: np.ndarray, t: float) -> float:
    """T² · KL over the k kept tokens and one tail bin, from one position's stored arrays, float64."""
    p = np.exp(log_p / t - lse)
    q = np.exp(q_logits / t - np.logaddexp.reduce(q_logits / t))[ids]
    bins_p, bins_q = np.append(p, 1 - p.sum()), np.append(q, 1 - q.sum())
    return t * t * float((bins_p * np.log(bins_p / bins_q)).sum())


class Relabelled(SampleDataset):
    """The text split ``base`` with other labels (``(N, L)``, in index order): the same token ids, another mask."""

    def __init__(self, base: SampleDataset, labels: torch.Tensor) -> None:
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.get_batch(indices)[0], self.labels[torch.from_numpy(indices)]

    def describe(self) -> dict:
        return {**self.base.describe(), "relabelled": True}

    def all_labels(self) -> np.ndarray:
        return self.labels.numpy()


def test_positions_without_a_label_count_nowhere(raw, report):
    cfg = parse_pipeline(raw)
    cache = open_store(cfg.store_url)
    inputs, labels = load_split(cfg, "train").get_batch(cache.sample_index())
    keep = [(0, 3), (1, 10), (4, 15), (6, 0)]  # four labelled positions; every other label is -100
    masked = torch.full_like(labels, -100)
    for b, t in keep:
        masked[b, t] = labels[b, t]
    data = Relabelled(load_split(cfg, "train"), masked)
    teacher, student = load_teacher(cfg), build_student(cfg).eval()
    got = store_fidelity(cache, teacher, student, data, teacher_name=cfg.teacher.name, sequences=10_000, progress=False)
    assert got["labelled"] == len(keep)
    group = zarr.open_group(cfg.store_url, mode="r")
    top = f"teachers/{cfg.teacher.name}/token_logits_topk"
    log_p, ids, lse = (group[f"{top}/{a}"][:, 0] for a in ("values", "indices", "lse"))
    with torch.no_grad():
        live, own = teacher(inputs).double().numpy(), student(inputs).double().numpy()
    for m, t in enumerate((1.0, 2.0)):
        full = sum(hand_kl(live[b, p], own[b, p], t) for b, p in keep)
        kept = sum(
            hand_topk_kl(log_p[b, p].astype(np.float64), ids[b, p], float(lse[b, p, m]), own[b, p], t) for b, p in keep
        )
        row = stored(got, "token_logits_topk")
        assert row["KL kept"][f"T={t:g}"] == pytest.approx(kept / full, rel=1e-4)
        tails = [1 - np.exp(log_p[b, p].astype(np.float64) / t - float(lse[b, p, m])).sum() for b, p in keep]
        assert row["tail"][f"T={t:g}"]["mean"] == pytest.approx(np.mean(tails), abs=1e-12)
        assert row["KL kept"][f"T={t:g}"] != pytest.approx(stored(report, "token_logits_topk")["KL kept"][f"T={t:g}"])


def test_a_trained_cached_student_is_used_and_named(raw, tmp_path):
    cfg = parse_pipeline({**raw, "output_dir": str(tmp_path)})
    assert pipeline_student(cfg)[1] == f"initial weights (seed 0; no cached-KD student in {tmp_path})"
    trained = build_student(cfg)
    with torch.no_grad():
        trained.model.lm_head.weight.mul_(2)  # another set of weights than the initial ones
    save_model(trained, tmp_path / "student-cached.safetensors", spec=model_spec(cfg, "student"))
    student, described = pipeline_student(cfg)
    assert described == f"trained cached-KD student 'cached' ({tmp_path / 'student-cached.safetensors'})"
    assert torch.equal(student.model.lm_head.weight, trained.model.lm_head.weight)


def test_the_cli_prints_the_tables_and_writes_json_and_markdown(raw, report, tmp_path):
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = parse_pipeline(raw)
    done = kdcache(
        "fidelity",
        "--store",
        cfg.store_url,
        "--pipeline",
        str(path),
        "--sequences",
        "10000",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "stored token targets" in done.stdout and "7-bit values + 9-bit ids" in done.stdout
    written = json.loads((tmp_path / "out" / "token_fidelity.json").read_text())
    assert written["targets"] == json.loads(json.dumps(report["targets"]))
    assert "| token_logits_topk | token_logits top-8 float16 |" in (tmp_path / "out" / "token_fidelity.md").read_text()
    refused = kdcache("fidelity", "--store", cfg.store_url)
    assert refused.returncode == 2 and "needs --pipeline" in refused.stderr


def test_the_tokens_mode_still_measures_every_encoding():
    table = report_token_fidelity(256, 256, 8, progress=False)
    assert table.count("\n") == 2 + len(ENCODINGS) and "| 7-bit values + 17-bit ids | 28 |" in table


def test_sequences_without_any_label_are_refused(raw):
    cfg = parse_pipeline(raw)
    cache = open_store(cfg.store_url)
    train = load_split(cfg, "train")
    data = Relabelled(train, torch.full_like(train.get_batch(cache.sample_index())[1], -100))
    with pytest.raises(ConfigError, match=r"over labelled positions, and the 3 sequence\(s\) of .* have none"):
        store_fidelity(
            cache,
            load_teacher(cfg),
            build_student(cfg),
            data,
            teacher_name=cfg.teacher.name,
            sequences=3,
            progress=False,
        )
