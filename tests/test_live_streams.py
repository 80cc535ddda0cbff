"""The live streams' plumbing: a change hub coalesces what a slow watcher missed, and an event
stream served by Hypercorn on loopback heartbeats, ends when its source ends, and drops a client
that stops reading without holding more than its socket buffers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import httpx

from picofleet.common.changes import ChangeHub
from picofleet.common.http.server import bind_socket, serve_app
from picofleet.common.web.sse import EventStream, format_event


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_a_watcher_that_falls_behind_sees_each_key_once() -> None:
    async def main() -> None:
        hub: ChangeHub[str] = ChangeHub()
        with hub.subscribe() as changes:
            for step in range(10_000):
                hub.publish(f"device:{step % 3}")
            assert changes.pending() == 3
            assert await changes.wait(0.1) == {"device:0", "device:1", "device:2"}
            assert await changes.wait(0.05) == set()
        assert hub.subscribers == 0

    run(main())


def test_a_waiting_watcher_wakes_on_a_publish() -> None:
    async def main() -> None:
        hub: ChangeHub[str] = ChangeHub()
        with hub.subscribe() as changes:
            waiter = asyncio.create_task(changes.wait(5))
            await asyncio.sleep(0)
            hub.publish("status")
            assert await asyncio.wait_for(waiter, 1) == {"status"}

    run(main())


def test_event_data_cannot_break_out_of_its_event() -> None:
    chunk = format_event("device", {"Name": "evil\n\nevent: status\ndata: {}"})
    assert chunk.count(b"\n\n") == 1 and chunk.endswith(b"\n\n")
    assert json.loads(chunk.split(b"data: ", 1)[1]) == {"Name": "evil\n\nevent: status\ndata: {}"}


async def _serve(app, sock: socket.socket, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    await serve_app(app, sock, stop.wait)


def test_a_stream_heartbeats_and_ends_with_its_source() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield format_event("hello", {"n": 1})
        await asyncio.sleep(0.6)
        yield format_event("bye", {"n": 2})

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":  # not Hypercorn's lifespan call
            await EventStream(source(), heartbeat_s=0.2)(scope, receive, send)

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        stop = asyncio.Event()
        port = sock.getsockname()[1]
        server = asyncio.create_task(_serve(app, sock, stop))
        try:
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("GET", f"http://127.0.0.1:{port}/") as response,
            ):
                assert response.headers["content-type"].startswith("text/event-stream")
                body = b"".join([chunk async for chunk in response.aiter_bytes()])
            assert body.startswith(b"event: hello\n")
            assert b": keep-alive\n\n" in body
            assert body.endswith(b'event: bye\ndata: {"n":2}\n\n')
        finally:
            stop.set()
            await server

    run(main())


def test_a_stream_ends_cleanly_at_its_deadline_quiet_or_busy() -> None:
    closed: list[str] = []

    async def quiet() -> AsyncIterator[bytes]:
        try:
            yield format_event("hello", {"n": 1})
            await asyncio.sleep(3600)
        finally:
            closed.append("quiet")

    async def busy() -> AsyncIterator[bytes]:
        try:
            while True:
                yield format_event("tick", {})
                await asyncio.sleep(0.01)
        finally:
            closed.append("busy")

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":  # not Hypercorn's lifespan call
            source = quiet() if scope["path"] == "/quiet" else busy()
            await EventStream(source, heartbeat_s=0.2, deadline=time.monotonic() + 0.8)(scope, receive, send)

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        stop = asyncio.Event()
        port = sock.getsockname()[1]
        server = asyncio.create_task(_serve(app, sock, stop))
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                for path in ("/quiet", "/busy"):
                    started = time.monotonic()
                    async with client.stream("GET", f"http://127.0.0.1:{port}{path}") as response:
                        body = b"".join([chunk async for chunk in response.aiter_bytes()])
                    lasted = time.monotonic() - started
                    assert 0.6 < lasted < 3.0, f"{path}: ended after {lasted:.2f} s"
                    assert body.startswith(b"event: ")
                    assert (b": keep-alive\n\n" in body) == (path == "/quiet")
                    assert body.endswith(b"\n\n")  # whole events only
            for _ in range(100):
                if len(closed) == 2:
                    break
                await asyncio.sleep(0.02)
            assert sorted(closed) == ["busy", "quiet"], "each source was closed"
        finally:
            stop.set()
            await server

    run(main())


def test_a_client_that_never_reads_is_dropped_and_its_source_closed() -> None:
    state = {"closed": False, "produced": 0}

    async def source() -> AsyncIterator[bytes]:
        while True:  # an endless firehose: only the stream's write timeout can end it
            state["produced"] += 1
            yield format_event("logs", {"line": "x" * 4000})

    def on_close() -> None:
        state["closed"] = True

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":  # not Hypercorn's lifespan call
            await EventStream(source(), write_timeout_s=0.5, on_close=on_close)(scope, receive, send)

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        stop = asyncio.Event()
        port = sock.getsockname()[1]
        server = asyncio.create_task(_serve(app, sock, stop))
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await asyncio.get_running_loop().sock_connect(reader, ("127.0.0.1", port))
            reader.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read a byte
            deadline = asyncio.get_running_loop().time() + 10
            while not state["closed"]:
                assert asyncio.get_running_loop().time() < deadline, "the stalled client was not dropped"
                await asyncio.sleep(0.05)
            produced = state["produced"]
            await asyncio.sleep(0.3)
            assert state["produced"] == produced, "the source kept producing for a dropped client"
            assert produced < 2_000, f"{produced} events were produced for a client that read none"
        finally:
            reader.close()
            stop.set()
            await server

    run(main())
