"""The routes front workers of ``--workers N`` call on the primary (admin token): the change feed
and the gateways they answered from their cache (:mod:`picofleet.fleet.workers.front_worker`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body
from picofleet.fleet.http.auth import require_admin
from picofleet.fleet.http.context import FleetService, service_of
from picofleet.fleet.http.gateway_api import SHA256
from picofleet.fleet.store import now_iso

__all__ = ["change_feed", "gateways_seen"]

FEED_HEARTBEAT_S = 10.0
"""An empty line on the change feed after this long without a change (keeps idle links honest)."""
MAX_SEEN_BATCH = 100_000
MAX_SEEN_BODY = MAX_SEEN_BATCH * 72 + 64
"""The largest ``seen`` body accepted: MAX_SEEN_BATCH quoted keys and their separators."""


async def change_feed(request: Request) -> StreamingResponse:
    """``GET /v1/internal/changes`` (admin): a stream of lines ``{"generation": N}``, one now and
    one after each change that can move a target (an empty line every 10 s without one)."""
    require_admin(request)
    return StreamingResponse(_generations(service_of(request)), media_type="application/x-ndjson")


async def _generations(service: FleetService) -> AsyncIterator[bytes]:
    sent = None
    while not service.closing:
        changed = service.next_generation()  # taken before reading: no change is missed
        if service.generation != sent:
            sent = service.generation
            yield f'{{"generation": {sent}}}\n'.encode()
        try:
            await asyncio.wait_for(changed.wait(), FEED_HEARTBEAT_S)
        except TimeoutError:
            yield b"\n"


async def gateways_seen(request: Request) -> JSONResponse:
    """``POST /v1/internal/seen {"keys": [sha256 of a gateway key, ...]}`` (admin): gateways a
    front worker answered from its cache, noted as seen now; 200 ``{"known": N}``."""
    require_admin(request)
    body = await json_body(request, MAX_SEEN_BODY)
    keys = body.get("keys") if isinstance(body, dict) else None
    if (
        not isinstance(keys, list)
        or len(keys) > MAX_SEEN_BATCH
        or not all(isinstance(k, str) and SHA256.fullmatch(k) for k in keys)
    ):
        raise ApiError(
            400, f'the body must be JSON: {{"keys": [sha256 hex, ...]}} (at most {MAX_SEEN_BATCH})'
        )
    return JSONResponse({"known": service_of(request).seen_by_key_hash(keys, now_iso())})
