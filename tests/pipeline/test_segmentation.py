"""pipelines/digits_seg_pspnet.yaml end to end on a CI-sized subset: teacher, stage one (logits + aux maps), the
four student variants, and a table of mIoU and pixel accuracy with the bytes per sample of each cached target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdcache.pipeline import load_pipeline, run_pipeline
from kdcache.store import open_store

SUBSET = [
    "data.args.train_samples=128",
    "data.args.test_samples=64",
    "teacher.train.stages.0.epochs=2",
    "student.train.stages.0.epochs=2",
    "compare.1.stages.0.epochs=2",
]


@pytest.mark.slow
def test_segmentation_pipeline_on_a_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = load_pipeline("pipelines/digits_seg_pspnet.yaml", [*SUBSET, f"output_dir={tmp_path / 'run'}"])
    summary = run_pipeline(cfg, progress=False)

    printed = capsys.readouterr().out
    for text in ("test mIoU", "test pixel accuracy", "student (scratch)", "student (logits_aux_kd_live)"):
        assert text in printed
    students = summary["students"]
    assert list(students) == ["scratch", "logits_kd", "logits_aux_kd", "logits_aux_kd_live"]
    for result in [summary["teacher"]["test"], *(s["test"] for s in students.values())]:
        assert set(result) == {"miou", "pixel_accuracy"} and all(0 < v <= 1 for v in result.values())
    # Two epochs on 128 canvases teach the teacher the background (~93% of labelled pixels, mIoU ~0.93/11), not
    # the digits: the full pipeline's figures are in pipelines/README.md. What the subset checks is the plumbing.
    assert summary["teacher"]["test"]["pixel_accuracy"] > 0.85 and summary["teacher"]["test"]["miou"] > 0.08
    cached, live = students["logits_aux_kd"]["test"], students["logits_aux_kd_live"]["test"]
    for metric in ("miou", "pixel_accuracy"):  # the store holds fp16 copies of what the live teacher computes
        assert abs(cached[metric] - live[metric]) < 0.01

    per_target = summary["store"]["target_bytes_per_sample"]
    assert set(per_target) == {"logits", "features/aux"}
    raw = 11 * 8 * 8 * 2  # fp16 (11, 8, 8) per sample, before zstd
    assert all(0 < size < raw for size in per_target.values())  # compressed below the raw fp16 bytes
    store = open_store(cfg.store_url)
    logits = store.teacher(cfg.teacher.name).targets["logits"].arrays["logits"]
    assert logits.shape == [128, 1, 11, 8, 8] and logits.dtype == "float16" and logits.compressor == "zstd"
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["students"]["scratch"]["test"] == students["scratch"]["test"]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
