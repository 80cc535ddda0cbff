"""Server-Sent Events: the live streams both services serve (``text/event-stream``).

Why SSE rather than a websocket: the streams only flow one way (service → reader), a browser's
``EventSource`` reconnects by itself, and ``curl -N`` can read them; actions stay plain HTTP
requests. The format is the WHATWG one: ``event: NAME`` and ``data: JSON`` lines, a blank line
after each event, and ``: comment`` lines as heartbeats.

:class:`EventStream` is an ASGI response that copies an async iterator of ready-made events to the
client with four rules that keep a service safe from its readers:

* a heartbeat comment when the source has been quiet for ``heartbeat_s`` (proxies and readers see a
  live link, and a vanished client is noticed at the next write);
* the client's disconnect ends the stream at once (the source is closed, its ``finally`` runs);
* a write that blocks longer than ``write_timeout_s`` — a client that stopped reading, whose socket
  buffers are full — ends the stream: the source is closed, nothing more is produced for that
  client, and what it leaves behind is bounded by the socket buffers;
* past its ``deadline`` (a :func:`time.monotonic` value, if given) the response ends cleanly (the
  last chunk sent, the source closed): a stream whose reader's credentials expire (a session
  cookie) ends with them, and the reader's reconnection is authenticated afresh.

The source runs in its own task and hands events over through a one-slot queue, so a slow client
slows its own source (which, built on :class:`~picofleet.common.changes.ChangeHub`, coalesces
instead of queueing) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

__all__ = ["EventStream", "format_event"]

log = logging.getLogger("picofleet.events")

KEEP_ALIVE = b": keep-alive\n\n"
_END = object()


def format_event(event: str, data: Any) -> bytes:
    """One event: ``event: NAME`` and its data as one line of compact JSON (JSON escapes newlines,
    so a value can never end the event early or inject another one)."""
    if "\n" in event or "\r" in event:
        raise ValueError("an event name is one line")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class EventStream:
    """An ASGI response streaming ``source``'s events (see the module docstring)."""

    def __init__(
        self,
        source: AsyncIterator[bytes],
        *,
        heartbeat_s: float = 15.0,
        write_timeout_s: float = 30.0,
        on_close: Callable[[], None] | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.source = source
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.on_close = on_close
        self.deadline = deadline
        """When the response ends (a :func:`time.monotonic` value), or ``None``: when the source
        or the reader ends it."""
        self.headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-store",
            "x-accel-buffering": "no",  # nginx and friends: do not buffer the stream
            **(headers or {}),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        disconnected = asyncio.Event()
        producer = asyncio.create_task(self._produce(queue))
        watcher = asyncio.create_task(self._watch_disconnect(receive, disconnected))
        try:
            await self._write(
                send,
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
                },
            )
            await self._write(send, {"type": "http.response.body", "body": b"", "more_body": True})
            await self._pump(queue, disconnected, send)
        except (TimeoutError, OSError):
            pass  # a client that does not read, or is gone: dropped
        finally:
            for task in (producer, watcher):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if self.on_close is not None:
                self.on_close()

    async def _produce(self, queue: asyncio.Queue[object]) -> None:
        try:
            try:
                async for chunk in self.source:
                    await queue.put(chunk)
            except Exception:
                log.exception("an event stream's source failed; the stream ends")
            await queue.put(_END)
        finally:
            aclose = getattr(self.source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    @staticmethod
    async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    async def _pump(self, queue: asyncio.Queue[object], disconnected: asyncio.Event, send: Send) -> None:
        gone = asyncio.create_task(disconnected.wait())
        try:
            while not disconnected.is_set():
                wait_s = self.heartbeat_s
                if self.deadline is not None:
                    left = self.deadline - time.monotonic()
                    if left <= 0:
                        await self._end(send)
                        return
                    wait_s = min(wait_s, left)
                get = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({get, gone}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                    if gone in done:
                        return
                    if wait_s < self.heartbeat_s:
                        continue  # the deadline, not a quiet spell: ended at the top of the loop
                    await self._body(send, KEEP_ALIVE)
                    continue
                chunk = get.result()
                if chunk is _END:
                    await self._end(send)
                    return
                assert isinstance(chunk, bytes)
                await self._body(send, chunk)
        finally:
            gone.cancel()

    async def _end(self, send: Send) -> None:
        await self._write(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _body(self, send: Send, chunk: bytes) -> None:
        await self._write(send, {"type": "http.response.body", "body": chunk, "more_body": True})

    async def _write(self, send: Send, message: Message) -> None:
        await asyncio.wait_for(send(message), self.write_timeout_s)
