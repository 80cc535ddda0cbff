"""The gateway database file as a TinyDB storage: atomic writes, a backup, recovery at open.

Durability contract: :meth:`Store.transact` returns only once what the job changed is on disk
(temporary file, ``fsync``, ``os.replace``, ``fsync`` of the directory, see
:mod:`picofleet.common.atomic`), and :meth:`Store.read` never reports a change that is not. A
gateway killed at any point (``kill -9``, power cut) restarts with every acknowledged write. The
previous version of the file is kept as ``<file>.bak`` (a hard link, no copy, or an atomic copy
on a file system without hard links): it is one write behind, and only used if the main file was
damaged or removed by something else than our writes.

Recovery at open: a missing file without a backup is a new, empty database. A file that is
missing while its backup exists (deleted by mistake, or a crash on a file system that left only
the backup), or that is not a JSON object of tables (torn, truncated, zero bytes, garbage), is
logged as a WARNING and rewritten from its backup when the backup is good (a damaged file is kept
as ``<file>.corrupt-<UTC time>``); when the backup is unreadable too, both are moved aside to
``<name>.corrupt-<UTC time>`` (never deleted), an ERROR says where, and the gateway starts empty.
Temporary files left by a killed writer are removed. An operating-system error (for example
EACCES) is raised as such.

Privacy: the file holds secrets (tokens, the gateway's key at the fleet), so it and its backup
are written with mode 0600 (:data:`.atomic.SECRET_MODE`); a file or backup found with a wider
mode at open (written by an older version, or by hand) is narrowed to 0600 with a WARNING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tinydb.storages import Storage

from picofleet.common.atomic import (
    BACKUP_SUFFIX,
    SECRET_MODE,
    atomic_write_bytes,
    fsync_directory,
    link_or_copy,
    stale_temp_files,
)

__all__ = ["AtomicJSONStorage", "Tables"]

log = logging.getLogger("picofleet.store")

T = TypeVar("T")
Tables = dict[str, dict[str, dict[str, Any]]]


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


def detached(value: T) -> T:
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
            atomic_write_bytes(self.path, raw, keep_backup=True, mode=SECRET_MODE)
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

    def _make_private(self) -> None:
        """Narrow the file and its backup to mode 0600 where others may read or write them."""
        for path in (self.path, self.backup_path):
            try:
                mode = os.stat(path).st_mode & 0o777
                if mode & ~SECRET_MODE:
                    os.chmod(path, SECRET_MODE)
                    log.warning("%s was open to other users (mode %04o); it is now 0600", path, mode)
            except FileNotFoundError:
                continue
            except PermissionError as error:
                log.warning("cannot check or narrow the mode of %s: %s", path, error.strerror)

    def _load(self) -> None:
        self._make_private()
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
        raw: bytes | None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw, reason = None, "it does not exist"
        else:
            try:
                return _decode(raw), raw
            except _Unreadable as exc:
                reason = f"it is unreadable: {exc}"
        try:
            backup_raw: bytes | None = self.backup_path.read_bytes()
        except FileNotFoundError:
            backup_raw = None
        if raw is None and backup_raw is None:
            return None, None  # a new database
        log.warning("database file %s: %s; trying its backup %s", self.path, reason, self.backup_path)

        if backup_raw is None:
            backup_reason = "it does not exist"
        else:
            try:
                data = _decode(backup_raw)
            except _Unreadable as exc:
                backup_reason = str(exc)
            else:
                kept = _set_aside(self.path, move=False) if raw is not None else None
                # No keep_backup: the backup already holds these bytes, and it must not become the torn file.
                atomic_write_bytes(self.path, backup_raw, mode=SECRET_MODE)
                log.warning(
                    "recovered %s from the backup %s (the previous good copy, %d bytes, tables: %s)%s",
                    self.path,
                    self.backup_path,
                    len(backup_raw),
                    ", ".join(sorted(data)) or "none",
                    f"; the unreadable file is kept as {kept}" if kept else "",
                )
                return data, backup_raw

        moved = _set_aside(self.path, move=True) if raw is not None else None
        moved_backup = _set_aside(self.backup_path, move=True) if backup_raw is not None else None
        fsync_directory(self.path.parent)
        log.error(
            "database file %s: %s, and its backup %s cannot replace it (%s); moved %s and starting "
            "with an EMPTY database",
            self.path,
            reason,
            self.backup_path,
            backup_reason,
            " and ".join(
                f"{what} to {where}"
                for what, where in (("the file", moved), ("the backup", moved_backup))
                if where
            ),
        )
        return None, None


def _set_aside(path: Path, *, move: bool) -> Path:
    """Give ``path`` the new name ``<name>.corrupt-<UTC time>`` (:func:`.link_or_copy`: no overwrite).

    With ``move`` the old name is removed, otherwise the file keeps both names.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        target = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            link_or_copy(path, target)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand corrupt files in one second
        raise FileExistsError(f"no free name to set {path} aside")
    if move:
        os.unlink(path)
    return target
