"""A front worker's HTTP/1.1 link to the primary over its Unix socket: h11 over asyncio streams.

Why not httpx: a front worker forwards every request it cannot answer, and with httpx each one
scanned the whole connection pool and retried a failing optional import (``sniffio``), which cost
more than serving the request. Here a forwarded request takes the most recently idle connection
(or opens one: a Unix socket connect is cheap), and the connection goes back only when both sides
finished the exchange cleanly.

Idle connections older than :data:`IDLE_REUSE_S` are closed instead of reused: Hypercorn closes
keep-alive connections idle for 5 s, and a request written into a connection the primary is just
closing would be lost. A reused connection that fails before the response starts is retried once on
a fresh one if it is a ``GET`` or ``HEAD``.

**A request body goes out with its head, in one write.** Hypercorn keeps a connection only if it
had read the whole request by the time its handler answered; a handler that answers without
reading the body (a 400 for a bad variable name, a 404 for an unknown fleet) before the body
arrived makes Hypercorn close the connection just after the answer. The worker, having read a
complete answer, kept that connection, and the next request written into it met a reset: a ``PUT``
(not sent twice) then failed with 503. A body of at most :data:`ONE_WRITE_BYTES` is therefore
collected first and written together with the head, so Hypercorn parses the whole request before
its handler runs; a longer body is streamed, and its connection is not kept afterwards. A connection
the primary reset while it was idle is never reused (``at_eof()`` stays false after a reset).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

import h11

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse"]

CONNECT_TIMEOUT_S = 5.0
IDLE_REUSE_S = 3.0
"""Idle connections older than this are not reused (Hypercorn's keep-alive timeout is 5 s)."""
READ_SIZE = 65536
ONE_WRITE_BYTES = 16384
"""A request whose body is at most this long is written in one piece (the head with the body), well
under the 64 KiB Hypercorn reads at once and what a Unix socket queues as one buffer: the primary
reads and parses the whole request before its handler runs."""
SAFE_METHODS = frozenset({"GET", "HEAD"})
Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The primary could not be reached or broke the exchange."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        self.keep = True
        """False once a request body was streamed on it: the primary may have answered before reading
        all of it, and then it closes the connection (see the module docstring)."""

    async def send(self, *events: h11.Event) -> None:
        """Write ``events`` in one piece."""
        data = b"".join(self.protocol.send(event) or b"" for event in events)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next event from the primary, reading from the socket while h11 needs data."""
        while True:
            event = self.protocol.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return h11.PAUSED
            self.protocol.receive_data(await self.reader.read(READ_SIZE))  # h11.NEED_DATA

    def reusable(self) -> bool:
        return (
            self.keep
            and self.protocol.our_state is h11.IDLE
            and self.protocol.their_state is h11.IDLE
            and not self.reader.at_eof()
            and self.reader.exception() is None  # reset by the primary (then at_eof() stays false)
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < IDLE_REUSE_S
        )

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """The primary's answer: ``status``, ``headers`` (lower-case names), and the body to iterate."""

    def __init__(self, connection: _Connection, head: h11.Response) -> None:
        self._connection = connection
        self.status: int = head.status_code
        self.headers: Headers = [(bytes(name), bytes(value)) for name, value in head.headers]

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        return next((value.decode("latin-1") for key, value in self.headers if key == name), None)

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; :class:`UpstreamError` if the primary breaks it off."""
        while True:
            try:
                event = await self._connection.next_event()
            except (OSError, h11.ProtocolError) as error:
                raise UpstreamError(f"the primary broke off its answer: {error}") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise UpstreamError(f"the primary broke off its answer ({type(event).__name__})")

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.body()])


class Upstream:
    """Requests to the HTTP server on the Unix socket ``address`` (abstract when it starts with NUL)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._idle: collections.deque[_Connection] = collections.deque()
        """Oldest first: connections are appended as they become idle."""

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.address, limit=READ_SIZE), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as error:
            raise UpstreamError(f"cannot connect to the primary: {error}") from None
        return _Connection(reader, writer)

    def prune(self) -> None:
        """Close the idle connections too old to reuse (call now and then: after a burst of long
        polls they would otherwise wait, half closed by the primary, for the next burst)."""
        while self._idle and not self._idle[0].reusable():
            self._idle.popleft().close()

    def _reused(self) -> _Connection | None:
        self.prune()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, target: bytes, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> AsyncIterator[UpstreamResponse]:
        """Send a request (``target`` is the path and query; ``body`` streamed, chunked unless the
        headers give a ``content-length``) and yield the response once its head arrived. The
        connection is kept for reuse only if the body was read to the end and the request went out
        in one piece (see the module docstring)."""
        if body is not None and not any(name == b"content-length" for name, _ in headers):
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        connection, head = await self._send(method, target, headers, body)
        try:
            yield UpstreamResponse(connection, head)
        except BaseException:
            connection.close()
            raise
        # Both sides DONE: the answer was read to its end. Not so after "Connection: close" (h11
        # then says MUST_CLOSE; Hypercorn sends it on a connection's 1,000th answer).
        protocol = connection.protocol
        if connection.keep and protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def _send(
        self, method: str, target: bytes, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> tuple[_Connection, h11.Response]:
        """Send on the most recently idle connection, or a fresh one. A reused connection that fails
        before the answer starts is replaced by a fresh one for a ``GET`` or ``HEAD`` (safe to send
        twice, and no body of the client's was consumed)."""
        reused = self._reused()
        for connection in (reused, None):
            if connection is None:
                connection = await self._open()
            try:
                return connection, await self._exchange(connection, method, target, headers, body)
            except (OSError, h11.ProtocolError, UpstreamError) as error:
                connection.close()
                if connection is not reused or method not in SAFE_METHODS or body is not None:
                    raise UpstreamError(f"the primary did not answer: {error}") from None
            except BaseException:  # cancelled mid-exchange: the connection is in an unknown state
                connection.close()
                raise
        raise AssertionError("unreachable: the fresh connection either answers or raises")

    @staticmethod
    async def _exchange(
        connection: _Connection,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
    ) -> h11.Response:
        head = h11.Request(method=method, target=target, headers=headers)
        if body is None:
            await connection.send(head, h11.EndOfMessage())
        else:
            await Upstream._send_body(connection, head, body)
        while True:
            event = await connection.next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise UpstreamError(f"unexpected {type(event).__name__} instead of an answer")

    @staticmethod
    async def _send_body(connection: _Connection, head: h11.Request, body: AsyncIterator[bytes]) -> None:
        """The head with the whole body in one write if it is at most :data:`ONE_WRITE_BYTES`; else
        the head with what came so far, then the rest as it comes (and the connection is not kept)."""
        collected: list[bytes] = []
        size = 0
        async for chunk in body:
            collected.append(chunk)
            size += len(chunk)
            if size > ONE_WRITE_BYTES:
                break
        else:
            await connection.send(head, *(h11.Data(data=c) for c in collected if c), h11.EndOfMessage())
            return
        connection.keep = False
        await connection.send(head, *(h11.Data(data=c) for c in collected if c))
        async for chunk in body:
            if chunk:
                await connection.send(h11.Data(data=chunk))
        await connection.send(h11.EndOfMessage())

    def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().close()
