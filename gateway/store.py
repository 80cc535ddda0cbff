"""The gateway's crash-safe state store: one TinyDB JSON document, one writer thread, group commit.

Durability contract: :meth:`Store.transact` returns only once what the job changed is on disk
(temporary file, ``fsync``, ``os.replace``, ``fsync`` of the directory, see
:mod:`picofleet.gateway.atomic`), and :meth:`Store.read` never reports a change that is not. A
gateway killed at any point (``kill -9``, power cut) restarts with every acknowledged write. The
previous version of the file is kept as ``<file>.bak`` (a hard link, no copy): it is one write
behind, and only used if the main file was damaged by something else than our writes.

Recovery at open: a missing file is an empty database. A file that is not a JSON object of tables
(torn, truncated, zero bytes, garbage) is logged as a WARNING and replaced by its backup when the
backup is good (the damaged file is kept as ``<file>.corrupt-<UTC time>``); when both are
unreadable the file is moved aside to ``<file>.corrupt-<UTC time>`` (never deleted), an ERROR
says where, and the gateway starts empty. Temporary files left by a killed writer are removed.
An operating-system error (for example EACCES) is raised as such.

Concurrency: all access to the database happens in one dedicated thread, fed by a queue. The
jobs that queue up while the thread is busy form a batch: they run back-to-back against the
in-memory data and are made durable by one atomic write (group commit), so 64 boards reporting at
once cost one or a few ``fsync`` rounds instead of 64. The event loop never waits on the disk.

Isolation of a failing job: before each job the storage takes a *savepoint*, and a job that raises,
or leaves data that cannot be encoded as JSON, is rolled back to it; the other jobs of the batch
are unaffected. For :meth:`Store.transact` the savepoint is the JSON encoding of the data (cached:
the encoding checked after the previous job is reused, and the final write reuses the last one),
which undoes everything, including in-place changes TinyDB made before the exception. The
convenience methods (:meth:`Store.upsert` ...) store values they copied and checked beforehand and
only replace top-level fields, so for them a copy of the table and document dictionaries suffices,
several times cheaper. Documents handed to a job are shallow copies sharing nested values with the
live data: jobs must not mutate nested values in place outside TinyDB's operations, and should
return plain detached values (the convenience methods do).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tinydb import TinyDB
from tinydb.storages import Storage

from .atomic import BACKUP_SUFFIX, atomic_write_bytes, fsync_directory, stale_temp_files

__all__ = ["AtomicJSONStorage", "Store", "StoreClosedError", "StoreLockedError"]

log = logging.getLogger("picofleet.store")

T = TypeVar("T")
Tables = dict[str, dict[str, dict[str, Any]]]

SETTINGS_TABLE = "settings"


class StoreClosedError(RuntimeError):
    """The store is not open (not yet opened, closing or closed)."""


class StoreLockedError(RuntimeError):
    """Another store (in this or another process) has the database open."""


class _Unreadable(ValueError):
    """The bytes of a database file are not a TinyDB JSON document; the message is the reason."""


def _encode(data: Tables) -> bytes:
    text = json.dumps(data, separators=(",", ":"), sort_keys=False, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _decode(raw: bytes) -> Tables:
    """Parse and check a database file; raise :class:`_Unreadable` with the reason."""
    if not raw:
        raise _Unreadable("the file is empty (0 bytes)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start} of {len(raw)})") from None
    except json.JSONDecodeError as exc:
        raise _Unreadable(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; {len(raw)} bytes)"
        ) from None
    except RecursionError:
        raise _Unreadable("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise _Unreadable(f"the top level is a JSON {type(data).__name__}, not an object of tables")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise _Unreadable(f"table {name!r} is a JSON {type(table).__name__}, not an object")
        for doc_id, doc in table.items():
            try:
                int(doc_id)
            except ValueError:
                raise _Unreadable(
                    f"table {name!r} has a document id {doc_id!r} that is not a number"
                ) from None
            if not isinstance(doc, dict):
                raise _Unreadable(f"document {doc_id} of table {name!r} is not an object")
    return data


@dataclass(frozen=True)
class _Savepoint:
    """A state to return to: the exact JSON bytes, or a cheap copy of the table and document dicts."""

    dirty: bool
    encoded: bytes | None = None  # the JSON encoding of the data, when known
    copy: Tables | None = None  # for jobs that only replace top-level fields of documents


def _detached(value: T) -> T:
    """A deep copy of a JSON value sharing nothing with the caller or the live data."""
    return json.loads(json.dumps(value, allow_nan=False))


class AtomicJSONStorage(Storage):
    """A TinyDB storage writing the whole document atomically (see :mod:`.atomic`), with recovery.

    The data read or written last is kept in memory, so TinyDB's read before every operation does
    not touch the disk; :meth:`read` returns that live dictionary. Inside :meth:`deferred`,
    :meth:`write` only updates the memory and marks the storage dirty, and :meth:`flush` makes it
    durable in one atomic write. A failed write drops the in-memory copy, so the next read reloads
    what is on disk. Not thread-safe: one thread uses it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: Tables | None = None
        self._loaded = False
        self._version = 0  # changes whenever _data does
        self._encoded: bytes | None = None
        self._encoded_version = -1
        self._deferred = False
        self._dirty = False
        self.flushes = 0  # atomic writes done, for statistics and tests

    # -- TinyDB's Storage API -------------------------------------------------------------------

    def read(self) -> Tables | None:
        """Return the current data (``None``: empty database), loading and recovering it first."""
        if not self._loaded:
            self._load()
        return self._data

    def write(self, data: Tables) -> None:
        """Make ``data`` the current state; durable now, or at :meth:`flush` when deferred."""
        self._set(data)
        self._dirty = True
        if not self._deferred:
            self.flush()

    def close(self) -> None:
        """Write any deferred change."""
        self._deferred = False
        self.flush()

    # -- group commit and savepoints, used by Store ----------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether the in-memory data has changes that are not on disk yet."""
        return self._dirty

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block, writes stay in memory; call :meth:`flush` afterwards to persist them."""
        if self._deferred:
            raise RuntimeError("the storage is already deferred")
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def flush(self) -> None:
        """Write the data atomically if it changed; on failure forget it (reload from disk) and raise."""
        if not self._dirty:
            return
        try:
            raw = self.encoded()
            assert raw is not None  # dirty implies data was written
            atomic_write_bytes(self.path, raw, keep_backup=True)
        except BaseException:
            self.discard()
            raise
        self._dirty = False
        self.flushes += 1

    def discard(self) -> None:
        """Forget the in-memory data, including unflushed changes; the next read reloads the file."""
        self._data = None
        self._loaded = False
        self._dirty = False
        self._version += 1

    def encoded(self) -> bytes | None:
        """The JSON encoding of the current data (cached); raises if it is not JSON-serializable."""
        if self._data is None:
            return None
        if self._encoded_version != self._version:
            self._encoded = _encode(self._data)
            self._encoded_version = self._version
        return self._encoded

    def savepoint(self, *, shallow: bool = False) -> _Savepoint:
        """Capture the current state so that :meth:`rollback` can return to it.

        The default savepoint is the JSON encoding of the data (cached between changes) and undoes
        any change. A ``shallow`` one copies only the table and document dictionaries: several
        times cheaper, it undoes insertions, removals and replaced top-level fields, but not
        changes made inside nested lists or objects.
        """
        data = self.read()
        if data is None:
            return _Savepoint(self._dirty)
        if not shallow:
            return _Savepoint(self._dirty, encoded=self.encoded())
        known = self._encoded if self._encoded_version == self._version else None
        copy = {name: {doc_id: dict(doc) for doc_id, doc in table.items()} for name, table in data.items()}
        return _Savepoint(self._dirty, encoded=known, copy=copy)

    def rollback(self, savepoint: _Savepoint) -> None:
        """Return to the state captured by :meth:`savepoint`, undoing the changes since."""
        if savepoint.copy is not None:
            self._set(savepoint.copy)
        elif savepoint.encoded is not None:
            self._set(json.loads(savepoint.encoded))
        else:
            self._set(None)
        if savepoint.encoded is not None:
            self._encoded, self._encoded_version = savepoint.encoded, self._version
        self._dirty = savepoint.dirty

    # -- loading and recovery --------------------------------------------------------------------

    def _set(self, data: Tables | None) -> None:
        self._data = data
        self._loaded = True
        self._version += 1

    def _load(self) -> None:
        for temp in stale_temp_files(self.path):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                log.debug("removed %s, left by an interrupted write", temp)
        data, raw = self._recover()
        self._set(data)
        self._dirty = False
        if raw is not None:
            self._encoded, self._encoded_version = raw, self._version

    def _recover(self) -> tuple[Tables | None, bytes | None]:
        """Read the database file, falling back to the backup; returns the data and its bytes."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.backup_path.exists():
                log.warning(
                    "database file %s does not exist but its backup %s does; starting with an empty "
                    "database (the backup is left in place until the second write)",
                    self.path,
                    self.backup_path,
                )
            return None, None
        try:
            return _decode(raw), raw
        except _Unreadable as exc:
            reason = str(exc)
        log.warning(
            "database file %s is unreadable: %s; trying its backup %s", self.path, reason, self.backup_path
        )

        backup_reason = ""
        try:
            backup_raw = self.backup_path.read_bytes()
            data = _decode(backup_raw)
        except FileNotFoundError:
            backup_reason = "it does not exist"
        except _Unreadable as exc:
            backup_reason = str(exc)
        else:
            kept = _set_aside(self.path, move=False)
            # No keep_backup: the backup already holds these bytes, and it must not become the torn file.
            atomic_write_bytes(self.path, backup_raw)
            log.warning(
                "recovered %s from the backup %s (the previous good copy, %d bytes, tables: %s); "
                "the unreadable file is kept as %s",
                self.path,
                self.backup_path,
                len(backup_raw),
                ", ".join(sorted(data)) or "none",
                kept,
            )
            return data, backup_raw

        moved = _set_aside(self.path, move=True)
        moved_backup = _set_aside(self.backup_path, move=True) if self.backup_path.exists() else None
        fsync_directory(self.path.parent)
        log.error(
            "database file %s is unreadable (%s) and so is its backup %s (%s); moved the unreadable "
            "file to %s%s and starting with an EMPTY database",
            self.path,
            reason,
            self.backup_path,
            backup_reason,
            moved,
            f" and the backup to {moved_backup}" if moved_backup else "",
        )
        return None, None


