"""Uploaded FPGA bitstreams: validated, packed to ``.bin`` once, stored by the ``.bin``'s sha256.

``PUT /v1/bitstreams`` hands the upload to :meth:`BitstreamStore.add`:

* a ``.bin`` is validated (firmware/formats/bitstream.py :func:`read_bin`: truncated, corrupted or
  foreign bitstreams are refused with the byte offset and the reason);
* an ``.asc`` is validated and packed with icepack (:func:`pack_asc`), in a worker thread, once:
  the upload's own sha256 is remembered as an alias of the ``.bin``'s, so uploading the same
  ``.asc`` again costs a hash, and concurrent uploads of it share one packing.

The ``.bin`` files live in an :class:`~picofleet.firmware.asset_cache.AssetCache` of their own
(``<data>/bitstreams``): content-addressed, written atomically, verified on every read, and
collected — unreferenced ones past the cache's grace period, then the least recently used while
over the bound. A file's time is when the bitstream was last used: uploaded (again), looked up,
read from disk, or evaluated (:meth:`BitstreamStore.used`, applied at the next collection).
Bitstreams of queued evaluations are referenced and never collected; a collection and the
requests that start using a bitstream (uploads, look-ups, and queueing an evaluation inside
:meth:`BitstreamStore.no_collection`) never overlap, so nothing is deleted between the check that
a bitstream is stored and its use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from picofleet.common.atomic import atomic_write_bytes
from picofleet.common.http.errors import ApiError
from picofleet.firmware.asset_cache import SHA256, AssetCache, AssetError, sha256_of
from picofleet.firmware.formats import bitstream

log = logging.getLogger("picofleet.bitstreams")

COLLECT_INTERVAL = 60.0
"""Seconds between two collections triggered by uploads."""
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
"""Recently used ``.bin`` files kept in memory (every evaluation reads its bitstream)."""
ALIASES = "aliases"


class BitstreamRejected(ApiError):
    """An upload that is not a valid up5k bitstream; ``status`` is 400 (not one) or 422 (invalid)."""


@dataclass(frozen=True)
class StoredBitstream:
    """A bitstream in the store: the ``.bin``'s sha256 and size, and what was uploaded."""

    sha256: str
    size: int
    source: str
    """``"bin"`` or ``"asc"``."""

    def public(self) -> dict[str, object]:
        """The JSON answer of an upload."""
        return {"sha256": self.sha256, "size": self.size, "source": self.source}


def validate_bin(data: bytes) -> None:
    """Raise :class:`BitstreamRejected` (422) unless ``data`` is a valid up5k ``.bin``."""
    try:
        bitstream.read_bin(data)
    except bitstream.BitstreamError as error:
        raise BitstreamRejected(422, f"invalid .bin bitstream: {error}") from None


def pack(asc: bytes) -> bytes:
    """The ``.bin`` of an ``.asc`` upload; :class:`BitstreamRejected` (422) when it is invalid."""
    try:
        text = asc.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BitstreamRejected(422, f"invalid .asc bitstream: not UTF-8 text ({error.reason})") from None
    try:
        return bitstream.pack_asc(text)
    except bitstream.BitstreamError as error:
        raise BitstreamRejected(422, f"invalid .asc bitstream: {error}") from None


def kind_of(data: bytes) -> str:
    """``"bin"`` or ``"asc"``; :class:`BitstreamRejected` (400) for anything else."""
    if not data:
        raise BitstreamRejected(400, "the upload is empty: send a .asc or .bin bitstream as the body")
    kind = bitstream.detect_kind(data)
    if kind == "ice40-bin":
        return "bin"
    if kind == "ice40-asc":
        return "asc"
    if kind == "uf2":
        raise BitstreamRejected(400, "this is a UF2 firmware image, not an FPGA bitstream (.asc or .bin)")
    first = " ".join(f"{byte:02X}" for byte in data[:4])
    raise BitstreamRejected(
        400, f"not an iCE40 bitstream: a .bin starts with FF 00 or 7E AA 99 7E, an .asc with '.' ({first})"
    )


