"""Bounded input: a store's files and pipeline files come from other teams, so kdcache trusts nothing they say about
themselves. FIFOs, devices, huge, endless or deeply nested files and YAML alias bombs are refused with a typed error
naming the file and the limit, within a second, instead of a hang, a RecursionError or minutes and gigabytes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kdcache.errors import ConfigError, StoreLockedError
from kdcache.pipeline import load_pipeline
from kdcache.store import open_store
from kdcache.store.bounded import MANIFEST_MAX_BYTES, MAX_COMMIT_RECORDS, ZARR_JSON_MAX_BYTES
from kdcache.store.location import StoreLocation
from kdcache.store.lock import LOCK_KEY, StoreLock
from tests.conftest import pipeline_dict
from tests.faults.ledger import Outcome, clear_error, record

REFUSAL_SECONDS = 1.0  # every refusal of this module
ZARR_JSON = "teachers/t8/logits/zarr.json"
MANIFEST = "kdcache.manifest.json"


def refused(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``call`` under a 20 s alarm (a hang fails the test instead of blocking the suite); what it raised and how
    long it took."""

    def hung(*_: object) -> None:
        raise TimeoutError("hung reading an untrusted file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    start = time.perf_counter()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the outcome says whether it was kdcache's typed error
        return exc, time.perf_counter() - start
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return None, time.perf_counter() - start


def check(name: str, call: Callable[[], object], *must_mention: str) -> BaseException | None:
    """Record the case in the ledger: refused with a typed error naming ``must_mention``, within a second."""
    exc, seconds = refused(call)
    outcome = Outcome("bounded input", name, note=f"{seconds:.3f} s")
    outcome.detected = clear_error(exc, *must_mention) and seconds < REFUSAL_SECONDS
    outcome.silent_wrong = exc is None
    assert record(outcome).passed, (outcome, repr(exc))
    return exc


# ------------------------------------------------------------------ store files
def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def nested(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def oversized_zarr_json(path: Path) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc) + " " * ZARR_JSON_MAX_BYTES)  # valid JSON, padded past the limit


ZARR_JSON_FAULTS = {
    "fifo": (fifo, "not a regular file"),
    "symlink-to-dev-zero": (dev_zero, "not a regular file"),
    "over-1-MiB": (oversized_zarr_json, f"{ZARR_JSON_MAX_BYTES:,}-byte limit"),
    "100000-nested-arrays": (nested, "deeper than 64 levels"),
}


@pytest.mark.parametrize("fault", sorted(ZARR_JSON_FAULTS))
def test_an_untrusted_zarr_json_is_read_within_bounds(store_copy, fault):
    damage, phrase = ZARR_JSON_FAULTS[fault]
    damage(store_copy / ZARR_JSON)
    check(f"zarr.json-{fault}", lambda: open_store(str(store_copy)), str(store_copy), ZARR_JSON, phrase)


def million_records(path: Path) -> None:
    """The clean manifest with 10^6 compact commit records in the samples' shard list (60 MB, under the ceiling),
    besides the teacher's 5."""
    data = json.loads(path.read_text())
    data["samples"]["shards"] = ["@RECORDS@"]
    record_ = '{"owner":"s","index":%d,"start":0,"stop":1,"files":{}}'
    records = ",".join(record_ % i for i in range(1_000_000))
    path.write_text(json.dumps(data).replace('"@RECORDS@"', records))


def more_records_than_shards(path: Path) -> None:
    data = json.loads(path.read_text())
    first = data["samples"]["shards"][0]
    data["samples"]["shards"] = [first | {"index": i} for i in range(2_000)]
    path.write_text(json.dumps(data))