def _set_aside(path: Path, *, move: bool) -> Path:
    """Give ``path`` the new name ``<name>.corrupt-<UTC time>`` (a hard link: no copy, no overwrite).

    With ``move`` the old name is removed, otherwise the file keeps both names.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        target = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            os.link(path, target)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand corrupt files in one second
        raise FileExistsError(f"no free name to set {path} aside")
    if move:
        os.unlink(path)
    return target


class _TinyDB(TinyDB):
    """TinyDB whose query caches can be dropped after the storage changed behind its back."""

    def clear_caches(self) -> None:
        """Forget the cached query results of every table (after a rollback or a reload)."""
        for table in self._tables.values():
            table.clear_cache()


_OPEN, _CALL, _CLOSE = "open", "call", "close"


@dataclass(eq=False)
class _Job:
    kind: str
    fn: Callable[[TinyDB], Any] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # The job stores only detached JSON values and changes only top-level fields of documents,
    # so a shallow savepoint can undo it and its result needs no JSON check (convenience methods).
    trusted: bool = False


class _FieldEquals:
    """A TinyDB condition ``doc[field] == value``: much cheaper than a Query, and never cached."""

    def __init__(self, field: str, value: Any) -> None:
        self.field, self.value = field, value

    def __call__(self, doc: dict[str, Any]) -> bool:
        return self.field in doc and doc[self.field] == self.value

    def __hash__(self) -> int:
        return id(self)

    def is_cacheable(self) -> bool:
        """Tell TinyDB not to keep the results in its query cache."""
        return False


def _settle(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve the job's future on its event loop (from the writer thread)."""

    def apply() -> None:
        if job.future.done():  # the caller was cancelled
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(apply)


