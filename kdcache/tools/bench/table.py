"""The markdown form of a bench report: the goals first, then one table per figure (README-ready)."""

from __future__ import annotations

from typing import Any

from kdcache.tables import markdown_table
from kdcache.tools.bench.delivery import render as render_delivery
from kdcache.tools.bench.peers import ASSUMED_GPU_STUDENTS
from kdcache.tools.bench.startup import render_startup
from kdcache.tools.bench.writes import render_writes


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown; paste it under the README's performance section to update it."""
    s, m = report["settings"], report["machine"]
    f = report["figures"]
    parts = [
        f"Command: `{report['command']}` ({report['seconds'] / 60:.1f} min). Machine: {m['cpu_count']} CPU cores "
        f"({m['processor']}), {m['platform']}; torch {m['libraries']['torch']}, zarr {m['libraries']['zarr']}; "
        f"torch threads {s['threads']} (`OMP_NUM_THREADS={s['threads']}`), device {s['device']}; {m['date']}. "
        "Figures are medians over interleaved rounds, [min–max] over rounds; ratios are paired within a round.",
        "#### Goals\n\n" + _goals(report["goals"]),
        "#### 1. Stage-two step time (same student, same batches)\n\n"
        + _steps(f["step_time"])
        + _digests(f["digests"]),
        "#### 2. Stage-one throughput vs bare teacher inference\n\n" + _stage_one(f["stage_one"]),
        "#### 3. Target reads in stage-two order (block-shuffled, batch "
        f"{s['read_batch']}) vs a numpy memmap of the same bytes\n\n" + _reads(f),
        "#### 4. Bytes per sample and peak memory\n\n" + _bytes(f["bytes_per_sample"]) + "\n" + _memory(f["memory"]),
        "#### 5. Scaling: figure 3 at two store sizes\n\n" + _scaling(f["scaling"]),
        "#### 6. Token-level stage one (language models) vs bare teacher inference\n\n" + _tokens(f["tokens"]),
        render_writes(f["writes"]),
        "#### 8. Target reads against other formats, block and uniform order\n\n" + _peers(f["peers"]),
        "#### 9. In-RAM batch delivery vs a memmap gather of the same rows\n\n" + render_delivery(f["delivery"]),
        render_startup(f["startup"]),
    ]
    return "\n\n".join(part.strip() for part in parts) + "\n"


def _r(x: dict[str, Any], fmt: str = "{:.2f}") -> str:
    """A median with its [min–max] spread."""
    return f"{fmt.format(x['median'])} [{fmt.format(x['min'])}–{fmt.format(x['max'])}]"


def _goals(goals: list[dict[str, Any]]) -> str:
    rows = [
        [
            g["figure"],
            g["what"],
            _r({**g, "median": g["value"]}, "{:.3f}"),
            g["goal"],
            "yes" if g["met"] else "**no**",
            g["why"] or "—",
        ]
        for g in goals
    ]
    return markdown_table(["fig", "ratio", "measured", "goal", "met", "why (measured)"], rows)


def _steps(steps: dict[str, Any]) -> str:
    rows = []
    for s in steps.values():
        t, r = s["seconds_per_step"], s["ratios"]
        rows.append(
            [
                s["workload"],
                str(s["batch_size"]),
                *(f"{1000 * t[v]['median']:.1f}" for v in ("student-only", "cached KD", "cached KD (streamed)")),
                f"{1000 * t['online KD']['median']:.1f}",
                f"{1000 * t['teacher forward']['median']:.1f}",
                _r(r["cached / student-only"], "{:.3f}"),
                _r(r["cached (streamed) / student-only"], "{:.3f}"),
                _r(r["online / cached"]),
                _r(s["expected_online_over_cached"]),
                f"{s['target_fetch_share_of_step']['median']:+.1%}",
                f"{s['kd_loss_share_of_step']['median']:+.1%}",
                f"{s['digest_check_share_of_step']['median']:.2%}",
                f"{s['view_digest_check_share_of_step']['median']:.2%}",
            ]
        )
    header = [
        "workload",
        "batch",
        "student-only ms/step",
        "cached KD",
        "cached KD (streamed)",
        "online KD",
        "teacher forward",
        "cached / student-only",
        "streamed / student-only",
        "online / cached",
        "expected online / cached",
        "target fetch (share of step)",
        "KD loss (share of step)",
        "digest check (share of step)",
        "view digest check (share of step)",
    ]
    return markdown_table(header, rows)


