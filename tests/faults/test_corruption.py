"""Damaged stores: every flipped, truncated, emptied, deleted or swapped shard, and damaged metadata, is detected when
read and by a full scrub — never silently wrong data — and the other shards' committed bytes stay intact."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kdcache.errors import KdcacheError
from kdcache.store import read_manifest, scrub
from kdcache.store.location import StoreLocation
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import read_everything, same_arrays

SHARD_FAULTS = ["flip-data", "flip-index", "truncate", "zero-length", "delete", "swap-other-shard", "swap-other-store"]
SEEDS = range(20)
INDEX_BYTES = 4  # the shard index ends with its crc32c; entries are 16 bytes per inner chunk before it


def shard_files(store: Path) -> list[tuple[str, int, str]]:
    """(array path, shard index, file key) of every committed shard file, in manifest order."""
    manifest = read_manifest(StoreLocation(store))
    return [(path, c.index, d.key) for c in manifest.all_commits() for path, d in c.files.items()]


def index_bytes(store: Path, path: str) -> int:
    """Size of a shard's index (at its end): 16 bytes (offset, length) per inner chunk, then a crc32c."""
    manifest = read_manifest(StoreLocation(store))
    records = {**manifest.samples.arrays}
    for teacher in manifest.teachers.values():
        records |= {r.path: r for t in teacher.targets.values() for r in t.arrays.values()}
    record = records[path]
    return 16 * (record.shards[0] // record.chunks[0]) + INDEX_BYTES


def inject(store: Path, other: Path, fault: str, rng: random.Random) -> tuple[str, int, str]:
    """Apply ``fault`` to one randomly chosen committed shard file; returns which one."""
    files = shard_files(store)
    if fault == "swap-other-store":  # sample arrays are the same in both stores: swap a shard that differs
        files = [f for f in files if (other / f[2]).read_bytes() != (store / f[2]).read_bytes()]
    path, index, key = rng.choice(files)
    target = store / key
    data = bytearray(target.read_bytes())
    index_start = len(data) - index_bytes(store, path)
    if fault == "flip-data":
        data[rng.randrange(0, index_start)] ^= 1 << rng.randrange(8)
    elif fault == "flip-index":
        data[rng.randrange(index_start, len(data))] ^= 1 << rng.randrange(8)
    elif fault == "truncate":
        data = data[: rng.randrange(1, len(data))]
    elif fault == "zero-length":
        data = bytearray()
    elif fault == "swap-other-shard":
        others = [k for p, i, k in files if p == path and i != index]
        data = bytearray((store / rng.choice(others)).read_bytes())
    elif fault == "swap-other-store":
        data = bytearray((other / key).read_bytes())
    if fault == "delete":
        target.unlink()
    else:
        target.write_bytes(bytes(data))
    return path, index, key


def untouched_bytes_intact(store: Path, clean: Path, damaged_key: str) -> bool:
    return all(
        (store / key).read_bytes() == (clean / key).read_bytes()
        for _, _, key in shard_files(clean)
        if key != damaged_key
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fault", SHARD_FAULTS)
def test_damaged_shard_is_detected_on_read_and_by_scrub(
    fault, seed, store_copy, clean_store, other_store, clean_arrays
):
    path, index, key = inject(store_copy, other_store, fault, random.Random(f"{fault}-{seed}"))
    outcome = Outcome("corruption", f"{fault}-{seed}")
    try:
        values = read_everything(store_copy)
    except KdcacheError as exc:
        outcome.detected = clear_error(exc, str(store_copy), path, f"shard {index}", "kdcache verify")
    else:
        outcome.silent_wrong = not same_arrays(values, clean_arrays)
        outcome.recovered = not outcome.silent_wrong
    problems = scrub(str(store_copy))
    outcome.detected &= any(key in line for line in problems)  # the scrub names the damaged file as well
    outcome.bytes_lost = not untouched_bytes_intact(store_copy, clean_store, key)
    assert record(outcome).passed, (outcome, problems)


METADATA_SEEDS = range(30)


@pytest.mark.parametrize("seed", METADATA_SEEDS)
def test_damaged_metadata_is_refused_or_harmless(seed, store_copy, clean_arrays):
    rng = random.Random(f"metadata-{seed}")
    candidates = ["kdcache.manifest.json", "zarr.json", *[f"{p}/zarr.json" for p, _, _ in shard_files(store_copy)]]
    name = rng.choice(sorted(set(candidates)))
    target = store_copy / name
    data = bytearray(target.read_bytes())
    position = rng.randrange(len(data))
    data[position] ^= 1 << rng.randrange(7)  # stay ASCII half the time at least; any byte value is fair game
    target.write_bytes(bytes(data))
    outcome = Outcome("metadata", f"{name}@{position}")
    try:
        values = read_everything(store_copy)
    except KdcacheError as exc:
        outcome.detected = clear_error(exc, str(store_copy))
    else:
        outcome.silent_wrong = not same_arrays(values, clean_arrays)
        outcome.recovered = not outcome.silent_wrong  # e.g. a flip inside a number nobody reads
    assert record(outcome).passed, outcome


def test_leftover_temporary_files_are_ignored_by_readers_and_removed_by_the_next_writer(
    store_copy, clean_arrays, teacher, digits_small, views
):
    from tests.faults.stores import build_store

    stray = store_copy / "teachers/t8/logits/c/1/0/0.0123abcd.partial"
    stray.write_bytes(b"half a shard")
    (store_copy / "kdcache.manifest.json.99.partial").write_bytes(b"{")
    outcome = Outcome("crash", "leftover-temp-files")
    outcome.recovered = same_arrays(read_everything(store_copy), clean_arrays) and scrub(str(store_copy)) == []
    build_store(store_copy, teacher, digits_small, views)  # a writer (nothing to do: complete) cleans up
    outcome.recovered &= not list(store_copy.rglob("*.partial"))
    assert record(outcome).passed, outcome
