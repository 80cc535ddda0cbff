"""A front worker of ``picofleet fleet serve --workers N``: answers gateways' target-state checks
from a cache and forwards every other request to the primary.

**Why.** One Hypercorn process answers about 2,000 requests a second on one core, and the fleet
database has exactly one writer. With ``--workers N`` the service process (the *primary*: the
database, git, assets, board logs) starts N-1 front workers; each of the N processes binds the
public port with ``SO_REUSEPORT``, so the kernel spreads connections over all of them, and the
commonest request of a large fleet — a gateway asking whether its target changed — is answered by
whichever process the gateway reached, with no database and no hop.

**What a front worker does.**

* ``GET /v1/gateway/state`` without a query: answered from its cache when it holds the gateway's
  current target (304 when ``If-None-Match`` names the ETag, else 200 with the document), exactly
  as the primary answers; otherwise forwarded, and the primary's answer cached.
* Everything else (operators, provisioning, reports, logs, assets, ``git push``, long polls with
  ``?wait=N``) is forwarded to the primary over its Unix socket, streamed both ways, with the
  client's address as ``X-Picofleet-Client`` (any such header of the client's is dropped): the
  primary throttles wrong admin tokens per client address, and sees no peer address on its socket.
  An event stream (``text/event-stream``, which never ends by itself) is relayed until its reader
  disconnects, or does not take a write for :data:`STREAM_WRITE_TIMEOUT` seconds (as the primary's
  own rule); the upstream connection is closed then, so the primary ends the stream too.
* It follows the primary's change feed (``GET /v1/internal/changes``). A cached answer carries the
  primary's generation (``X-Picofleet-Generation``, read before the target was) and is used only
  while that is the feed's current generation: any change that can move a target empties the cache.
  With the feed down nothing is answered from the cache. A change reaches the workers one feed line
  later (a Unix-socket write); for that long a worker can still answer 304 to a plain poll.
* Every second it tells the primary which gateways it answered (``POST /v1/internal/seen``), so
  ``last_seen`` stays right.
* It exits when the primary that started it is gone (``--parent-pid``).

If the primary is down a forwarded request gets 503 with a message and ``Retry-After``.

The primary's Unix socket offers nothing the public port does not: requests arriving on it are
authenticated like any other (the internal routes need the admin token), so an abstract socket,
which file permissions cannot guard, is no new way in.

``python -m picofleet.fleet.workers.front_worker --primary @NAME --host H --port P [--parent-pid PID]``
runs one (the admin token comes from ``PICOFLEET_ADMIN_TOKEN``); ``@NAME`` is a socket in Linux's
abstract namespace, anything else a path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from picofleet.common.errors import ConfigError
from picofleet.common.http.server import bind_socket, serve_app, stop_on_signals, unix_address
from picofleet.common.web.pages import CLIENT_HEADER
from picofleet.fleet.service import TOKEN_ENV
from picofleet.fleet.state_checks import GENERATION_FIELD, plain_check, send_target
from picofleet.fleet.workers.upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["FrontWorker", "TargetCache", "main"]

log = logging.getLogger("picofleet.fleet.worker")

SEEN_INTERVAL_S = 1.0
FEED_READ_TIMEOUT_S = 30.0
"""The feed sends a line at least every 10 s; silence this long means the link is dead."""
RECONNECT_MAX_S = 2.0
PARENT_CHECK_S = 1.0
STREAM_WRITE_TIMEOUT = 30.0
"""Seconds an event stream's write to its reader may block before the reader is dropped."""
SERVER_SET = frozenset({"date", "server"})
"""Response headers Hypercorn sets itself (forwarded, they would appear twice)."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
"""Headers that belong to one connection, never forwarded (``expect``: Hypercorn answers 100-continue)."""
NOT_FORWARDED_BACK = HOP_BY_HOP | SERVER_SET
NOT_FORWARDED = HOP_BY_HOP | {CLIENT_HEADER.lower()}
"""Request headers not forwarded: a client's own ``X-Picofleet-Client`` is replaced by its address."""
CLIENT_FIELD = CLIENT_HEADER.lower().encode()


class ClientGone(Exception):
    """The client disconnected while its request body was being forwarded, or while an event stream
    was relayed to it (the upstream exchange is abandoned, its connection closed)."""


