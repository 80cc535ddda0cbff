"""Plain target-state checks (``GET /v1/gateway/state`` without a query), answered before routing.

They are most of a large fleet's traffic: every gateway asking whether its target changed. The
primary (:class:`FleetService`'s cached targets) and each front worker (its cache, see
:mod:`.front_worker`) answer one they know the answer to here, with no framework in the way, and
exactly as the ``target_state`` endpoint would: ``304`` with the ``ETag`` when ``If-None-Match``
names it, else ``200`` with the document. Anything else goes on to the application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from picofleet.common.http.auth import bearer_token
from picofleet.fleet.store import key_hash
from picofleet.fleet.targets import etag_matches

__all__ = ["GENERATION_FIELD", "GENERATION_HEADER", "PlainChecks", "plain_check", "send_target"]

STATE_PATH = "/v1/gateway/state"
GENERATION_HEADER = "X-Picofleet-Generation"
"""On target-state answers: the primary's count of changes that can move a target."""
GENERATION_FIELD = GENERATION_HEADER.lower().encode()
"""The header's name as it appears in ASGI and h11 header lists."""

Answer = Callable[[str, "str | None", Send], Awaitable[bool]]
"""``answer(key_sha256, if_none_match, send)``: True once it answered, False if it cannot."""


def plain_check(scope: Scope) -> tuple[str, str | None] | None:
    """For a plain target-state check with a bearer key: ``(sha256 of the key, If-None-Match)``."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != STATE_PATH:
        return None
    if scope["query_string"]:
        return None  # ?wait=N: a long poll, the endpoint's job
    headers = Headers(raw=scope["headers"])
    token = bearer_token(headers)
    return (key_hash(token), headers.get("if-none-match")) if token else None


async def send_target(
    send: Send, etag: str, document: bytes | None, if_none_match: str | None, generation: int
) -> bool:
    """Answer as ``target_state`` does; False (nothing sent) when a 200 is due and ``document`` is
    not known."""
    headers = [(b"etag", etag.encode()), (GENERATION_FIELD, str(generation).encode())]
    if etag_matches(if_none_match, etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    if document is None:
        return False
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(document)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": document})
    return True


class PlainChecks:
    """ASGI wrapper: plain target-state checks ``answer`` can answer never reach ``app``."""

    def __init__(self, app: ASGIApp, answer: Answer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check = plain_check(scope)
        if check is not None and await self.answer(check[0], check[1], send):
            return
        await self.app(scope, receive, send)
