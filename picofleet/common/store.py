"""The gateway's crash-safe state store: one TinyDB JSON document, one writer thread, group commit.

The file itself (atomic writes, the backup, recovery at open) is :mod:`.storage`.

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
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tinydb import TinyDB

from picofleet.common.errors import ConfigError
from picofleet.common.tinydb_file import AtomicJSONStorage, detached

__all__ = ["AtomicJSONStorage", "Store", "StoreClosedError", "StoreLockedError", "check_private_directory"]

log = logging.getLogger("picofleet.store")

T = TypeVar("T")

SETTINGS_TABLE = "settings"


class StoreClosedError(RuntimeError):
    """The store is not open (not yet opened, closing or closed)."""


class StoreLockedError(RuntimeError):
    """Another store (in this or another process) has the database open."""


def check_private_directory(directory: Path) -> None:
    """Raise ConfigError (one line) if every user may write in ``directory``: anyone could then
    replace the database or its backup (with the sticky bit, squat their names)."""
    mode = os.stat(directory).st_mode
    if mode & stat.S_IWOTH:
        raise ConfigError(
            f"the database directory {directory} is writable by every user (mode {mode & 0o7777:04o}): "
            f"make it private (chmod o-w {directory}) or choose another directory"
        )


class _TinyDB(TinyDB):
    """TinyDB whose query caches can be dropped after the storage changed behind its back."""

    def clear_caches(self) -> None:
        """Forget the cached query results of every table (after a rollback or a reload)."""
        for table in self._tables.values():
            table.clear_cache()


_OPEN, _CALL, _CLOSE = "open", "call", "close"
_EXACT, _SHALLOW, _NONE = "exact", "shallow", "none"


@dataclass(eq=False)
class _Job:
    kind: str
    fn: Callable[[TinyDB], Any] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # How the job can be undone if it raises: EXACT (any job: JSON savepoint, result checked to be
    # JSON), SHALLOW (convenience writers: they store copied, checked JSON values and only replace
    # top-level fields) or NONE (convenience readers: they change nothing).
    undo: str = _EXACT


class FieldEquals:
    """A TinyDB condition ``doc[field] == value``: much cheaper than a Query, and never cached."""

    def __init__(self, field: str, value: Any) -> None:
        self.field, self.value = field, value

    def __call__(self, value: Mapping[str, Any]) -> bool:  # named as in TinyDB's QueryLike protocol
        return self.field in value and value[self.field] == self.value

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
            if self._failure is not None or self._thread is None or not self._thread.is_alive():
                self._state = "closed"  # the writer failed (see _writer)
                return
            self._state = "closing"
            loop = asyncio.get_running_loop()
            self._close_future = loop.create_future()
            self._queue.put(_Job(_CLOSE, None, loop, self._close_future))
            if self._failure is not None:  # failed meanwhile: see _submit
                self._fail_queued()
        try:
            await asyncio.shield(self._close_future)
        except StoreClosedError:
            if self._failure is None:
                raise  # pragma: no cover - only a failed writer fails the close job
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

    async def read(self, fn: Callable[[TinyDB], T]) -> T:
        """Run ``fn(db)`` in the writer thread, which gives it a consistent view.

        It does not write by itself, but if ``fn`` saw changes of the same batch that are not on
        disk yet, it returns after they are (so nothing un-durable is ever reported), and fails if
        they could not be written.
        """
        return await self._submit(fn)

    async def _submit(self, fn: Callable[[TinyDB], T], undo: str = _EXACT) -> T:
        if self._state != "open":
            raise StoreClosedError(f"the store of {self.path} is {self._state}, not open")
        if self._failure is not None:
            raise self._failed_error()
        loop = asyncio.get_running_loop()
        job = _Job(_CALL, fn, loop, loop.create_future(), undo)
        self._queue.put(job)
        if self._failure is not None:
            # The writer failed meanwhile and may have drained the queue before our put: fail what
            # is left (a job the writer settled already ignores this).
            self._fail_queued()
        return await job.future

    def _failed_error(self) -> StoreClosedError:
        error = StoreClosedError(f"the writer thread of {self.path} failed: {self._failure!r}")
        error.__cause__ = self._failure
        return error

    def _fail_queued(self) -> None:
        """Fail every job still queued (after the writer thread failed; any thread)."""
        with contextlib.suppress(queue.Empty):
            while True:
                _settle(self._queue.get_nowait(), error=self._failed_error())

    # -- convenience -------------------------------------------------------------------------------

    async def upsert(self, table: str, key_field: str, doc: dict[str, Any]) -> None:
        """Insert ``doc`` into ``table``, or replace the document with the same ``doc[key_field]``.

        Replacing an identical document writes nothing.
        """
        if key_field not in doc:
            raise KeyError(f"the document has no {key_field!r} field")
        record = detached(doc)  # frozen now; raises TypeError now if not JSON-serializable
        key = record[key_field]

        def job(db: TinyDB) -> None:
            docs = db.table(table)
            found = docs.search(FieldEquals(key_field, key))
            if not found:
                docs.insert(record)
                return
            if len(found) > 1:  # should not happen; keep one
                docs.remove(doc_ids=[d.doc_id for d in found[1:]])
            if dict(found[0]) != record:

                def replace(current: MutableMapping[str, Any]) -> None:
                    current.clear()
                    current.update(record)

                docs.update(replace, doc_ids=[found[0].doc_id])

        await self._submit(job, _SHALLOW)

    async def remove(self, table: str, key_field: str, key: str) -> bool:
        """Remove the documents of ``table`` whose ``key_field`` is ``key``; whether there was one."""

        def job(db: TinyDB) -> bool:
            docs = db.table(table)
            found = docs.search(FieldEquals(key_field, key))
            if found:
                docs.remove(doc_ids=[d.doc_id for d in found])
            return bool(found)

        return await self._submit(job, _SHALLOW)

    async def all(self, table: str) -> list[dict[str, Any]]:
        """All documents of ``table`` (detached copies), in insertion order."""
        return await self._submit(lambda db: detached([dict(d) for d in db.table(table).all()]), _NONE)

    async def get_value(self, key: str, default: Any = None) -> Any:
        """The value of setting ``key`` (a detached copy), or ``default``."""

        def job(db: TinyDB) -> Any:
            doc = db.table(SETTINGS_TABLE).get(FieldEquals("key", key))
            return default if doc is None else detached(doc["value"])

        return await self._submit(job, _NONE)

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
            self._failure = exc  # first: _submit and close check it after queueing (see there)
            self._release()
            for job in batch:
                _settle(job, error=self._failed_error())
            self._fail_queued()

    def _open_in_thread(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new directory: owner only
        check_private_directory(self.path.parent)
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
        storage = db.storage  # TinyDB types it as its base class Storage
        assert isinstance(storage, AtomicJSONStorage)
        self._db, self._storage = db, storage
        storage.read()  # load and recover now, not at the first job

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
        savepoint = None
        try:
            if job.undo == _NONE:
                storage.read()  # may reload from disk after a failed write
            else:
                savepoint = storage.savepoint(shallow=job.undo == _SHALLOW)  # may reload too
        except Exception as exc:
            _settle(job, error=exc)
            return
        try:
            result = job.fn(db)
            if job.undo == _EXACT:
                storage.encoded()  # a value that is not JSON fails this job, not the whole batch
        except Exception as exc:
            if savepoint is not None:
                storage.rollback(savepoint)
                db.clear_caches()
            _settle(job, error=exc)
            return
        if storage.dirty:
            waiting.append((job, result))
        else:
            _settle(job, result)
