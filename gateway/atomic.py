"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix.

The recipe is the classic one: write the new bytes to a temporary file in the same directory,
``fsync`` it, ``os.replace`` it over the target (atomic on POSIX file systems) and ``fsync`` the
directory so that the rename itself survives a power cut. A process killed at any point leaves
the old file (or, after the rename, the new one) plus at most a stale temporary file, whose name
starts with ``.<name>.`` and ends with ``.tmp`` so that the owner of the file can clean it up
(see :func:`stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_directory", "stale_temp_files"]

TEMP_SUFFIX = ".tmp"
BACKUP_SUFFIX = ".bak"


def _temp_path(path: Path, tag: str = "") -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.[tag.]<pid>.<random>.tmp``."""
    middle = f"{tag}." if tag else ""
    return path.with_name(f".{path.name}.{middle}{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def stale_temp_files(path: Path) -> list[Path]:
    """The temporary files :func:`atomic_write_bytes` may have left next to ``path`` when killed.

    Only the single owner of ``path`` should delete them, and only when it is not writing.
    """
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [path.with_name(n) for n in names if n.startswith(prefix) and n.endswith(TEMP_SUFFIX)]


def fsync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def atomic_write_bytes(path: Path, data: bytes, *, keep_backup: bool = False) -> None:
    """Replace the content of ``path`` with ``data`` atomically and durably.

    With ``keep_backup`` the current file (if any) is kept as ``<name>.bak`` by a hard link, so no
    data is copied. On failure the temporary file is removed and the exception re-raised; the old
    file is untouched unless the failure is the final directory ``fsync`` (the rename is then done
    but possibly not yet durable).
    """
    path = Path(path)
    temp = _temp_path(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep_backup:
            link = _temp_path(path, "bak")
            try:
                os.link(path, link)
            except FileNotFoundError:
                pass  # no current file, nothing to keep
            else:
                try:
                    os.replace(link, path.with_name(path.name + BACKUP_SUFFIX))
                except BaseException:
                    _unlink_quietly(link)
                    raise
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_directory(path.parent)


def atomic_write_json(path: Path, obj: object, *, keep_backup: bool = False) -> None:
    """Write ``obj`` as compact UTF-8 JSON with :func:`atomic_write_bytes`.

    NaN and infinities are refused (``ValueError``) so that the file is always standard JSON.
    """
    text = json.dumps(obj, separators=(",", ":"), sort_keys=False, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"), keep_backup=keep_backup)