def _digests(d: dict[str, Any]) -> str:
    return (
        f"\nContent checks at a real image size ({d['images']}, best of 5): per-sample digest (XXH3-128 of the uint8 "
        f"images) {d['sample_digest_ms_per_batch']:.1f} ms a batch, per-view digest (XXH3-128 of the float32 model "
        f"inputs) {d['view_digest_ms_per_batch']:.1f} ms a batch ({d['view_digest_gb_per_s']:.1f} GB/s, one core).\n"
    )


def _stage_one(stage_one: dict[str, Any]) -> str:
    rows = []
    for s in stage_one.values():
        for kind, k in s["kinds"].items():
            rows.append(
                [
                    s["workload"],
                    kind,
                    f"{k['disk_bytes_per_sample']:,.0f}",
                    f"{s['bare_samples_per_second']['median']:,.0f}",
                    f"{k['samples_per_second']['median']:,.0f}",
                    _r(k["ratio_to_bare"], "{:.3f}"),
                    f"{k['ratio_to_bare_without_tail']['median']:.3f}",
                    str(k["shards"]),
                    f"{k['writer_busy_seconds']['median']:.2f}",
                    f"{k['tail_seconds']['median']:.2f}",
                    f"{k['setup_seconds']['median']:.2f}",
                ]
            )
    header = [
        "teacher",
        "target",
        "disk B/sample",
        "bare samples/s",
        "stage one samples/s",
        "ratio",
        "ratio w/o last shard",
        "shards",
        "writer busy s",
        "last shard + manifest s",
        "setup s",
    ]
    return markdown_table(header, rows)


def _reads(f: dict[str, Any]) -> str:
    store = f["scaling"]["sizes"][f["reads"]["store"]]
    head = (
        f"Store: {store['samples']:,} samples × {store['bytes_per_sample']:,} B ({store['store_megabytes']:.0f} MB), "
        f"chunk {store['chunk_samples']} samples, shard {store['shard_samples']}.\n\n"
    )
    rows = []
    for state in ("warm", "cold"):
        if state not in store:
            continue
        e = store[state]
        rates = e["samples_per_second"]
        for which in ("pass 1", "pass 2"):
            lib = rates[f"library, {which}"]
            rows.append(
                [
                    state,
                    which,
                    f"{lib['median']:,.0f} ({lib['gigabytes_per_second']:.2f} GB/s)",
                    f"{rates['memmap']['median']:,.0f} ({rates['memmap']['gigabytes_per_second']:.2f} GB/s)",
                    _r(e["ratio_to_memmap"][which]),
                    f"{e['pass_2_chunks_read']} of {e['chunks']}" if which == "pass 2" else str(e["chunks"]),
                ]
            )
    table = markdown_table(
        ["page cache", "pass", "library samples/s", "memmap samples/s", "ratio", "chunks read"], rows
    )
    parts = store["parts_samples_per_second"]
    table += "\nParts, each alone (warm): " + ", ".join(f"{k} {v:,.0f} samples/s" for k, v in parts.items()) + ".\n"
    pass1 = store["warm"]["samples_per_second"]["library, pass 1"]["median"]
    consumers = f["reads"]["student_samples_per_second"]
    table += (
        "\nRead rate (warm pass 1) vs the rate the student consumes samples (figure 1, student-only): "
        + ", ".join(f"{name} {rate:,.0f} samples/s → {pass1 / rate:,.0f}× headroom" for name, rate in consumers.items())
        + ".\n"
    )
    return head + table


def _bytes(rows: list[dict[str, Any]]) -> str:
    table = [
        [
            r["store"],
            r["target"],
            ", ".join(f"{k}={v}" for k, v in r["params"].items()),
            f"{r['raw']:,}",
            f"{r['disk']:,.1f}",
            "/".join(r["codec"]),
        ]
        for r in rows
    ]
    return markdown_table(["store", "target", "params", "raw B/sample", "disk B/sample", "codec"], table)