def over_the_ceiling(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(MANIFEST_MAX_BYTES + 1)  # sparse: refused on its stated size, before a byte is read


def heavier_than_its_shards(path: Path) -> None:
    path.write_text(path.read_text() + " " * (8 << 20))  # 8 MiB for 5 shards of 2 owners (limit 4.16 MB)


MANIFEST_FAULTS = {
    "fifo": (fifo, "not a regular file"),
    "symlink-to-dev-zero": (dev_zero, "not a regular file"),
    "1000000-records": (million_records, f"1,000,005 commit records, over the limit of {MAX_COMMIT_RECORDS:,}"),
    "more-records-than-shards": (more_records_than_shards, "2,000 commit records for samples, which has 5 shards"),
    "over-the-64-MiB-ceiling": (over_the_ceiling, f"over the {MANIFEST_MAX_BYTES:,}-byte limit"),
    "heavier-than-its-shard-count": (heavier_than_its_shards, "a manifest of 5 shards and 2 owners may weigh"),
    "100000-nested-arrays": (nested, "deeper than 64 levels"),
}


@pytest.mark.parametrize("fault", sorted(MANIFEST_FAULTS))
def test_an_untrusted_manifest_is_read_within_bounds(store_copy, fault):
    damage, phrase = MANIFEST_FAULTS[fault]
    damage(store_copy / MANIFEST)
    check(f"manifest-{fault}", lambda: open_store(str(store_copy)), MANIFEST, phrase)


def test_a_lock_that_is_a_fifo_is_an_unreadable_lock_not_a_hang(tmp_path):
    location = StoreLocation(tmp_path / "store.zarr")
    (tmp_path / "store.zarr" / ".kdcache").mkdir(parents=True)
    os.mkfifo(tmp_path / "store.zarr" / LOCK_KEY)

    def take() -> None:
        with StoreLock(location, break_lock=False):
            pass

    assert isinstance(check("lock-fifo", take, "unknown writer (unreadable lock)", "--break-lock"), StoreLockedError)


# ------------------------------------------------------------------ pipeline files
BOMB = "{" + ", ".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
) + "}"  # fmt: skip  # 550 bytes that expand to 9^10 = 3.5 billion values


def pipeline_text(tmp_path: Path, args: str) -> Path:
    """A valid test pipeline whose ``teacher.model.args`` is the YAML text ``args``."""
    raw = pipeline_dict(tmp_path)
    raw["teacher"]["model"]["args"] = "@ARGS@"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw).replace("'@ARGS@'", args))
    return path


def test_the_alias_bomb_is_600_bytes_and_the_clean_file_loads(tmp_path):
    assert 500 < len(BOMB) < 650
    assert load_pipeline(pipeline_text(tmp_path, "{width: 16}")).teacher.model.args == {"width": 16}


def deep_block(depth: int) -> str:
    return "".join(f"\n{'  ' * (i + 4)}k{i}:" for i in range(depth)) + " 1"


PIPELINE_FAULTS = {
    "alias-bomb-in-teacher.model.args": (BOMB, "aliases expand to more than 100,000 values"),
    "100000-nested-flow-lists": ("[" * 100_000 + "]" * 100_000, "nests deeper than 100 levels"),
    "200-nested-block-mappings": (deep_block(200), "nests deeper than 100 levels"),
    "recursive-alias": ("&self [*self]", "aliases expand to more than 100,000 values"),
}


@pytest.mark.parametrize("fault", sorted(PIPELINE_FAULTS))
def test_an_untrusted_pipeline_file_is_read_within_bounds(tmp_path, fault):
    args, phrase = PIPELINE_FAULTS[fault]
    path = pipeline_text(tmp_path, args)
    assert isinstance(check(f"pipeline-{fault}", lambda: load_pipeline(path), str(path), phrase), ConfigError)


def test_an_alias_bomb_in_a_set_override_is_refused(tmp_path):
    path = pipeline_text(tmp_path, "{width: 16}")
    check("override-alias-bomb", lambda: load_pipeline(path, [f"teacher.model.args={BOMB}"]), "override", "alias")


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "over-1-MiB"])
def test_a_pipeline_path_that_is_not_a_small_regular_file_is_refused(tmp_path, kind):
    path = pipeline_text(tmp_path, "{width: 16}")
    if kind == "fifo":
        fifo(path)
    elif kind == "symlink-to-dev-zero":
        dev_zero(path)
    else:
        path.write_text(path.read_text() + "#" * (1 << 20))
    check(f"pipeline-file-{kind}", lambda: load_pipeline(path), str(path))


S3_FAULTS = {
    f"s3-zarr.json-{name}": (ZARR_JSON, damage, phrase)
    for name, (damage, phrase) in ZARR_JSON_FAULTS.items()
    if name in ("over-1-MiB", "100000-nested-arrays")
} | {"s3-manifest-more-records-than-shards": (MANIFEST, *MANIFEST_FAULTS["more-records-than-shards"])}


@pytest.mark.parametrize("case", sorted(S3_FAULTS))
def test_an_untrusted_store_on_s3_is_read_within_bounds(s3_env, store_copy, case):
    """The same limits on an object store (moto), where a size is what the server states for the object."""
    import s3fs

    key, damage, phrase = S3_FAULTS[case]
    damage(store_copy / key)
    url = f"s3://bucket/{case}/store.zarr"
    s3fs.S3FileSystem().put(str(store_copy), url.removeprefix("s3://"), recursive=True)
    check(case, lambda: open_store(url), url, key, phrase)
