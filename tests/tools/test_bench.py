"""``kdcache bench``: the interleaving it relies on, the page-cache control behind figure 5, and the report of a
real ``--quick`` run (its structure and the quantities that do not depend on timing; never the timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdcache.tools.bench import pagecache
from kdcache.tools.bench.rounds import interleave
from kdcache.tools.bench.tokens import STDLIB_LM
from kdcache.tools.bench.workloads import DIGITS_KD
from tests.conftest import ROOT


def test_rounds_rotate_the_order_and_pair_ratios_within_a_round():
    calls: list[str] = []
    values = {"a": iter([9.0, 2.0, 4.0, 8.0]), "b": iter([9.0, 1.0, 1.0, 2.0])}

    def variant(name: str):
        def run() -> float:
            calls.append(name)
            return next(values[name])

        return run

    samples = interleave({"a": variant("a"), "b": variant("b")}, rounds=3, warmup=1, progress=False)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # round r starts at variant r mod 2
    assert samples.values == {"a": [2.0, 4.0, 8.0], "b": [1.0, 1.0, 2.0]}  # the warm-up round is dropped
    ratio = samples.ratio("a", "b")
    assert ratio["rounds"] == [2.0, 4.0, 4.0]
    assert (ratio["median"], ratio["min"], ratio["max"]) == (4.0, 2.0, 4.0)


def test_evict_drops_a_file_from_the_page_cache_and_warm_reads_it_back(tmp_path: Path):
    path = tmp_path / "block.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4 << 20))
    pagecache.warm([path])
    assert pagecache.resident_fraction([path]) == 1.0
    pagecache.evict([path])
    assert pagecache.resident_fraction([path]) == 0.0


def _positive_spread(entry: dict) -> None:
    assert entry["min"] > 0 and entry["min"] <= entry["median"] <= entry["max"], entry


def test_the_bench_digits_workload_is_the_digits_kd_pipeline():
    assert yaml.safe_load((ROOT / "pipelines" / "digits_kd.yaml").read_text()) == DIGITS_KD


def test_the_bench_token_workload_is_the_stdlib_lm_pipeline():
    pipeline = yaml.safe_load((ROOT / "pipelines" / "stdlib_lm.yaml").read_text())
    pipeline["data"]["args"] = {"seq_len": pipeline["data"]["args"]["seq_len"]}  # the bench generates its tokens
    del pipeline["compare"]
    assert pipeline == STDLIB_LM


@pytest.mark.slow
def test_quick_bench_writes_every_figure_and_judges_every_goal(tmp_path: Path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "kdcache", "bench", "--quick", "--quiet", "--out", "bench"],
        cwd=tmp_path,  # outside the repository: the bench needs nothing from it
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert not (out / "work").exists()  # scratch stores are removed
    assert report["settings"]["quick"] is True and report["settings"]["threads"] >= 1
    figures = report["figures"]
    assert set(figures) >= {"step_time", "stage_one", "reads", "bytes_per_sample", "memory", "scaling", "tokens"}

    for workload in ("resnet", "digits"):  # figure 1
        steps = figures["step_time"][workload]
        for name in ("cached / student-only", "cached (streamed) / student-only", "online / cached"):
            _positive_spread(steps["ratios"][name])
        _positive_spread(steps["expected_online_over_cached"])
        assert {"target_fetch_share_of_step", "kd_loss_share_of_step"} <= set(steps)
        assert steps["expected_online_over_cached"]["min"] > 1  # 1 + teacher forward / student step
        assert len(steps["seconds_per_step"]["online KD"]["rounds"]) == report["settings"]["step_rounds"]
        stage_one = figures["stage_one"][workload]  # figure 2
        for kind in stage_one["kinds"].values():
            _positive_spread(kind["ratio_to_bare"])
            assert kind["shards"] >= 1 and kind["writer_busy_seconds"]["min"] > 0
    assert set(figures["stage_one"]["resnet"]["kinds"]) == {"logits", "features/layer1"}

    small, large = (figures["scaling"]["sizes"][str(n)] for n in report["settings"]["read_sizes"])
    for entry in (small, large):  # figures 3 and 5
        for state in ("warm", "cold"):
            for which in ("pass 1", "pass 2"):
                _positive_spread(entry[state]["ratio_to_memmap"][which])
            assert entry[state]["pass_2_chunks_read"] >= entry[state]["chunks"]  # pass 2 reads from the store
            _positive_spread(entry[state]["ratio_to_memmap"]["uniform"])
            _positive_spread(entry[state]["uniform_over_block"])
        assert entry["cold"]["resident_fraction_after_evict"] <= 0.01
        assert all(rate > 0 for rate in entry["parts_samples_per_second"].values())
    assert figures["reads"]["store"] == str(report["settings"]["read_sizes"][0])
    assert set(figures["scaling"]["per_sample_cost_growth"]) >= {"warm, library, pass 1", "cold, memmap"}

    raw = {(row["store"].split(",")[0], row["target"]): row for row in figures["bytes_per_sample"]}  # figure 4
    assert raw[("ResNet-50 teacher", "logits")]["raw"] == 200  # 100 classes x fp16
    assert raw[("ResNet-50 teacher", "logits_int8")]["raw"] == 100 + 4 + 4  # int8 per class + scale + offset
    assert raw[("ResNet-50 teacher", "logits_topk")]["raw"] == 10 * 2 + 10 * 2 + 2 * 4  # k values, indices, 2 LSEs
    assert raw[("ResNet-50 teacher", "features/layer1")]["raw"] == 256 * 8 * 8 * 2
    assert raw[("linear teacher", "logits")]["raw"] == 2000
    for row in figures["bytes_per_sample"]:
        if row["codec"] == ["none"]:
            assert row["disk"] >= row["raw"]  # checksums and shard index on top of the data
    for memory in figures["memory"].values():
        for ratio in memory["ratio_to_student_only"].values():
            _positive_spread(ratio)

    tokens = figures["tokens"]  # figure 6: token-level stage one
    assert tokens["seq_len"] == 128 and set(tokens["kinds"]) == {"token_logits_topk", "token_logits_sampled"}
    _positive_spread(tokens["bare_tokens_per_second"])
    for kind in tokens["kinds"].values():
        _positive_spread(kind["ratio_to_bare"])
        _positive_spread(kind["tokens_per_second"])
        assert kind["disk_bytes_per_token"] > 0
    assert set(tokens["reads"]) == {"token_logits_topk", "token_logits_sampled"}  # figure 6: streamed token reads
    for reads in tokens["reads"].values():
        _positive_spread(reads["ratio_to_memmap"])
    topk = tokens["kinds"]["token_logits_topk"]
    assert topk["disk_bytes_per_token"] >= topk["raw_bytes_per_token"]  # fp16 log-probs are stored uncompressed
    assert topk["raw_bytes_per_token"] == 4 + 4 * 32 and topk["goal_bytes_per_token"] == 4 + 6 * 32
    assert tokens["kinds"]["token_logits_sampled"]["raw_bytes_per_token"] == 32 * (2 + 1)

    writes = figures["writes"]  # figure 7: the same rows through every writer
    assert (
        set(writes["samples_per_second"])
        == set(writes["ratio_to_h5py"])
        >= {"kdcache writer path", "h5py", "safetensors", "numpy memmap"}
    )
    for name, rate in writes["samples_per_second"].items():
        _positive_spread(rate)
        _positive_spread(writes["ratio_to_h5py"][name])
    assert writes["kdcache_parts_seconds"]["shard commits (writer)"]["min"] > 0
    peers = figures["peers"]  # figure 8: the same rows in other formats, B and U order
    assert set(peers["orders"]) == {"B", "U"}
    for order in peers["orders"].values():
        assert order["numpy memmap"]["ratio_to_memmap"]["median"] == 1
        assert {"safetensors get_slice", "h5py, 512-row chunks", "kdcache, streamed", "kdcache, in RAM"} <= set(order)
        for variant in order.values():
            _positive_spread(variant["samples_per_second"])
    delivery = figures["delivery"]  # figure 9: in-RAM batch delivery against a memmap gather of the same rows
    assert delivery["samples"] == report["settings"]["read_sizes"][0] and delivery["params_stored"] is False
    assert set(delivery["ratio_to_memmap"]) == set(delivery["samples_per_second"]) - {"memmap gather"}
    for name, rate in delivery["samples_per_second"].items():
        _positive_spread(rate)
        if name != "memmap gather":
            _positive_spread(delivery["ratio_to_memmap"][name])
    assert all(ms >= 0 for ms in delivery["parts_ms_per_batch"].values())
    startup = figures["startup"]  # figure 10: commands that need no torch start without it
    assert set(startup["seconds"]) == {"kdcache --help", "import kdcache.store", "import torch"}
    for seconds in startup["seconds"].values():
        _positive_spread(seconds)
        assert len(seconds["rounds"]) == report["settings"]["startup_rounds"]
    for name, loaded in startup["loaded"].items():
        assert loaded["torch"] is False and loaded["kdcache_modules"] >= 1, name
        _positive_spread(startup["ratio_to_import_torch"][name])

    goals = report["goals"]
    assert {g["figure"] for g in goals} == {"1a", "1b", "2", "3", "4", "6", "7", "9", "10"}
    for goal in goals:
        assert goal["value"] > 0 and isinstance(goal["met"], bool)
        assert goal["met"] or goal["why"]  # a missed goal says why
    markdown = (out / "bench.md").read_text()
    headings = (
        "Goals",
        "1. Stage-two step time",
        "2. Stage-one",
        "3. Target reads",
        "4. Bytes",
        "5. Scaling",
        "6. Token-level stage one",
        "7. Writes",
        "8. Target reads against other formats",
        "9. In-RAM",
        "10. Start time",
    )
    for heading in headings:
        assert heading in markdown
    assert "kdcache bench --quick" in markdown
