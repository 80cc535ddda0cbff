"""No more work for an HTTP/1.1 connection whose peer is gone: queued pipelined requests are dropped.

A client may send many requests at once (pipelining) and close without reading the answers.
Hypercorn's HTTP/1.1 protocol answers the queued requests one by one; when a write fails it closes
the current request's stream but then starts the next cycle anyway, so the application still runs
every queued request and writes every answer into the dead transport. asyncio logs each such write
after the fifth ("socket.send() raised exception."): 50 clients sending 200 requests each gave the
gateway 7,200 warnings and 80 MB more memory.

:func:`install` makes Hypercorn use :class:`StopWhenGone`: once a write to the connection failed,
nothing more is written to it and no further request of it reaches the application.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol

__all__ = ["StopWhenGone", "install"]


_writing: ContextVar[bool] = ContextVar("writing", default=False)
"""True while this task writes to the connection: a ``Closed`` it handles then is a failed write."""


class StopWhenGone(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, stopping at a failed write instead of starting the next
    pipelined request.

    Hypercorn's server answers a failed write by handing the protocol ``Closed`` from within the
    write, in the writing task; a ``Closed`` from elsewhere (the peer's EOF, an idle close) keeps
    Hypercorn's own handling, so a client that half-closes after its requests still reads every
    answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer_gone = False
        self._send_to_server = self.send
        self.send = self._send_unless_gone

    async def _send_unless_gone(self, event: Event) -> None:
        """Bytes for a connection that is gone are dropped; the rest (``Closed``, idle updates) pass."""
        if not isinstance(event, RawData):
            await self._send_to_server(event)
            return
        if self.peer_gone:
            return
        token = _writing.set(True)
        try:
            await self._send_to_server(event)
        finally:
            _writing.reset(token)

    async def handle(self, event: Event) -> None:
        """A ``Closed`` during a write marks the connection gone; data read after that is not parsed."""
        if isinstance(event, Closed) and _writing.get():
            self.peer_gone = True
        elif isinstance(event, RawData) and self.peer_gone:
            return
        await super().handle(event)

    async def _maybe_recycle(self) -> None:
        """After a request: the next pipelined one, unless the connection is gone."""
        if not self.peer_gone:
            await super()._maybe_recycle()
            return
        await self._close_stream()
        # The queued requests stay in the old h11 connection's buffer: a fresh one at its end of input
        # makes the protocol's event loop see the connection closed and return.
        self.connection = h11.Connection(h11.SERVER)
        self.connection.receive_data(b"")
        await self.can_read.set()
        await self._send_to_server(Closed())


def install() -> None:
    """Make Hypercorn serve HTTP/1.1 with :class:`StopWhenGone` (idempotent)."""
    hypercorn.protocol.H11Protocol = StopWhenGone  # type: ignore[misc]
