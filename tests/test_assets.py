"""The asset cache: verified reads, resumable downloads, garbage collection within a bound."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.assets import GRACE_SECONDS, AssetCache, AssetError
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
