"""A front worker's link to its primary (fleet/workers/upstream.py): against a server that drops a
keep-alive connection instead of answering its second request, as a server closing an idle
connection just when a request arrives does; against Hypercorn answering a request before reading
its body; against a server resetting an idle connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from picofleet.common.http.server import bind_unix_socket, serve_app, unix_address
from picofleet.fleet.workers.upstream import ONE_WRITE_BYTES, Upstream, UpstreamError
from tests.helpers.wait import until

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


class EarlyAnswers:
    """A primary's application: a ``PUT`` is answered 400 at once, its body never read (as the
    fleet API refuses a bad variable name); a ``POST`` is answered 200 once its body was read."""

    def __init__(self) -> None:
        self.answered = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "POST":
            while (await receive()).get("more_body"):
                pass
        self.answered += 1
        status = 200 if scope["method"] == "POST" else 400
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no"})


async def late_body(data: bytes, turns: int = 20) -> AsyncIterator[bytes]:
    """``data`` after the event loop ran ``turns`` times: a client's body arriving after its head."""
    for _ in range(turns):
        await asyncio.sleep(0)
    yield data


@contextlib.asynccontextmanager
async def hypercorn_primary() -> AsyncIterator[tuple[Upstream, EarlyAnswers, list[int]]]:
    """:class:`EarlyAnswers` served by Hypercorn (as the primary is) on an abstract Unix socket; an
    upstream to it, and the list its connections are counted in."""
    spec = f"@picofleet-test-early-{os.getpid()}-{id(asyncio.get_running_loop())}"
    app, stop = EarlyAnswers(), asyncio.Event()
    server = asyncio.create_task(serve_app(app, bind_unix_socket(spec), stop.wait))
    upstream, opened = Upstream(unix_address(spec)), [0]
    open_connection = upstream._open

    async def counted() -> Any:
        opened[0] += 1
        return await open_connection()

    upstream._open = counted  # type: ignore[method-assign]
    try:
        yield upstream, app, opened
    finally:
        upstream.close()
        stop.set()
        await server


async def status_of(upstream: Upstream, method: str, body: AsyncIterator[bytes], length: int) -> int:
    headers = [(b"host", b"primary"), (b"content-length", str(length).encode())]
    async with upstream.request(method, b"/v1/fleets/f/env/lower", headers, body) as response:
        await response.read()
        return response.status


def test_a_body_the_primary_answers_without_reading_leaves_the_connection_usable() -> None:
    """The cause of a flaky 503 through a front worker: Hypercorn closes a connection whose handler
    answered before the request body arrived, and the next PUT written into it met a reset."""

    async def scenario() -> None:
        async with hypercorn_primary() as (upstream, app, opened):
            for _ in range(3):
                assert await status_of(upstream, "PUT", late_body(b'{"value": "x"}'), 14) == 400
            assert (app.answered, opened[0]) == (3, 1)  # one connection, kept and reused

    asyncio.run(scenario())


def test_a_streamed_body_is_answered_and_its_connection_not_reused() -> None:
    async def scenario() -> None:
        async with hypercorn_primary() as (upstream, app, opened):
            large = ONE_WRITE_BYTES + 1
            assert await status_of(upstream, "POST", late_body(b"x" * large), large) == 200
            assert await status_of(upstream, "PUT", late_body(b"{}"), 2) == 400
            assert (app.answered, opened[0]) == (2, 2)

    asyncio.run(scenario())


class ResettingServer:
    """Reads a request's head byte by byte, answers, and closes the connection with the body unread,
    which resets it (as Hypercorn does when it answered before reading a request's body)."""

    def __init__(self) -> None:
        self.address = unix_address(f"@picofleet-test-reset-{os.getpid()}-{id(self)}")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen()
        self.listener.setblocking(False)
        self.connections = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(self.listener)
            self.connections += 1
            with connection:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += await loop.sock_recv(connection, 1)
                await loop.sock_sendall(connection, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_a_connection_reset_while_idle_is_not_reused() -> None:
    async def scenario() -> None:
        server = ResettingServer()
        serving = asyncio.create_task(server.serve())
        upstream = Upstream(server.address)
        try:
            assert await fetch(upstream, "PUT", b"report") == b"ok"
            (idle,) = upstream._idle
            await until(lambda: idle.reader.exception() is not None, 5, "the reset seen")
            assert await fetch(upstream, "PUT", b"report") == b"ok"  # on a fresh connection
            assert server.connections == 2
        finally:
            upstream.close()
            serving.cancel()
            server.listener.close()

    asyncio.run(scenario())