def _memory(memory: dict[str, Any]) -> str:
    rows = []
    for name, m in memory.items():
        peaks = m["peak_rss_megabytes"]
        ratios = m["ratio_to_student_only"]
        rows.append(
            [
                name,
                f"{peaks['student-only']['median']:.0f}",
                f"{peaks['cached KD']['median']:.0f}",
                f"{peaks['cached KD (streamed)']['median']:.0f}",
                _r(ratios["cached KD"], "{:.3f}"),
                _r(ratios["cached KD (streamed)"], "{:.3f}"),
            ]
        )
    header = ["workload", "student-only MB", "cached KD MB", "streamed MB", "cached / student", "streamed / student"]
    return markdown_table(header, rows)


def _tokens(tokens: dict[str, Any]) -> str:
    rows = [
        [
            name,
            ", ".join(f"{k}={v}" for k, v in kind["params"].items()),
            f"{kind['raw_bytes_per_token']:,.1f}",
            f"{kind['disk_bytes_per_token']:,.1f}",
            str(kind.get("goal_bytes_per_token", "—")),
            f"{tokens['bare_tokens_per_second']['median']:,.0f}",
            f"{kind['tokens_per_second']['median']:,.0f}",
            _r(kind["ratio_to_bare"], "{:.3f}"),
        ]
        for name, kind in tokens["kinds"].items()
    ]
    header = [
        "target",
        "params",
        "raw B/token",
        "disk B/token",
        "goal B/token (4 + 6k)",
        "bare tokens/s",
        "stage one tokens/s",
        "ratio",
    ]
    steps = tokens["step_time"]
    return (
        f"Teacher: {tokens['workload']}; {tokens['samples']} sequences, batch {tokens['batch_size']}. DistillKit "
        "stores ≈ 300 B/token at k = 128.\n\n" + markdown_table(header, rows) + "\nStage-two step time of the "
        f"pipeline's student (batch {steps['batch_size']}, {steps['steps_per_round']} steps a round), as figure 1:"
        "\n\n" + _steps({"tokens": steps})
    )


def _scaling(scaling: dict[str, Any]) -> str:
    rows = []
    for entry in sorted(scaling["sizes"].values(), key=lambda e: e["samples"]):
        for state in ("warm", "cold"):
            if state not in entry:
                continue
            rates = entry[state]["samples_per_second"]
            evicted = entry[state]["resident_fraction_after_evict"]
            rows.append(
                [
                    f"{entry['samples']:,} ({entry['store_megabytes']:.0f} MB)",
                    state if evicted is None else f"{state} ({100 * evicted:.1f}% resident after eviction)",
                    *(f"{rates[w]['median']:,.0f}" for w in ("library, pass 1", "library, pass 2", "memmap")),
                    _r(entry[state]["ratio_to_memmap"]["pass 1"]),
                    _r(entry[state]["ratio_to_memmap"]["pass 2"]),
                ]
            )
    header = [
        "store",
        "page cache",
        "pass 1 samples/s",
        "pass 2 samples/s",
        "memmap",
        "pass 1 / memmap",
        "pass 2 / memmap",
    ]
    table = markdown_table(header, rows)
    growth = ", ".join(f"{k} {v:.2f}×" for k, v in scaling["per_sample_cost_growth"].items())
    return table + f"\nPer-sample cost, large / small store ({scaling['size_ratio']:.0f}× the samples): {growth}.\n"


def _peers(figure: dict[str, Any]) -> str:
    """Samples/s and ratio to memmap per format and order, then the read rate against GPU students on paper."""
    orders = figure["orders"]
    rows = [
        [
            name,
            f"{orders['B'][name]['samples_per_second']['median']:,.0f}",
            _r(orders["B"][name]["ratio_to_memmap"]),
            f"{orders['U'][name]['samples_per_second']['median']:,.0f}",
            _r(orders["U"][name]["ratio_to_memmap"]),
        ]
        for name in orders["B"]
    ]
    head = (
        f"Store: {figure['samples']:,} samples × {figure['bytes_per_sample']:,} B; {figure['batches']} batches of "
        f"{figure['batch']} per order, warm page cache. B: stage two's block-shuffled order; U: uniform shuffle.\n\n"
    )
    table = markdown_table(["format", "B samples/s", "B / memmap", "U samples/s", "U / memmap"], rows)
    streamed = orders["U"]["kdcache, streamed"]["samples_per_second"]["median"]
    paper = ", ".join(
        f"{name}: {rate:,.0f} samples/s ({streamed / rate:.1f}× headroom streamed in U order)"
        for name, rate in ASSUMED_GPU_STUDENTS.items()
    )
    return head + table + f"\nGPU students on paper (no GPU here): {paper}.\n"