class TargetCache:
    """Target-state answers by the sha256 of the gateway's key, valid for one generation of the
    primary's change counter; ``generation is None`` (no feed) means nothing is valid."""

    def __init__(self) -> None:
        self.generation: int | None = None
        self._answers: dict[str, tuple[str, bytes | None]] = {}

    def set_generation(self, generation: int | None) -> None:
        """The feed's current generation (``None``: the feed is down); a change empties the cache."""
        if generation != self.generation:
            self._answers.clear()
            self.generation = generation

    def get(self, digest: str) -> tuple[str, bytes | None] | None:
        """``(etag, document or None if only a 304 was seen)`` for a gateway, if current."""
        return self._answers.get(digest)

    def put(self, digest: str, generation: int, etag: str, document: bytes | None) -> None:
        """Keep the primary's answer if it is of the current generation (an older one is stale; a
        newer one means the feed line is still on its way)."""
        if self.generation is None or generation != self.generation:
            return
        known = self._answers.get(digest)
        if document is None and known is not None and known[0] == etag:
            document = known[1]
        self._answers[digest] = (etag, document)

    def __len__(self) -> int:
        return len(self._answers)


class FrontWorker:
    """The ASGI application of a front worker (see the module docstring)."""

    def __init__(
        self, primary: str, admin_token: str, stop: asyncio.Event, parent_pid: int | None = None
    ) -> None:
        self.admin_token = admin_token
        self.parent_pid = parent_pid
        self.cache = TargetCache()
        self.stop = stop
        """Set to stop serving (by SIGINT/SIGTERM, or when the parent is gone)."""
        self._seen: set[str] = set()
        self.answered = self.forwarded = 0
        """Requests answered from the cache, and forwarded to the primary."""
        self._tasks: list[asyncio.Task[None]] = []
        self.upstream = Upstream(unix_address(primary))
        """Forwarded requests have no time limit: long polls (60 s) and pushes (answered once the
        release is stored) take their time; connecting to the primary is bounded."""

    # -- background: change feed, seen gateways, parent ---------------------------------------------

    def start(self) -> None:
        """Start following the feed, reporting seen gateways and watching the parent."""
        for job in (self._follow_feed, self._every_second, self._watch_parent):
            self._tasks.append(asyncio.create_task(job(), name=job.__name__))

    async def close(self) -> None:
        """Stop the background work, report the last seen gateways, close the upstream client."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(UpstreamError, TimeoutError):
            await asyncio.wait_for(self._flush_seen(), 2.0)
        self.upstream.close()
        log.info("stopping: answered %d requests from the cache, forwarded %d", self.answered, self.forwarded)

    def _admin(self, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
        return [
            (b"host", b"primary"),
            (b"authorization", f"Bearer {self.admin_token}".encode()),
            *(extra or []),
        ]

    async def _follow_feed(self) -> None:
        delay = 0.05
        while True:
            try:
                async with self.upstream.request("GET", b"/v1/internal/changes", self._admin()) as response:
                    if response.status != 200:
                        raise ValueError(f"the change feed answered {response.status}")
                    delay = 0.05
                    pending = b""
                    chunks = response.body()
                    while True:
                        chunk = await asyncio.wait_for(anext(chunks, None), FEED_READ_TIMEOUT_S)
                        if chunk is None:
                            raise ValueError("the change feed ended")
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            if line.strip():
                                self.cache.set_generation(int(json.loads(line)["generation"]))
            except Exception as error:  # whatever broke the feed, a cached answer is no longer known current
                if self.cache.generation is not None:
                    log.warning("lost the primary's change feed (%s); forwarding everything", error)
                self.cache.set_generation(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _flush_seen(self) -> None:
        if not self._seen:
            return
        keys, self._seen = sorted(self._seen), set()
        body = json.dumps({"keys": keys}).encode()
        headers = self._admin(
            [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        )

        async def content() -> AsyncIterator[bytes]:
            yield body

        async with self.upstream.request("POST", b"/v1/internal/seen", headers, content()) as response:
            await response.read()

    async def _every_second(self) -> None:
        """Report the gateways answered from the cache; close idle upstream connections gone stale."""
        while True:
            await asyncio.sleep(SEEN_INTERVAL_S)
            self.upstream.prune()
            try:
                await self._flush_seen()
            except Exception as error:  # next second, next try: last_seen is diagnostics
                log.debug("could not report seen gateways: %s", error)

    async def _watch_parent(self) -> None:
        if self.parent_pid is None:
            return
        while os.getppid() == self.parent_pid:
            await asyncio.sleep(PARENT_CHECK_S)
        log.warning("the primary (pid %d) is gone; stopping", self.parent_pid)
        self.stop.set()

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # the fleet API has no websockets
        check = plain_check(scope)
        if check is not None and await self._answer_from_cache(*check, send):
            return
        await self._forward(scope, receive, send, check[0] if check else None)

    async def _answer_from_cache(self, digest: str, if_none_match: str | None, send: Send) -> bool:
        cached = self.cache.get(digest)
        if cached is None or self.cache.generation is None:
            return False
        if not await send_target(send, *cached, if_none_match, self.cache.generation):
            return False
        self._seen.add(digest)
        self.answered += 1
        return True

    async def _forward(self, scope: Scope, receive: Receive, send: Send, digest: str | None) -> None:
        self.forwarded += 1
        headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in NOT_FORWARDED]
        if scope.get("client"):  # who the primary's throttle of wrong admin tokens counts (not this worker)
            headers.append((CLIENT_FIELD, str(scope["client"][0]).encode("latin-1")))
        has_body = any(
            (k == b"content-length" and v.strip() != b"0") or k == b"transfer-encoding"
            for k, v in scope["headers"]
        )
        query = scope["query_string"]
        target = (scope.get("raw_path") or scope["path"].encode()) + (b"?" + query if query else b"")
        body = _request_body(receive) if has_body else None
        started = False
        try:
            async with self.upstream.request(scope["method"], target, headers, body) as response:
                out = [(k, v) for k, v in response.headers if k.decode("latin-1") not in NOT_FORWARDED_BACK]
                started = True
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                if body is None and (response.header(b"content-type") or "").startswith("text/event-stream"):
                    await _relay_stream(response, receive, send)
                    return
                kept: list[bytes] = []  # a target-state answer is kept for the cache as it goes by
                async for chunk in response.body():
                    if digest is not None:
                        kept.append(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                if digest is not None and response.status in (200, 304):
                    self._remember(digest, response, b"".join(kept) if response.status == 200 else None)
        except ClientGone:
            log.debug("the client of %s %s went away during its request body", scope["method"], scope["path"])
        except UpstreamError as error:
            log.warning("forwarding %s %s failed: %s", scope["method"], scope["path"], error)
            if not started:
                message = f"the fleet service's primary process is not answering ({error}); try again"
                refusal = JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})
                await refusal(scope, receive, send)

    def _remember(self, digest: str, response: UpstreamResponse, document: bytes | None) -> None:
        etag, generation = response.header(b"etag"), response.header(GENERATION_FIELD)
        if etag and generation and generation.isdigit():
            self.cache.put(digest, int(generation), etag, document)


async def _relay_stream(response: UpstreamResponse, receive: Receive, send: Send) -> None:
    """Relay an event stream's body until it ends, or raise :class:`ClientGone` as soon as its
    reader disconnects (a stream only ends from the primary's side, so it would be relayed into a
    closed connection forever otherwise)."""

    async def relay() -> None:
        async for chunk in response.body():
            message = {"type": "http.response.body", "body": chunk, "more_body": True}
            await asyncio.wait_for(send(message), STREAM_WRITE_TIMEOUT)
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relaying, watching = asyncio.create_task(relay()), asyncio.create_task(disconnected())
    try:
        await asyncio.wait({relaying, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relaying, watching):
            task.cancel()
        await asyncio.gather(relaying, watching, return_exceptions=True)
    if relaying.cancelled():  # the reader left first
        raise ClientGone
    try:
        relaying.result()  # the primary's error, if any
    except TimeoutError:  # a reader that does not read: dropped
        raise ClientGone from None


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The client's request body as it arrives; a client that goes away aborts the upstream request."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body"):
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def run_worker(primary: str, host: str, port: int, admin_token: str, parent_pid: int | None) -> None:
    """Serve a front worker on ``host:port`` (``SO_REUSEPORT``) until SIGINT/SIGTERM or the parent is gone."""
    sock = bind_socket(host, port, reuse_port=True)
    worker = FrontWorker(primary, admin_token, stop_on_signals(), parent_pid)
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"picofleet fleet worker {os.getpid()} listening on http://{bound_host}:{bound_port}", flush=True)
    worker.start()
    try:
        await serve_app(worker, sock, worker.stop.wait)
    finally:
        await worker.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m picofleet.fleet.workers.front_worker``: one front worker (started by ``--workers N``)."""
    parser = argparse.ArgumentParser(
        prog="python -m picofleet.fleet.workers.front_worker", description=__doc__
    )
    parser.add_argument(
        "--primary", required=True, help="the primary's Unix socket: @NAME (abstract) or a path"
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, help="stop when this process is no longer the parent")
    parser.add_argument("--log-level", default=os.environ.get("ENM_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)-7s %(name)s[{os.getpid()}]: %(message)s",
    )
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        print(f"picofleet fleet worker: {TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_worker(args.primary, args.host, args.port, token, args.parent_pid))
    except ConfigError as error:
        print(f"picofleet fleet worker: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
