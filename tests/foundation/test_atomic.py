"""kdcache.atomic: a file is replaced whole or not at all, a failed write leaves no temporary file, and concurrent
writers leave exactly one writer's bytes."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kdcache.atomic import TEMP_SUFFIX, atomic_file, atomic_path, atomic_write_bytes, atomic_write_text
from kdcache.tables import write_json

PAYLOAD = 1 << 20  # 1 MiB: large enough that a non-atomic write is seen half done by a concurrent reader


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


@pytest.mark.parametrize("durable", [True, False])
def test_bytes_and_text_replace_the_file(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "facts.json"
    atomic_write_text(target, "old", durable=durable)
    atomic_write_bytes(target, b"new bytes", durable=durable)
    assert target.read_bytes() == b"new bytes"
    atomic_write_text(target, "naïve ✓", durable=durable)
    assert target.read_text(encoding="utf-8") == "naïve ✓"
    assert leftovers(tmp_path) == []


def test_new_files_get_the_umask_permissions(tmp_path: Path) -> None:
    """Shared caches stay readable by the group: not mkstemp's 0600."""
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "shared.bin", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.bin").stat().st_mode & 0o777 == 0o644


def test_an_error_mid_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "stream.bin"
    atomic_write_bytes(target, b"A" * 100)
    with pytest.raises(RuntimeError, match="writer failed"), atomic_file(target) as out:
        out.write(b"B" * PAYLOAD)
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"A" * 100
    assert leftovers(tmp_path) == []


def test_a_path_writer_that_raises_leaves_nothing(tmp_path: Path) -> None:
    """Writers that want a file name (safetensors, h5py): the half-written file is removed, no target appears."""

    def write_half_then_fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        write_half_then_fail(tmp)
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "absent" / "x.bin", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_reader_sees_the_old_or_the_new_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "record.bin"
    versions = [bytes([i]) * PAYLOAD for i in range(4)]
    atomic_write_bytes(target, versions[0])
    done, seen = threading.Event(), set()

    def read() -> None:
        while not done.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(20):
            atomic_write_bytes(target, versions[round_ % 4], durable=False)
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions)
    assert leftovers(tmp_path) == []


def test_concurrent_writers_leave_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * PAYLOAD for i in range(8)]
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda data: atomic_write_bytes(target, data), payloads))
        assert target.read_bytes() in payloads
        assert leftovers(tmp_path) == []


def test_write_json_is_atomic_and_sorted(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"
    write_json(target, {"b": 1, "a": [1.5]})
    assert target.read_text() == json.dumps({"a": [1.5], "b": 1}, indent=2) + "\n"
    assert leftovers(target.parent) == []