class Store:
    """The gateway's state: one TinyDB file, written only by one dedicated thread.

    Use from asyncio: ``await store.open()``, then :meth:`transact` / :meth:`read` and the
    convenience methods from any number of tasks, then ``await store.close()`` (or
    ``async with Store(path) as store``). A lock file (``.<name>.lock``, ``flock``) makes sure only
    one store has a database open. Cancelling a waiting call stops the wait, not the job: a
    queued job still runs and is persisted.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._state = "new"  # new -> opening -> open -> closing -> closed
        self._close_future: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        # Used only in the writer thread:
        self._db: _TinyDB | None = None
        self._storage: AtomicJSONStorage | None = None
        self._lock_fd: int | None = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the writer thread and load the database in it (recovering it if needed)."""
        if self._state != "new":
            raise StoreClosedError(f"the store of {self.path} was already opened")
        self._state = "opening"
        loop = asyncio.get_running_loop()
        job = _Job(_OPEN, None, loop, loop.create_future())
        self._thread = threading.Thread(
            target=self._writer, args=(job,), name=f"picofleet-store:{self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            await job.future
        except BaseException:
            self._state = "closed"
            raise
        self._state = "open"

    async def close(self) -> None:
        """Run the jobs already queued, write what is pending, stop the thread and close TinyDB."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._close_future is None:
            if self._state == "opening":
                raise StoreClosedError("close() while open() is still running")
            if self._thread is None or not self._thread.is_alive():  # the writer failed (see _writer)
                self._state = "closed"
                return
            self._state = "closing"
            loop = asyncio.get_running_loop()
            self._close_future = loop.create_future()
            self._queue.put(_Job(_CLOSE, None, loop, self._close_future))
        try:
            await asyncio.shield(self._close_future)
        finally:
            if self._close_future.done():
                self._state = "closed"

    # -- the jobs ----------------------------------------------------------------------------------

    async def transact(self, fn: Callable[[TinyDB], T]) -> T:
        """Run ``fn(db)`` in the writer thread; return its result once its changes are on disk.

        If ``fn`` raises, its changes are rolled back and the exception is raised here; the other
        jobs of the batch are not affected. If the write fails (disk full, I/O error), every job
        of the batch raises that error and the data is reloaded from disk. (A failure of the final
        directory ``fsync`` happens after the rename: the change may then survive nonetheless.)
        """
        return await self._submit(fn)

    async def _transact_trusted(self, fn: Callable[[TinyDB], T]) -> T:
        return await self._submit(fn, trusted=True)

    async def read(self, fn: Callable[[TinyDB], T]) -> T:
        """Run ``fn(db)`` in the writer thread, which gives it a consistent view.

        It does not write by itself, but if ``fn`` saw changes of the same batch that are not on
        disk yet, it returns after they are (so nothing un-durable is ever reported), and fails if
        they could not be written.
        """
        return await self._submit(fn)

    async def _submit(self, fn: Callable[[TinyDB], T], *, trusted: bool = False) -> T:
        if self._state != "open":
            raise StoreClosedError(f"the store of {self.path} is {self._state}, not open")
        if self._failure is not None:
            raise StoreClosedError(f"the writer thread of {self.path} failed") from self._failure
        loop = asyncio.get_running_loop()
        job = _Job(_CALL, fn, loop, loop.create_future(), trusted)
        self._queue.put(job)
        return await job.future

    # -- convenience -------------------------------------------------------------------------------

    async def upsert(self, table: str, key_field: str, doc: dict[str, Any]) -> None:
        """Insert ``doc`` into ``table``, or replace the document with the same ``doc[key_field]``.

        Replacing an identical document writes nothing.
        """
        if key_field not in doc:
            raise KeyError(f"the document has no {key_field!r} field")
        record = _detached(doc)  # frozen now; raises TypeError now if not JSON-serializable
        key = record[key_field]

        def job(db: TinyDB) -> None:
            docs = db.table(table)
            found = docs.search(_FieldEquals(key_field, key))
            if not found:
                docs.insert(record)
                return
            if len(found) > 1:  # should not happen; keep one
                docs.remove(doc_ids=[d.doc_id for d in found[1:]])
            if dict(found[0]) != record:

                def replace(current: dict[str, Any]) -> None:
                    current.clear()
                    current.update(record)

                docs.update(replace, doc_ids=[found[0].doc_id])

        await self._transact_trusted(job)

    async def remove(self, table: str, key_field: str, key: str) -> bool:
        """Remove the documents of ``table`` whose ``key_field`` is ``key``; whether there was one."""

        def job(db: TinyDB) -> bool:
            docs = db.table(table)
            found = docs.search(_FieldEquals(key_field, key))
            if found:
                docs.remove(doc_ids=[d.doc_id for d in found])
            return bool(found)

        return await self._transact_trusted(job)

    async def all(self, table: str) -> list[dict[str, Any]]:
        """All documents of ``table`` (detached copies), in insertion order."""
        return await self._submit(
            lambda db: _detached([dict(d) for d in db.table(table).all()]), trusted=True
        )

    async def get_value(self, key: str, default: Any = None) -> Any:
        """The value of setting ``key`` (a detached copy), or ``default``."""

        def job(db: TinyDB) -> Any:
            doc = db.table(SETTINGS_TABLE).get(_FieldEquals("key", key))
            return default if doc is None else _detached(doc["value"])

        return await self._submit(job, trusted=True)

    async def set_value(self, key: str, value: Any) -> None:
        """Set setting ``key`` to the JSON value ``value``, durably."""
        await self.upsert(SETTINGS_TABLE, "key", {"key": key, "value": value})

    # -- the writer thread -------------------------------------------------------------------------

    def _writer(self, open_job: _Job) -> None:
        try:
            self._open_in_thread()
        except BaseException as exc:
            self._release()
            _settle(open_job, error=exc)
            return
        _settle(open_job)
        batch: list[_Job] = []
        try:
            while True:
                batch = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._queue.get_nowait())
                closing = self._run_batch(batch)
                if closing is not None:
                    self._release()
                    _settle(closing)
                    return
        except BaseException as exc:  # a bug: fail loudly rather than leave callers waiting forever
            log.exception("the writer thread of %s failed", self.path)
            self._failure = exc
            self._release()
            for job in batch:
                _settle(job, error=StoreClosedError(f"the writer thread of {self.path} failed"))
            with contextlib.suppress(queue.Empty):
                while True:
                    _settle(self._queue.get_nowait(), error=StoreClosedError("the writer thread failed"))

    def _open_in_thread(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"the database {self.path} is already open in another store or process (lock {lock_path})"
            ) from None
        self._lock_fd = fd
        db = _TinyDB(self.path, storage=AtomicJSONStorage)
        self._db, self._storage = db, db.storage
        self._storage.read()  # load and recover now, not at the first job

    def _release(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except Exception:
                log.exception("could not write %s while closing it", self.path)
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock

    def _run_batch(self, batch: list[_Job]) -> _Job | None:
        """Run a batch of jobs with one flush; return the close job if there is one."""
        storage, db = self._storage, self._db
        assert storage is not None and db is not None
        waiting: list[tuple[_Job, Any]] = []  # ran, but saw changes that are not durable yet
        closing: _Job | None = None
        with storage.deferred():
            for job in batch:
                if closing is not None:  # cannot happen: nothing is queued after close
                    _settle(job, error=StoreClosedError(f"the store of {self.path} is closed"))
                elif job.kind == _CLOSE:
                    closing = job
                else:
                    self._run_job(job, storage, db, waiting)
        try:
            storage.flush()
        except Exception as exc:
            db.clear_caches()
            log.error(
                "could not write %s (%s); %d operations failed, reloading the database from disk",
                self.path,
                exc,
                len(waiting),
            )
            for job, _ in waiting:
                _settle(job, error=exc)
        else:
            for job, result in waiting:
                _settle(job, result)
        return closing

    @staticmethod
    def _run_job(job: _Job, storage: AtomicJSONStorage, db: _TinyDB, waiting: list[tuple[_Job, Any]]) -> None:
        assert job.fn is not None
        try:
            savepoint = storage.savepoint(shallow=job.trusted)  # may reload from disk after a failed write
        except Exception as exc:
            _settle(job, error=exc)
            return
        try:
            result = job.fn(db)
            if not job.trusted:
                storage.encoded()  # a value that is not JSON fails this job, not the whole batch
        except Exception as exc:
            storage.rollback(savepoint)
            db.clear_caches()
            _settle(job, error=exc)
            return
        if storage.dirty:
            waiting.append((job, result))
        else:
            _settle(job, result)