class BitstreamStore:
    """The gateway's uploaded bitstreams (``manager.bitstreams``)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        referenced: Callable[[], Iterable[str]] = frozenset,
    ) -> None:
        self.cache = AssetCache(directory, max_bytes)
        self.aliases = Path(directory) / ALIASES
        self.referenced = referenced
        self._packing: dict[str, asyncio.Future[StoredBitstream]] = {}
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._last_collect = 0.0
        self._used: dict[str, float] = {}  # sha -> when last used, since the last collection
        self._collection = asyncio.Lock()  # held by a collection, and by who starts using a bitstream

    # -- uploads --------------------------------------------------------------------------------
    async def add(self, data: bytes) -> StoredBitstream:
        """Validate and store an upload (packing an ``.asc`` once); raise :class:`BitstreamRejected`."""
        kind = kind_of(data)
        upload_sha = await asyncio.to_thread(sha256_of, data)
        if kind == "bin":
            if upload_sha not in self._memory and not await asyncio.to_thread(self.cache.has, upload_sha):
                await asyncio.to_thread(validate_bin, data)
            async with self._collection:
                await self._store(upload_sha, data)  # written, or (stored already) made recently used
            stored = StoredBitstream(upload_sha, len(data), "bin")
        else:
            pending = self._packing.get(upload_sha)
            if pending is None:
                pending = asyncio.ensure_future(self._add_asc(upload_sha, data))
                self._packing[upload_sha] = pending
                pending.add_done_callback(lambda _: self._packing.pop(upload_sha, None))
            stored = await asyncio.shield(pending)
        await self.collect_now_and_then()
        return stored

    async def _add_asc(self, upload_sha: str, asc: bytes) -> StoredBitstream:
        known = await self._lookup_asc(upload_sha)
        if known is not None:
            return known
        packed = await asyncio.to_thread(pack, asc)
        sha = sha256_of(packed)
        async with self._collection:
            await self._store(sha, packed)
        await asyncio.to_thread(self._write_alias, upload_sha, sha, len(packed))
        log.info("packed an .asc upload (%s) to %s (%d bytes)", upload_sha[:12], sha[:12], len(packed))
        return StoredBitstream(sha, len(packed), "asc")

    async def _store(self, sha: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self.cache.put, data, sha)
        except OSError as error:
            raise OSError(f"cannot store the bitstream: {error.strerror or error}") from None
        self._remember(sha, data)

    def _alias(self, upload_sha: str) -> tuple[str, int] | None:
        """The ``(sha256, size)`` an ``.asc`` upload was packed to, if that ``.bin`` is still stored."""
        try:
            sha, _, size = (self.aliases / upload_sha).read_text().partition(" ")
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if not SHA256.fullmatch(sha) or not size.strip().isdigit() or not self.cache.has(sha):
            return None
        return sha, int(size)

    def _write_alias(self, upload_sha: str, sha: str, size: int) -> None:
        self.aliases.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.aliases / upload_sha, f"{sha} {size}".encode())

    # -- reading ----------------------------------------------------------------------------------
    def has(self, sha: str) -> bool:
        """Whether bitstream ``sha`` (a ``.bin``'s sha256) is stored; ``False`` for a malformed name."""
        if sha in self._memory:
            return True
        try:
            return self.cache.has(sha)
        except AssetError:
            return False

    async def missing(self, shas: Iterable[str]) -> list[str]:
        """Those of ``shas`` that are not stored (the disk is looked at in a worker thread)."""
        unknown = [sha for sha in dict.fromkeys(shas) if sha not in self._memory]
        on_disk = await asyncio.to_thread(lambda: {sha for sha in unknown if self.has(sha)})
        return [sha for sha in unknown if sha not in on_disk]

    async def lookup(self, sha: str) -> StoredBitstream | None:
        """The stored bitstream ``sha`` names: a ``.bin``'s sha256 or an ``.asc`` upload's.

        A bitstream found is recently used: the client that asked will use it.
        """
        async with self._collection:
            size = await asyncio.to_thread(self._touch, sha)
        if size is not None:
            return StoredBitstream(sha, size, "bin")
        return await self._lookup_asc(sha)

    async def _lookup_asc(self, upload_sha: str) -> StoredBitstream | None:
        """The ``.bin`` an ``.asc`` upload was packed to, made recently used, if it is stored."""
        async with self._collection:
            alias = await asyncio.to_thread(self._alias, upload_sha)
            if alias is None or await asyncio.to_thread(self._touch, alias[0]) is None:
                return None
        return StoredBitstream(alias[0], alias[1], "asc")

    def _touch(self, sha: str) -> int | None:
        """Make the stored ``.bin`` recently used; its size, ``None`` when it is not stored."""
        try:
            path = self.cache.path_of(sha)
            os.utime(path)
            return path.stat().st_size
        except (AssetError, OSError):
            return None

    async def get(self, sha: str) -> bytes:
        """The ``.bin`` (verified when read from disk); :class:`AssetError` when missing or damaged."""
        data = self._memory.get(sha)
        if data is not None:
            self._memory.move_to_end(sha)
            self.used(sha)
            return data
        data = await asyncio.to_thread(self.cache.get, sha)  # made recently used by the cache
        self._remember(sha, data)
        return data

    def used(self, sha: str) -> None:
        """Bitstream ``sha`` was used now (evaluated, read from memory): its file's time is set at
        the next collection, so it is kept as long as a bitstream just uploaded."""
        self._used[sha] = time.time()

    def _remember(self, sha: str, data: bytes) -> None:
        if sha in self._memory:
            self._memory.move_to_end(sha)
            return
        self._memory[sha] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > MEMORY_CACHE_BYTES and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    # -- collection ---------------------------------------------------------------------------------
    async def collect_now_and_then(self) -> None:
        """Collect at most every :data:`COLLECT_INTERVAL` seconds (uploads call this)."""
        if time.monotonic() - self._last_collect >= COLLECT_INTERVAL:
            await self.collect()

    @contextlib.asynccontextmanager
    async def no_collection(self) -> AsyncIterator[None]:
        """No collection runs while the body checks bitstreams and starts using them: what it
        references (queued evaluations) by its end is kept."""
        async with self._collection:
            yield

    async def collect(self) -> None:
        """Delete unreferenced bitstreams as the asset cache does, and aliases of deleted ones.

        First the files of bitstreams used since the last collection get the time of that use.
        """
        async with self._collection:
            self._last_collect = time.monotonic()
            used, self._used = self._used, {}
            keep = set(self.referenced())
            try:
                await asyncio.to_thread(self._set_used_times, used)
                report = await asyncio.to_thread(self.cache.collect, keep)
                await asyncio.to_thread(self._drop_dangling_aliases)
            except OSError as error:
                log.warning("bitstream store collection failed: %s", error)
                return
            for sha in report.deleted:
                dropped = self._memory.pop(sha, None)
                if dropped is not None:
                    self._memory_bytes -= len(dropped)

    def _set_used_times(self, used: dict[str, float]) -> None:
        for sha, when in used.items():
            with contextlib.suppress(AssetError, OSError):
                path = self.cache.path_of(sha)
                if path.stat().st_mtime < when:
                    os.utime(path, (when, when))

    def _drop_dangling_aliases(self) -> None:
        if not self.aliases.is_dir():
            return
        for alias in self.aliases.iterdir():
            if SHA256.fullmatch(alias.name) and self._alias(alias.name) is None:
                with contextlib.suppress(FileNotFoundError):
                    alias.unlink()
