"""A real HTTP server on loopback serving blobs with Range support; it can cut a transfer short."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class FileServer:
    """Serves ``blobs[name]`` at /name; ``cut_after`` bytes into a response it drops the connection.

    A range starting at or past the end gets 416 (Range Not Satisfiable) and a small error page.
    """

    blobs: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None
    ranges_seen: list[str | None] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        async def blob(request: Request) -> Response:
            data = self.blobs[request.path_params["name"]]
            header = request.headers.get("range")
            self.ranges_seen.append(header)
            start, status = 0, 200
            if header and self.honour_range:
                start, status = int(header.removeprefix("bytes=").split("-")[0]), 206
                if start >= len(data):  # nothing left to send: 416, with an error page as real servers do
                    return Response(
                        b"<html>416 Range Not Satisfiable</html>",
                        status_code=416,
                        headers={"content-range": f"bytes */{len(data)}"},
                    )
            body = data[start:]

            async def chunks() -> AsyncIterator[bytes]:
                sent = 0
                for offset in range(0, len(body), 4096):
                    chunk = body[offset : offset + 4096]
                    if self.cut_after is not None and sent + len(chunk) > self.cut_after:
                        yield chunk[: self.cut_after - sent]
                        raise ConnectionError("cut short on purpose")
                    sent += len(chunk)
                    yield chunk

            headers = {"content-length": str(len(body))}
            if status == 206:
                headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return StreamingResponse(chunks(), status_code=status, headers=headers)

        return Starlette(routes=[Route("/{name}", blob)])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FileServer]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.errorlog = None
        stop = asyncio.Event()
        task = asyncio.create_task(serve(self.app(), config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            yield self
        finally:
            stop.set()
            await task
