"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix.

The recipe is the classic one: write the new bytes to a temporary file in the same directory,
``fsync`` it, ``os.replace`` it over the target (atomic on POSIX file systems) and ``fsync`` the
directory so that the rename itself survives a power cut. A process killed at any point leaves
the old file (or, after the rename, the new one) plus at most stale temporary files, whose names
start with ``.<name>.`` and end with ``.tmp`` so that the owner of the file can clean them up
(see :func:`stale_temp_files`).

Second names for a file (the ``.bak`` backup, see :func:`link_or_copy`) are hard links, so no data
is copied; on a file system without hard links (vfat, exfat) they are atomic copies instead, with
the mode of the original.

Files holding secrets (the databases: tokens, gateway keys) are written with ``mode=SECRET_MODE``
(0600, owner only); the mode is set when the temporary file is created, so the bytes are never
readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
from pathlib import Path

__all__ = [
    "SECRET_MODE",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_directory",
    "link_or_copy",
    "stale_temp_files",
]

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
BACKUP_SUFFIX = ".bak"
FILE_MODE = 0o644
"""The mode of a new file (before the umask) unless the caller asks for another."""
SECRET_MODE = 0o600
"""The mode of files holding secrets: read and written by their owner only."""

# os.link errors meaning "no hard links here" (vfat, exfat, some network file systems, or a
# protected_hardlinks refusal), rather than a problem a copy would not have.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})
_reported_no_hard_links = False  # the INFO message is logged once per process


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


def _write_new_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create ``path`` (it must not exist) with ``mode`` (before the umask) holding ``data``,
    ``fsync``-ed; no cleanup on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Give the file ``src`` the second name ``dst``, which must not exist yet.

    A hard link (no data copied) where the file system has them. Where ``os.link`` fails with
    EPERM, EOPNOTSUPP/ENOTSUP or EXDEV (vfat, exfat ...), the bytes are copied instead, still
    atomically: to a temporary file next to ``src``, ``fsync``, then renamed to ``dst``, so ``dst``
    is never partial (the absence of ``dst`` is checked just before: only the single owner of these
    names may create them). The first fallback is logged at INFO. Raises ``FileNotFoundError`` if
    ``src`` does not exist and ``FileExistsError`` if ``dst`` does, like ``os.link``. The directory
    is not ``fsync``-ed.
    """
    global _reported_no_hard_links
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if not _reported_no_hard_links:
            _reported_no_hard_links = True
            log.info(
                "the file system of %s has no hard links (%s); copying files instead of linking them",
                dst.parent,
                exc.strerror or exc,
            )
    data = src.read_bytes()
    mode = os.stat(src).st_mode & 0o777  # a copy of a secret stays as private as the original
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    temp = _temp_path(src, "copy")
    try:
        _write_new_file(temp, data, mode)
        os.chmod(temp, mode)  # exactly the original's, whatever the umask
        os.replace(temp, dst)
    except BaseException:
        _unlink_quietly(temp)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, keep_backup: bool = False, mode: int = FILE_MODE) -> None:
    """Replace the content of ``path`` with ``data`` atomically and durably.

    The new file is created with ``mode`` (before the umask; :data:`SECRET_MODE` for secrets),
    whatever the mode of the file it replaces.

    With ``keep_backup`` the current file (if any) is kept as ``<name>.bak``, by a hard link (no
    data copied) or, on a file system without hard links, an atomic copy (see :func:`link_or_copy`).
    On failure the temporary files are removed and the exception re-raised; the old file is
    untouched unless the failure is the final directory ``fsync`` (the rename is then done but
    possibly not yet durable).
    """
    path = Path(path)
    temp = _temp_path(path)
    try:
        _write_new_file(temp, data, mode)
        if keep_backup:
            link = _temp_path(path, "bak")
            try:
                link_or_copy(path, link)
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


def atomic_write_json(path: Path, obj: object, *, keep_backup: bool = False, mode: int = FILE_MODE) -> None:
    """Write ``obj`` as compact UTF-8 JSON with :func:`atomic_write_bytes` (``mode`` as there).

    NaN and infinities are refused (``ValueError``) so that the file is always standard JSON.
    """
    text = json.dumps(obj, separators=(",", ":"), sort_keys=False, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"), keep_backup=keep_backup, mode=mode)
