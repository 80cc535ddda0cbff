"""The asset cache: firmware images stored by their sha256 under ENM_ASSETS_DIRECTORY.

* **Content-addressed**: ``<dir>/<sha256[:2]>/<sha256>``; one copy serves every board that needs it.
* **Written atomically** (temp file, fsync, rename, fsync of the directory) and **verified on every
  read**: a file whose bytes no longer hash to its name is never handed to a board — it is moved
  aside (``.damaged``) and reported missing.
* **Resumable downloads** (:meth:`AssetCache.download`): bytes arrive in ``<dir>/partial/<sha256>``;
  an interrupted download continues with an HTTP ``Range`` request from where it stopped (a server
  that ignores Range sends everything again); the asset exists only once its sha256 matched.
* **Garbage collection and a size bound** (:meth:`AssetCache.collect`): assets no board or target
  references are deleted once older than a grace period (so an image just stored for a flash that
  is being queued is not lost); if the cache is still larger than its bound, the least recently
  used unreferenced assets go first, whatever their age. Referenced assets are never deleted:
  when they alone exceed the bound, a warning says so. Partial downloads count like assets.
  Only the cache's own files are considered (``<sha256[:2]>/<sha256>``, its ``.damaged`` copy,
  ``partial/<sha256>``, and temporary files a killed write left, once past the grace period):
  anything else stored under the directory is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

import httpx

from picofleet.common.atomic import atomic_write_bytes, fsync_directory

log = logging.getLogger("picofleet.assets")

SHA256 = re.compile(r"[0-9a-f]{64}")
FOLDER = re.compile(r"[0-9a-f]{2}")
TEMP = re.compile(r"\.[0-9a-f]{64}\..+\.tmp", re.DOTALL)
"""What :func:`~picofleet.common.atomic.atomic_write_bytes` names its temporary files here."""
GRACE_SECONDS = 3600.0
DOWNLOAD_CHUNK = 64 * 1024


class AssetError(Exception):
    """An asset is missing, damaged, or could not be downloaded; the message says which and why."""


def sha256_of(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Collected:
    """What one garbage collection did."""

    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_bytes: int = 0
    over_bound: bool = False


class AssetCache:
    """Firmware images by sha256 in one directory tree, at most ``max_bytes`` of unreferenced ones."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 30):
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def path_of(self, sha256: str) -> Path:
        """Where the asset ``sha256`` is (or would be) stored."""
        if not SHA256.fullmatch(sha256):
            raise AssetError(f"{sha256!r} is not a sha256")
        return self.directory / sha256[:2] / sha256

    def partial_path(self, sha256: str) -> Path:
        """Where a download of ``sha256`` in progress keeps its bytes."""
        self.path_of(sha256)  # validates the name
        return self.directory / "partial" / sha256

    def has(self, sha256: str) -> bool:
        """Whether the asset is stored (not verified: :meth:`get` verifies)."""
        return self.path_of(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` (once: an asset already present is not rewritten); return its sha256.

        Pass ``sha256`` when the caller already hashed exactly these bytes.
        """
        sha256 = sha256 or sha256_of(data)
        path = self.path_of(sha256)
        if path.exists():
            os.utime(path)  # recently used
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        return sha256

    def get(self, sha256: str) -> bytes:
        """The asset's bytes, verified; raise AssetError if it is missing or damaged."""
        path = self.path_of(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise AssetError(f"asset {sha256} is not in the cache") from None
        if sha256_of(data) != sha256:
            damaged = path.with_name(f"{path.name}.damaged")
            os.replace(path, damaged)
            log.error("asset %s was damaged on disk; moved aside to %s", sha256, damaged)
            raise AssetError(f"asset {sha256} was damaged on disk (moved aside)")
        os.utime(path)
        return data

    # -- downloads ----------------------------------------------------------------------------
    async def download(
        self,
        client: httpx.AsyncClient,
        url: str,
        sha256: str,
        size: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Make asset ``sha256`` present, fetching ``url`` (resuming a partial download); return its path.

        Raises AssetError when the server fails, the size is exceeded, or the bytes do not hash to
        ``sha256`` (the partial file is then discarded, so the next try starts afresh).
        """
        final = self.path_of(sha256)
        if final.is_file():
            return final
        partial = self.partial_path(sha256)
        await asyncio.to_thread(partial.parent.mkdir, parents=True, exist_ok=True)
        digest, offset = await asyncio.to_thread(_hash_existing, partial, size)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and size is not None and offset == size:
                    # We already have every byte: the reply's body is an error page, not data.
                    if progress is not None:
                        progress(offset, size)
                else:
                    if response.status_code == 200 and offset:
                        log.info("asset %s: the server ignored Range; downloading it whole again", sha256)
                        digest, offset = hashlib.sha256(), 0
                    elif response.status_code not in (200, 206):
                        raise AssetError(f"download of {url} failed: HTTP {response.status_code}")
                    with open(partial, "r+b" if offset else "wb") as handle:
                        handle.seek(offset)
                        handle.truncate()
                        async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                            offset += len(chunk)
                            if size is not None and offset > size:
                                raise AssetError(
                                    f"download of {url} is larger than the {size} bytes announced"
                                )
                            digest.update(chunk)
                            await asyncio.to_thread(handle.write, chunk)
                            if progress is not None:
                                progress(offset, size)
                        await asyncio.to_thread(_flush_and_sync, handle)
        except httpx.HTTPError as error:
            raise AssetError(f"download of {url} interrupted after {offset} bytes: {error}") from None
        if digest.hexdigest() != sha256:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise AssetError(f"download of {url} does not match its sha256 {sha256}; discarded")
        await asyncio.to_thread(_install, partial, final)
        return final

    # -- garbage collection -------------------------------------------------------------------------
    def collect(self, referenced: Iterable[str], now: float | None = None) -> Collected:
        """Delete unreferenced assets past the grace period, then LRU ones while over the bound."""
        keep = set(referenced)
        now = time.time() if now is None else now
        report = Collected()
        candidates: list[tuple[float, int, Path, str]] = []
        for path in self._stale_temp_files(now):
            with contextlib.suppress(FileNotFoundError):
                size = path.lstat().st_size
                path.unlink()
                report.freed_bytes += size
                log.info("asset cache: deleted stale temporary file %s (%d bytes)", path.name, size)
        for path in self._stored_files():
            name = path.name.split(".")[0]
            stat = path.stat()
            if name in keep and not path.name.endswith(".damaged"):
                report.kept_bytes += stat.st_size
            elif path.name.endswith(".damaged") or now - stat.st_mtime > GRACE_SECONDS:
                self._delete(path, name, stat.st_size, report)
            else:
                candidates.append((stat.st_mtime, stat.st_size, path, name))
        total = report.kept_bytes + sum(size for _, size, _, _ in candidates)
        for _, size, path, name in sorted(candidates):  # least recently used first
            if total <= self.max_bytes:
                break
            self._delete(path, name, size, report)
            total -= size
        if report.kept_bytes > self.max_bytes:
            report.over_bound = True
            log.warning(
                "assets in use take %d bytes, more than the cache's bound of %d",
                report.kept_bytes,
                self.max_bytes,
            )
        return report

    def _cache_folders(self) -> list[Path]:
        """The folders the cache writes: ``<sha256[:2]>`` ones and ``partial`` (not symlinks)."""
        if not self.directory.is_dir():
            return []
        return [
            folder
            for folder in self.directory.iterdir()
            if (FOLDER.fullmatch(folder.name) or folder.name == "partial")
            and not folder.is_symlink()
            and folder.is_dir()
        ]

    def _stored_files(self) -> list[Path]:
        """The cache's own files: ``<sha256[:2]>/<sha256>[.damaged]`` and ``partial/<sha256>``.

        Anything else under the directory (another program's files, a stray folder) is never
        touched; temporary files are left to :meth:`_stale_temp_files`.
        """
        found = []
        for folder in self._cache_folders():
            for path in folder.iterdir():
                if folder.name == "partial":
                    sha = path.name
                else:
                    sha = path.name.removesuffix(".damaged")
                    if not sha.startswith(folder.name):
                        continue
                if SHA256.fullmatch(sha) and _is_plain_file(path):
                    found.append(path)
        return found

    def _stale_temp_files(self, now: float) -> list[Path]:
        """Temporary files (``.<sha256>.<...>.tmp``) a killed write left, older than the grace period."""
        stale = []
        for folder in self._cache_folders():
            for path in folder.iterdir():
                if TEMP.fullmatch(path.name) and _is_plain_file(path):
                    with contextlib.suppress(FileNotFoundError):
                        if now - path.lstat().st_mtime > GRACE_SECONDS:
                            stale.append(path)
        return stale

    @staticmethod
    def _delete(path: Path, name: str, size: int, report: Collected) -> None:
        path.unlink(missing_ok=True)
        report.deleted.append(name)
        report.freed_bytes += size
        log.info("asset cache: deleted %s (%d bytes)", path.name, size)


def _hash_existing(partial: Path, size: int | None) -> tuple[hashlib._Hash, int]:
    """The hash and length of what a previous download left, read in chunks (never whole)."""
    digest, length = hashlib.sha256(), 0
    try:
        with open(partial, "rb") as handle:
            while chunk := handle.read(DOWNLOAD_CHUNK * 16):
                digest.update(chunk)
                length += len(chunk)
    except FileNotFoundError:
        return hashlib.sha256(), 0
    if size is not None and length > size:
        partial.unlink()
        return hashlib.sha256(), 0
    return digest, length


def _is_plain_file(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a symlink to one)."""
    try:
        return S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]


def _install(partial: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    fsync_directory(final.parent)
