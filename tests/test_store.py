"""The crash-safe state store (picofleet/common/store.py) and atomic replacement (common/atomic.py)."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tinydb import TinyDB

import picofleet.common.atomic as atomic_module
import picofleet.common.tinydb_file as storage_module
from picofleet.common.atomic import atomic_write_bytes, atomic_write_json, fsync_directory
from picofleet.common.store import AtomicJSONStorage, Store, StoreClosedError, StoreLockedError
from tests.helpers.wait import until

T = TypeVar("T")
HELPER = Path(__file__).parent / "helpers" / "store_writer.py"
LOGGER = "picofleet.store"
PADDING = 32 * 1024  # bytes added to every write in the kill -9 test: a longer window for a kill to hit


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(coro)


def on_disk(path: Path) -> dict[str, Any]:
    """The database file parsed as JSON (fails the test if it is not valid JSON)."""
    return json.loads(path.read_bytes().decode("utf-8"))


def disk_docs(path: Path, table: str) -> list[dict[str, Any]]:
    """The documents of ``table`` in the file on disk."""
    return list(on_disk(path).get(table, {}).values())


def temp_files(directory: Path) -> list[str]:
    """Temporary files of atomic writes in ``directory``."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


class Blocker:
    """Holds the writer thread busy so that the jobs queued meanwhile form one batch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.started = threading.Event()
        self.gate = threading.Event()
        self.task: asyncio.Task[Any] | None = None

    def _block(self, db: TinyDB) -> None:
        self.started.set()
        if not self.gate.wait(20):
            raise TimeoutError("the test never opened the gate")

    async def __aenter__(self) -> Blocker:
        self.task = asyncio.create_task(self.store.read(self._block))
        await until(self.started.is_set, 10, "writer thread blocked", interval=0.001)
        return self

    async def wait_queued(self, count: int) -> None:
        """Wait until ``count`` jobs are queued behind the blocker."""
        await until(lambda: self.store._queue.qsize() >= count, 10, f"{count} jobs queued", interval=0.001)

    async def __aexit__(self, *exc_info: object) -> None:
        self.gate.set()
        assert self.task is not None
        await self.task


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the database goes: a directory that does not exist yet (the store creates it)."""
    return tmp_path / "database" / "enm.db"


