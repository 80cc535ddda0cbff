"""The asset cache: verified reads, resumable downloads, garbage collection within a bound."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.asset_cache import GRACE_SECONDS, AssetCache, AssetError
from tests.helpers.file_server import FileServer

BLOB = os.urandom(300_000)
SHA = hashlib.sha256(BLOB).hexdigest()


def test_put_get_and_a_damaged_asset_is_never_returned(tmp_path: Path) -> None:
    cache = AssetCache(tmp_path)
    sha = cache.put(BLOB)
    assert sha == SHA and cache.get(sha) == BLOB
    path = cache.path_of(sha)
    path.write_bytes(BLOB[:-1] + b"\0")  # bit rot
    with pytest.raises(AssetError, match="damaged"):
        cache.get(sha)
    assert not path.exists() and path.with_name(path.name + ".damaged").exists()
    with pytest.raises(AssetError, match="not a sha256"):
        cache.get("../../etc/passwd")


def test_download_interrupted_then_resumed_with_range(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = AssetCache(tmp_path)
        server = FileServer({"blob": BLOB}, cut_after=100_000)
        async with server.running(), httpx.AsyncClient() as client:
            with pytest.raises(AssetError, match="interrupted"):
                await cache.download(client, f"{server.url}/blob", SHA, len(BLOB))
            partial = cache.partial_path(SHA).stat().st_size
            assert 0 < partial < len(BLOB)
            server.cut_after = None
            path = await cache.download(client, f"{server.url}/blob", SHA, len(BLOB))
        assert path.read_bytes() == BLOB
        assert server.ranges_seen == [None, f"bytes={partial}-"]  # only the rest was asked for
        assert not cache.partial_path(SHA).exists()

    asyncio.run(scenario())


def test_server_ignoring_range_and_wrong_content(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = AssetCache(tmp_path)
        server = FileServer({"blob": BLOB, "other": b"x" * 1000}, honour_range=False, cut_after=50_000)
        async with server.running(), httpx.AsyncClient() as client:
            with pytest.raises(AssetError):
                await cache.download(client, f"{server.url}/blob", SHA, len(BLOB))
            server.cut_after = None
            assert (await cache.download(client, f"{server.url}/blob", SHA)).read_bytes() == BLOB
            with pytest.raises(AssetError, match="does not match its sha256"):
                await cache.download(client, f"{server.url}/other", "ab" * 32)
        assert not cache.has("ab" * 32) and not cache.partial_path("ab" * 32).exists()

    asyncio.run(scenario())


def test_collect_keeps_referenced_and_recent_and_respects_the_bound(tmp_path: Path) -> None:
    cache = AssetCache(tmp_path, max_bytes=250_000)
    used, old, recent1, recent2 = (cache.put(os.urandom(100_000)) for _ in range(4))
    long_ago = time.time() - GRACE_SECONDS - 10
    os.utime(cache.path_of(old), (long_ago, long_ago))
    os.utime(cache.path_of(recent1), (time.time() - 60, time.time() - 60))  # older than recent2
    report = cache.collect([used])
    assert old in report.deleted  # unreferenced and past the grace period
    assert recent1 in report.deleted  # over the bound: least recently used first
    assert cache.has(used) and cache.has(recent2)
    assert not report.over_bound
    report = AssetCache(tmp_path, max_bytes=50_000).collect([used, recent2])
    assert report.over_bound and cache.has(used) and cache.has(recent2)  # in use: never deleted


def test_resuming_a_download_that_already_has_every_byte(tmp_path: Path) -> None:
    """The server answers 416 (with an error page) to a range at the end: verify and install."""

    async def scenario() -> None:
        cache = AssetCache(tmp_path)
        partial = cache.partial_path(SHA)
        partial.parent.mkdir(parents=True)
        partial.write_bytes(BLOB)  # interrupted after the last byte, before the install
        server = FileServer({"blob": BLOB})
        seen: list[tuple[int, int | None]] = []
        async with server.running(), httpx.AsyncClient() as client:
            path = await cache.download(
                client, f"{server.url}/blob", SHA, len(BLOB), progress=lambda *a: seen.append(a)
            )
            assert path.read_bytes() == BLOB and not partial.exists()
            assert server.ranges_seen == [f"bytes={len(BLOB)}-"]
            assert seen == [(len(BLOB), len(BLOB))]
            # A complete partial file with the wrong bytes is still refused, and discarded.
            other = hashlib.sha256(b"y" * len(BLOB)).hexdigest()
            cache.partial_path(other).write_bytes(b"z" * len(BLOB))
            server.blobs["other"] = b"y" * len(BLOB)
            with pytest.raises(AssetError, match="does not match its sha256"):
                await cache.download(client, f"{server.url}/other", other, len(BLOB))
            assert not cache.partial_path(other).exists() and not cache.has(other)

    asyncio.run(scenario())


def test_collect_leaves_foreign_files_alone(tmp_path: Path) -> None:
    cache = AssetCache(tmp_path, max_bytes=0)
    sha = cache.put(os.urandom(1000))
    partial_sha = hashlib.sha256(b"partial").hexdigest()
    cache.partial_path(partial_sha).parent.mkdir()
    cache.partial_path(partial_sha).write_bytes(b"part")
    damaged = cache.path_of(sha).with_name(f"{sha}.damaged")
    damaged.write_bytes(b"rot")
    foreign = [
        tmp_path / "myapp" / "firmware.bin",
        tmp_path / "readme.txt",
        tmp_path / sha[:2] / "notes.txt",  # a two-hex-digit folder, but not an asset name
        tmp_path / sha[:2] / ("0" * 64 if sha[:2] != "00" else "1" * 64),  # sha256 in the wrong folder
        tmp_path / "partial" / "download.bin",
        tmp_path / "ab" / ".notes.tmp",  # a temporary file, but not one of the cache's
        tmp_path / "myapp" / f".{sha}.1.abcd.tmp",  # the cache's temp name, outside its folders
    ]
    for path in foreign:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not an asset")
    stale_temp = cache.path_of(sha).with_name(f".{sha}.1234.0badcafe.tmp")
    fresh_temp = cache.path_of(sha).with_name(f".{sha}.1234.12345678.tmp")
    stale_temp.write_bytes(b"x" * 10)
    fresh_temp.write_bytes(b"x" * 20)
    long_ago = time.time() - GRACE_SECONDS - 10
    for path in [cache.path_of(sha), cache.partial_path(partial_sha), stale_temp, *foreign]:
        os.utime(path, (long_ago, long_ago))

    report = cache.collect([])
    assert sorted(report.deleted) == sorted([sha, sha, partial_sha])  # the asset, its .damaged, the partial
    assert report.freed_bytes == 1000 + 3 + 4 + 10
    assert not cache.has(sha) and not damaged.exists() and not cache.partial_path(partial_sha).exists()
    assert not stale_temp.exists() and fresh_temp.exists()  # a write may still be under way
    assert all(path.read_bytes() == b"not an asset" for path in foreign)
