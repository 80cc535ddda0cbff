"""A front worker's link to its primary (fleet/workers/upstream.py) against a server that drops a
keep-alive connection instead of answering its second request, as a server closing an idle
connection just when a request arrives does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from picofleet.common.http.server import unix_address
from picofleet.fleet.workers.upstream import Upstream, UpstreamError

pytestmark = pytest.mark.timeout(30)


class OneShotServer:
    """Answers the first request of each connection (``200 ok``, keep-alive) and closes the
    connection, unanswered, at its second."""

    def __init__(self) -> None:
        self.address = unix_address(f"@picofleet-test-upstream-{os.getpid()}-{id(self)}")
        self.connections = 0
        self.answered = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        if b"content-length" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        self.answered += 1
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request on this connection: dropped
        writer.close()


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def fetch(upstream: Upstream, method: str = "GET", data: bytes | None = None) -> bytes:
    headers = [(b"host", b"primary")] + ([(b"content-length", str(len(data)).encode())] if data else [])
    async with upstream.request(method, b"/", headers, body(data) if data else None) as response:
        assert response.status == 200
        return await response.read()


def test_a_dropped_reused_connection_is_retried_only_for_a_get() -> None:
    asyncio.run(dropped_connections())


async def dropped_connections() -> None:
    server = OneShotServer()
    listening = await asyncio.start_unix_server(server.handle, server.address)
    upstream = Upstream(server.address)
    try:
        assert await fetch(upstream) == b"ok"  # a fresh connection, then kept for reuse
        assert await fetch(upstream) == b"ok"  # the kept one is dropped: sent again on a fresh one
        assert (server.connections, server.answered) == (2, 2)

        with pytest.raises(UpstreamError, match="did not answer"):
            await fetch(upstream, "PUT", b"report")  # not safe to send twice: an error, not a retry
        assert (server.connections, server.answered) == (2, 2)
        assert await fetch(upstream, "PUT", b"report") == b"ok"  # fresh connections still work
        assert (server.connections, server.answered) == (3, 3)  # the refused PUT opened none
    finally:
        upstream.close()
        listening.close()
        await listening.wait_closed()