@pytest.fixture
def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every atomic write the store makes."""
    calls: list[Path] = []
    real = storage_module.atomic_write_bytes

    def counting(path: Path, data: bytes, **kwargs: Any) -> None:
        calls.append(path)
        real(path, data, **kwargs)

    monkeypatch.setattr(storage_module, "atomic_write_bytes", counting)
    return calls


# -- atomic.py -------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_keeps_backup(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    assert not (tmp_path / "state.json.bak").exists()
    atomic_write_bytes(target, b"two", keep_backup=True)
    assert target.read_bytes() == b"two"
    assert (tmp_path / "state.json.bak").read_bytes() == b"one"
    atomic_write_bytes(target, b"three", keep_backup=True)
    assert (tmp_path / "state.json.bak").read_bytes() == b"two"
    assert temp_files(tmp_path) == []
    fsync_directory(tmp_path)


def test_atomic_write_json_is_compact_utf8_and_refuses_nan(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    atomic_write_json(target, {"b": 1, "a": ["é", None]})
    assert target.read_bytes() == '{"b":1,"a":["é",null]}'.encode()
    with pytest.raises(ValueError):
        atomic_write_json(target, {"x": float("nan")})
    assert json.loads(target.read_bytes()) == {"b": 1, "a": ["é", None]}
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace", "link"])
def test_atomic_write_failure_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old content", keep_backup=True)
    atomic_write_bytes(target, b"current content", keep_backup=True)

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(target, b"new content that must not appear", keep_backup=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"current content"
    assert (tmp_path / "state.json.bak").read_bytes() in (b"old content", b"current content")
    assert temp_files(tmp_path) == []


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without hard links (vfat, exfat): ``os.link`` fails with EPERM."""

    def refuse(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(atomic_module, "_reported_no_hard_links", False)


@pytest.mark.usefixtures("no_hard_links")
def test_atomic_write_copies_the_backup_without_hard_links(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"one", keep_backup=True)
    assert not (tmp_path / "state.json.bak").exists()
    atomic_write_bytes(target, b"two", keep_backup=True)
    assert (tmp_path / "state.json.bak").read_bytes() == b"one"
    atomic_write_bytes(target, b"three", keep_backup=True)
    assert target.read_bytes() == b"three"
    assert (tmp_path / "state.json.bak").read_bytes() == b"two"
    assert os.stat(target).st_ino != os.stat(tmp_path / "state.json.bak").st_ino  # a copy
    assert temp_files(tmp_path) == []
    infos = [r for r in caplog.records if "no hard links" in r.getMessage()]
    assert len(infos) == 1 and infos[0].levelno == logging.INFO  # logged once, not at every write


# -- the storage -------------------------------------------------------------------------------------


def test_storage_deferred_writes_once_at_flush(db_path: Path, count_writes: list[Path]) -> None:
    storage = AtomicJSONStorage(db_path)
    assert db_path.parent.is_dir()
    assert storage.read() is None
    with storage.deferred():
        storage.write({"t": {"1": {"a": 1}}})
        storage.write({"t": {"1": {"a": 2}}})
        assert not db_path.exists()
    assert storage.dirty and count_writes == []
    storage.flush()
    storage.flush()  # nothing new: no write
    assert len(count_writes) == 1
    assert on_disk(db_path) == {"t": {"1": {"a": 2}}}
    storage.write({"t": {}})  # not deferred: written at once
    assert len(count_writes) == 2 and on_disk(db_path) == {"t": {}}
    storage.close()


def test_storage_failed_write_reloads_from_disk(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = AtomicJSONStorage(db_path)
    storage.write({"t": {"1": {"a": 1}}})

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError, match="No space"):
        storage.write({"t": {"1": {"a": 2}}})
    monkeypatch.undo()
    assert storage.read() == {"t": {"1": {"a": 1}}}


@pytest.mark.parametrize("shallow", [False, True], ids=["exact", "shallow"])
def test_storage_rollback_to_savepoint(db_path: Path, shallow: bool) -> None:
    storage = AtomicJSONStorage(db_path)
    storage.write({"t": {"1": {"a": 1, "nested": [1]}}})
    with storage.deferred():
        storage.write({"t": {"1": {"a": 2, "nested": [1]}}})
        savepoint = storage.savepoint(shallow=shallow)
        data = storage.read()
        assert data is not None
        data["t"]["1"]["a"] = 3  # in place, as TinyDB's update does
        data["t"]["2"] = {"a": 4}
        data["u"] = {}
        storage.write(data)
        storage.rollback(savepoint)
        assert storage.read() == {"t": {"1": {"a": 2, "nested": [1]}}}
        assert storage.dirty  # the change before the savepoint is still to be written
    storage.flush()
    assert on_disk(db_path) == {"t": {"1": {"a": 2, "nested": [1]}}}


def test_stale_temp_files_are_removed_at_open(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    db_path.parent.mkdir(parents=True)
    atomic_write_json(db_path, {"t": {"1": {"a": 1}}})
    stale = [db_path.parent / ".enm.db.4242.deadbeef.tmp", db_path.parent / ".enm.db.bak.4242.cafe.tmp"]
    for path in stale:
        path.write_bytes(b'{"torn":')
    other = db_path.parent / ".other.db.1.x.tmp"  # not ours: left alone
    other.write_bytes(b"")
    assert AtomicJSONStorage(db_path).read() == {"t": {"1": {"a": 1}}}
    assert temp_files(db_path.parent) == [other.name]
    assert sum("interrupted write" in r.getMessage() for r in caplog.records) == 2


# -- the store ---------------------------------------------------------------------------------------


def test_round_trip_survives_reopen(db_path: Path) -> None:
    async def scenario() -> None:
        async with Store(db_path) as store:
            original = {"uuid": "a", "state": "idle", "tags": ["x"]}
            await store.upsert("devices", "uuid", original)
            original["tags"].append("mutated after upsert")  # the store keeps its own copy
            await store.upsert("devices", "uuid", {"uuid": "b", "state": "online"})
            await store.upsert("devices", "uuid", {"uuid": "c", "state": "online"})
            await store.upsert("devices", "uuid", {"uuid": "a", "state": "flashing"})  # replaces
            assert await store.remove("devices", "uuid", "b") is True
            assert await store.remove("devices", "uuid", "b") is False
            await store.set_value("api_key", "sécret")
            await store.set_value("limits", {"retries": [1, 2]})
            await store.set_value("api_key", "rotated")
            listed = await store.all("devices")
            listed[0]["state"] = "changed by the caller"  # a detached copy
            assert await store.get_value("limits") == {"retries": [1, 2]}

        async with Store(db_path) as store:
            assert await store.all("devices") == [
                {"uuid": "a", "state": "flashing"},
                {"uuid": "c", "state": "online"},
            ]
            assert await store.get_value("api_key") == "rotated"
            assert await store.get_value("limits") == {"retries": [1, 2]}
            assert await store.get_value("missing", 42) == 42
            assert await store.all("no such table") == []
            assert await store.read(lambda db: len(db.table("devices"))) == 2

    run(scenario())


def test_every_acknowledged_write_is_on_disk_as_valid_json(db_path: Path) -> None:
    rng = random.Random(1234)

    async def scenario() -> None:
        model: dict[str, dict[str, Any]] = {}
        async with Store(db_path) as store:
            await store.set_value("step", -1)
            for step in range(120):
                uuid = f"board-{rng.randrange(12)}"
                if rng.random() < 0.25:
                    removed = await store.remove("devices", "uuid", uuid)
                    assert removed == (model.pop(uuid, None) is not None)
                elif rng.random() < 0.2:
                    await store.set_value("step", step)
                    assert on_disk(db_path)["settings"]["1"] == {"key": "step", "value": step}
                else:
                    doc = {"uuid": uuid, "step": step, "name": f"Pico «{step}»"}
                    await store.upsert("devices", "uuid", doc)
                    model[uuid] = doc
                docs = disk_docs(db_path, "devices")
                assert {d["uuid"]: d for d in docs} == model
                assert len(docs) == len(model)

    run(scenario())


def test_job_error_rolls_back_only_that_job(db_path: Path, count_writes: list[Path]) -> None:
    def good(db: TinyDB) -> str:
        db.table("devices").insert({"uuid": "g1"})
        return "g1"

    def bad(db: TinyDB) -> None:
        devices = db.table("devices")
        devices.insert({"uuid": "inserted by the failing job"})
        devices.update({"n": 99}, doc_ids=[1])
        # mutates a nested list in place, then fails inside TinyDB's update
        devices.update(lambda doc: (doc["tags"].append("partial"), 1 / 0), doc_ids=[1])

    def not_json(db: TinyDB) -> None:
        db.table("devices").insert({"uuid": "set", "value": {1, 2}})

    def good_too(db: TinyDB) -> None:
        db.table("settings").insert({"key": "k", "value": "v"})

    async def scenario() -> None:
        async with Store(db_path) as store:
            await store.upsert("devices", "uuid", {"uuid": "keep", "n": 1, "tags": [1]})
            writes_before = len(count_writes)
            async with Blocker(store) as blocker:
                tasks = [asyncio.create_task(store.transact(fn)) for fn in (good, bad, not_json, good_too)]
                await blocker.wait_queued(len(tasks))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert results[0] == "g1"
            assert isinstance(results[1], ZeroDivisionError)
            assert isinstance(results[2], TypeError)
            assert results[3] is None
            assert len(count_writes) == writes_before + 1  # one batch, one write

            expected = [{"uuid": "keep", "n": 1, "tags": [1]}, {"uuid": "g1"}]
            assert disk_docs(db_path, "devices") == expected
            assert disk_docs(db_path, "settings") == [{"key": "k", "value": "v"}]
            assert await store.all("devices") == expected  # the in-memory view too
            # TinyDB's query cache does not remember the rolled-back state either
            assert await store.read(lambda db: len(db.table("devices").search(lambda d: True))) == 2

    run(scenario())


def test_failed_flush_fails_the_batch_and_reloads(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = storage_module.atomic_write_bytes
    failures = {"left": 1}

    def flaky(path: Path, data: bytes, **kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kwargs)

    async def scenario() -> None:
        async with Store(db_path) as store:
            await store.set_value("before", 1)
            monkeypatch.setattr(storage_module, "atomic_write_bytes", flaky)
            async with Blocker(store) as blocker:
                tasks = [
                    asyncio.create_task(store.upsert("devices", "uuid", {"uuid": f"b{i}"})) for i in range(5)
                ]
                tasks.append(asyncio.create_task(store.get_value("before")))  # saw unflushed changes
                await blocker.wait_queued(len(tasks))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, OSError) and r.errno == errno.ENOSPC for r in results), results
            assert await store.all("devices") == []  # reloaded from disk
            assert await store.get_value("before") == 1
            await store.upsert("devices", "uuid", {"uuid": "after"})
        assert disk_docs(db_path, "devices") == [{"uuid": "after"}]

    run(scenario())


def test_group_commit_64_concurrent_upserts(db_path: Path, count_writes: list[Path]) -> None:
    def record(i: int, round_: int) -> dict[str, Any]:
        return {"uuid": f"board-{i:02d}", "state": "online", "round": round_}

    async def scenario() -> None:
        async with Store(db_path) as store:
            # Deterministic: all 64 queued behind a busy writer make exactly one batch and one write.
            async with Blocker(store) as blocker:
                tasks = [
                    asyncio.create_task(store.upsert("devices", "uuid", record(i, 1))) for i in range(64)
                ]
                await blocker.wait_queued(64)
            await asyncio.gather(*tasks)
            assert len(count_writes) == 1
            assert sorted(d["uuid"] for d in disk_docs(db_path, "devices")) == [
                f"board-{i:02d}" for i in range(64)
            ]

            # As it happens: 64 boards reporting at once.
            count_writes.clear()
            started = time.perf_counter()
            await asyncio.gather(*(store.upsert("devices", "uuid", record(i, 2)) for i in range(64)))
            elapsed = time.perf_counter() - started
            print(f"64 concurrent upserts: {elapsed * 1000:.1f} ms, {len(count_writes)} atomic writes")
            assert 1 <= len(count_writes) <= 8
            docs = disk_docs(db_path, "devices")
            assert len(docs) == 64 and all(d["round"] == 2 for d in docs)

    run(scenario())


def test_event_loop_keeps_running_during_a_slow_job(db_path: Path) -> None:
    def slow(db: TinyDB) -> str:
        time.sleep(0.3)
        db.table("t").insert({"a": 1})
        return "done"

    async def scenario() -> None:
        async with Store(db_path) as store:
            job = asyncio.create_task(store.transact(slow))
            ticks = [time.monotonic()]
            while not job.done():
                await asyncio.sleep(0.005)
                ticks.append(time.monotonic())
            assert await job == "done"
            duration = ticks[-1] - ticks[0]
            largest_gap = max(b - a for a, b in itertools.pairwise(ticks))
            assert duration >= 0.3  # the job really was slow ...
            assert largest_gap < 0.2, f"the loop stalled {largest_gap:.3f} s"  # ... and the loop kept ticking
            assert len(ticks) >= 10

    run(scenario())


def write_two_versions(db_path: Path, first: dict[str, Any]) -> None:
    """Store ``first``, then a second document: the backup is then the version with ``first`` only."""

    async def write() -> None:
        async with Store(db_path) as store:
            await store.upsert("devices", "uuid", first)
            await store.upsert("devices", "uuid", {"uuid": "b", "state": "online"})

    run(write())


@pytest.mark.parametrize(
    "tear",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b"", id="zero-bytes"),
        pytest.param(lambda b: b"\x00\xff\xfe garbage {{{", id="garbage"),
        pytest.param(lambda b: b"[1, 2, 3]", id="wrong-type"),
        pytest.param(lambda b: b'{"devices": {"1": "not a document"}}', id="bad-document"),
    ],
)
def test_torn_main_file_is_recovered_from_backup(
    db_path: Path, caplog: pytest.LogCaptureFixture, tear: Callable[[bytes], bytes]
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    first = {"uuid": "a", "state": "idle"}
    write_two_versions(db_path, first)
    backup = db_path.with_name("enm.db.bak")
    assert disk_docs(backup, "devices") == [first]  # the backup is the previous version
    torn = tear(db_path.read_bytes())
    db_path.write_bytes(torn)
    caplog.clear()

    async def reopen() -> list[dict[str, Any]]:
        async with Store(db_path) as store:
            return await store.all("devices")

    assert run(reopen()) == [first]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert any(str(db_path) in r.getMessage() and "unreadable" in r.getMessage() for r in warnings)
    assert any("recovered" in r.getMessage() and str(backup) in r.getMessage() for r in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert disk_docs(db_path, "devices") == [first]  # the main file was rewritten, valid
    kept = list(db_path.parent.glob("enm.db.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn  # and the torn one kept for inspection

    async def write_again() -> None:
        async with Store(db_path) as store:
            await store.set_value("after", True)

    run(write_again())
    assert disk_docs(db_path, "devices") == [first]


@pytest.mark.parametrize("backup_state", ["missing", "garbage"])
def test_unreadable_file_and_backup_start_empty_and_keep_the_bytes(
    db_path: Path, caplog: pytest.LogCaptureFixture, backup_state: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    db_path.parent.mkdir(parents=True)
    torn = b'{"devices": {"1": {"uuid": "a", "sta'
    db_path.write_bytes(torn)
    backup = db_path.with_name("enm.db.bak")
    if backup_state == "garbage":
        backup.write_bytes(b"\x00" * 100)

    async def scenario() -> list[dict[str, Any]]:
        async with Store(db_path) as store:
            docs = await store.all("devices")
            await store.upsert("devices", "uuid", {"uuid": "new"})
            return docs

    assert run(scenario()) == []
    moved = list(db_path.parent.glob("enm.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == torn
    if backup_state == "garbage":
        moved_backup = list(db_path.parent.glob("enm.db.bak.corrupt-*"))
        assert len(moved_backup) == 1 and moved_backup[0].read_bytes() == b"\x00" * 100
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(moved[0]) in errors[0].getMessage()
    assert disk_docs(db_path, "devices") == [{"uuid": "new"}]


def test_missing_main_file_is_recovered_from_backup(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    first = {"uuid": "a", "state": "idle"}
    write_two_versions(db_path, first)
    backup = db_path.with_name("enm.db.bak")
    backup_bytes = backup.read_bytes()
    db_path.unlink()  # deleted by mistake, or a crash left only the backup
    caplog.clear()

    async def reopen_and_write_twice() -> list[dict[str, Any]]:
        async with Store(db_path) as store:
            docs = await store.all("devices")
            await store.set_value("after", 1)
            await store.set_value("after", 2)  # the backup is no longer the recovered copy
            return docs

    assert run(reopen_and_write_twice()) == [first]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert any(str(db_path) in r.getMessage() and "does not exist" in r.getMessage() for r in warnings)
    assert any("recovered" in r.getMessage() and str(backup) in r.getMessage() for r in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert disk_docs(db_path, "devices") == [first]
    assert disk_docs(backup, "devices") == [first] and backup.read_bytes() != backup_bytes
    assert list(db_path.parent.glob("*.corrupt-*")) == []
    assert temp_files(db_path.parent) == []


def test_missing_main_file_and_unreadable_backup_start_empty(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    db_path.parent.mkdir(parents=True)
    db_path.with_name("enm.db.bak").write_bytes(b"\x00" * 10)

    async def scenario() -> list[dict[str, Any]]:
        async with Store(db_path) as store:
            return await store.all("devices")

    assert run(scenario()) == []
    moved = list(db_path.parent.glob("enm.db.bak.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == b"\x00" * 10
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(moved[0]) in errors[0].getMessage()


def test_new_database_logs_no_warning(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def scenario() -> None:
        async with Store(db_path) as store:
            assert await store.all("devices") == []
            await store.set_value("x", 1)

    run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert on_disk(db_path) == {"settings": {"1": {"key": "x", "value": 1}}}


@pytest.mark.usefixtures("no_hard_links")
def test_store_and_recovery_work_without_hard_links(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = {"uuid": "a", "state": "idle"}
    write_two_versions(db_path, first)
    backup = db_path.with_name("enm.db.bak")
    assert disk_docs(backup, "devices") == [first]
    torn = db_path.read_bytes()[:-7]
    db_path.write_bytes(torn)

    async def reopen() -> list[dict[str, Any]]:
        async with Store(db_path) as store:
            return await store.all("devices")

    assert run(reopen()) == [first]
    kept = list(db_path.parent.glob("enm.db.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn  # set aside by a copy
    assert disk_docs(db_path, "devices") == [first]
    assert temp_files(db_path.parent) == []
    assert sum("no hard links" in r.getMessage() for r in caplog.records) == 1


class WriterBug(BaseException):
    """Not an Exception: escapes the job isolation and kills the writer thread, like a bug would."""


def test_jobs_submitted_to_a_failed_writer_fail_promptly(db_path: Path) -> None:
    def die(db: TinyDB) -> None:
        raise WriterBug("simulated bug in the writer thread")

    async def scenario() -> None:
        store = Store(db_path)
        await store.open()
        await store.set_value("before", 1)
        with pytest.raises(StoreClosedError, match="writer thread"):
            await asyncio.wait_for(store.read(die), 10)
        with pytest.raises(StoreClosedError, match="writer thread") as info:
            await asyncio.wait_for(store.set_value("after", 1), 10)
        assert isinstance(info.value.__cause__, WriterBug)
        await asyncio.wait_for(store.close(), 10)
        async with Store(db_path) as again:  # the lock was released
            assert await again.get_value("before") == 1

    run(scenario())


def test_writer_failing_while_a_job_is_queued_does_not_hang(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer dies (and drains its queue) between _submit's failure check and its put."""
    entered, gate = threading.Event(), threading.Event()

    def die(db: TinyDB) -> None:
        entered.set()
        gate.wait(10)
        raise WriterBug("simulated bug in the writer thread")

    async def scenario() -> None:
        store = Store(db_path)
        await store.open()
        killer = asyncio.create_task(store.read(die))
        await until(entered.is_set, 10, "writer thread in the failing job", interval=0.001)
        assert store._failure is None  # so the job below passes the check before queueing
        real_put = store._queue.put
        thread = store._thread
        assert thread is not None

        def put_after_the_writer_died(job: Any, *args: Any, **kwargs: Any) -> None:
            gate.set()
            thread.join(10)  # the writer fails and drains the (still empty) queue
            assert not thread.is_alive()
            real_put(job, *args, **kwargs)

        monkeypatch.setattr(store._queue, "put", put_after_the_writer_died)
        with pytest.raises(StoreClosedError, match="writer thread"):
            await asyncio.wait_for(store.set_value("x", 1), 10)
        with pytest.raises(StoreClosedError):
            await killer
        await asyncio.wait_for(store.close(), 10)

    run(scenario())


def test_a_second_store_on_the_same_file_is_refused(db_path: Path) -> None:
    async def scenario() -> None:
        first = Store(db_path)
        await first.open()
        with pytest.raises(StoreLockedError):
            await Store(db_path).open()
        await first.set_value("x", 1)
        await first.close()
        await first.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await first.set_value("x", 2)
        async with Store(db_path) as second:
            assert await second.get_value("x") == 1

    run(scenario())


def test_close_drains_queued_jobs(db_path: Path) -> None:
    async def scenario() -> None:
        store = Store(db_path)
        await store.open()
        tasks = [asyncio.create_task(store.set_value(f"k{i}", i)) for i in range(20)]
        await asyncio.sleep(0)  # one loop pass: each task (FIFO) runs up to its queued job
        await store.close()
        await asyncio.gather(*tasks)

    run(scenario())
    assert len(disk_docs(db_path, "settings")) == 20


# -- kill -9 ----------------------------------------------------------------------------------------


class LineReader:
    """Reads lines from a pipe with deadlines (no blocking read that could hang the test)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self, deadline: float) -> str | None:
        """The next complete line, or None at end of file; TimeoutError past ``deadline``."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no output from the writer in time")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def read_counter(path: Path) -> Any:
    """Open the database like a restarting gateway and read the counter."""
    async with Store(path) as store:
        return await store.get_value("counter")


def test_kill_9_during_writes_loses_no_acknowledged_write(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed = int(os.environ.get("PICOFLEET_CRASH_SEED", random.randrange(2**32)))
    print(f"kill -9 test seed: {seed} (set PICOFLEET_CRASH_SEED to replay)")
    rng = random.Random(seed)
    rounds, killed_mid_write, stored = 30, 0, None
    started = time.monotonic()
    for round_ in range(rounds):
        target = rng.randint(1, 150)
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), str(db_path), str(PADDING)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            lines = LineReader(proc.stdout.fileno())
            deadline = time.monotonic() + 20
            first = lines.readline(deadline)
            assert first is not None and first.startswith("start "), (first, proc.stderr.read())
            last = int(first.split()[1])
            assert last == (stored or 0), "the restarted writer did not see the last stored counter"
            for _ in range(target):
                line = lines.readline(deadline)
                assert line == f"acked {last + 1}", (line, proc.stderr.read() if line is None else "")
                last += 1
            # Not a synchronisation: a random delay spanning several write cycles, so that the kill lands
            # in any phase of a write (killing right at an ack always hits the same phase).
            time.sleep(rng.uniform(0, 0.01))
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
            while (line := lines.readline(time.monotonic() + 10)) is not None:  # acks printed before death
                if line.startswith("acked "):
                    assert int(line.split()[1]) == last + 1
                    last += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

        killed_mid_write += bool(temp_files(db_path.parent))
        # a stale temp file of some earlier writer must not disturb the restart either
        (db_path.parent / f".enm.db.{99999 + round_}.0bad.tmp").write_bytes(b'{"settings": {"1": {')
        stored = run(read_counter(db_path))
        assert last <= stored <= last + 1, f"round {round_}: acked {last}, stored {stored} (seed {seed})"
        assert temp_files(db_path.parent) == []
        # atomic replacement: a kill never leaves a torn file that needs the backup
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not list(db_path.parent.glob("*.corrupt-*"))
        on_disk(db_path)
        on_disk(db_path.with_name("enm.db.bak"))  # the previous version is a whole one too
    elapsed = time.monotonic() - started
    print(
        f"{rounds} kills in {elapsed:.1f} s, {killed_mid_write} left a temp file behind, "
        f"final counter {stored}"
    )
