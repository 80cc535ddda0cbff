"""The reservation endpoints and the event websocket of the gateway's API (docs/api.md).

``POST /v1/reservations`` reserves boards (201, minting the client's token for a new name),
``GET /v1/reservations[?name=]`` lists them (never a token), ``POST /v1/reservations/extend``
and ``POST /v1/reservations/end`` need the client's ``Authorization: Bearer <token>``.
``/v1/events`` is a websocket sending the client's events as JSON text messages; a plain ``GET``
of it (no upgrade) is answered 426 Upgrade Required.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from picofleet.common.http.auth import bearer_token
from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, json_object
from picofleet.gateway.evaluation.reservations import KINDS, Reservation, check_name
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.fields import serials_field

__all__ = ["ROUTES", "end", "events", "events_without_upgrade", "extend", "list_reservations", "reserve"]

MAX_COUNT = 1024
"""The most boards one request may reserve."""
GOING_AWAY = 1001
"""WebSocket close code when the gateway stops."""
POLICY_VIOLATION = 1008
"""WebSocket close code for a connection without a valid token."""


def _count(value: Any) -> int:
    """A request's ``count``: a whole number from 1 to MAX_COUNT (``3.0`` is one, as in JSON Schema)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ApiError(400, f"count must be a whole number between 1 and {MAX_COUNT}, not {value!r}")
    return value


def _listing(reservations: list[Reservation]) -> list[dict[str, Any]]:
    return [reservation.public() for reservation in reservations]


async def _body_of(request: Request) -> dict[str, Any]:
    """The request's JSON object, with a valid client ``name`` (else a 400)."""
    body = json_object(await json_body(request), "the request body")
    check_name(body.get("name"))
    return body


async def reserve(request: Request) -> Response:
    """Reserve boards: ``{"name", "kind"?, "count"? | "serials"?, "args"?, "seconds"?}``."""
    body = await _body_of(request)
    kind = body.get("kind", "pulsecount")
    if not isinstance(kind, str):
        raise ApiError(400, f"kind must be a string (known: {', '.join(KINDS)})")
    serials = serials_field(body.get("serials"))
    if serials is not None and body.get("count") is not None:
        raise ApiError(400, "give either count or serials, not both")
    count = _count(body["count"]) if body.get("count") is not None else None
    token, made = await gateway_of(request).reservations.reserve(
        body["name"],
        bearer_token(request.headers),
        kind,
        count=count,
        serials=serials,
        args=body.get("args"),
        seconds=body.get("seconds"),
    )
    return JSONResponse(
        {"name": body["name"], "token": token, "reservations": _listing(made)}, status_code=201
    )


async def list_reservations(request: Request) -> Response:
    """Every reservation, or ``?name=`` one client's (tokens are never shown)."""
    book = gateway_of(request).reservations
    name = request.query_params.get("name")
    reservations = book.of_client(name) if name is not None else book.all()
    return JSONResponse({"reservations": _listing(reservations)})


async def extend(request: Request) -> Response:
    """Extend reservations: ``{"name", "serials"?, "seconds"?}`` (Bearer token of the name)."""
    body = await _body_of(request)
    extended = await gateway_of(request).reservations.extend(
        body["name"],
        bearer_token(request.headers),
        serials_field(body.get("serials")),
        body.get("seconds"),
    )
    return JSONResponse({"name": body["name"], "reservations": _listing(extended)})


async def end(request: Request) -> Response:
    """End reservations: ``{"name", "serials"?}``, without serials all of the name's."""
    body = await _body_of(request)
    ended = await gateway_of(request).reservations.end(
        body["name"], bearer_token(request.headers), serials_field(body.get("serials"))
    )
    return JSONResponse({"name": body["name"], "ended": [reservation.serial for reservation in ended]})


async def events(websocket: WebSocket) -> None:
    """The client's events, one JSON text message each, starting with ``subscribed``."""
    book = gateway_of(websocket).reservations
    token = bearer_token(websocket.headers) or websocket.query_params.get("token")
    name = book.client_of(token)
    if name is None:
        await _refuse(websocket, "a valid client token is needed (Authorization: Bearer or ?token=)")
        return
    async with book.events.subscribe(name) as subscription:
        await websocket.accept()
        await websocket.send_json(
            {"event": "subscribed", "name": name, "reservations": _listing(book.of_client(name))}
        )
        closed = asyncio.ensure_future(_until_disconnect(websocket))
        try:
            while True:
                upcoming = asyncio.ensure_future(subscription.get())
                await asyncio.wait({upcoming, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed.done():
                    upcoming.cancel()
                    return
                event = upcoming.result()
                if event is None:  # the gateway stops
                    await websocket.close(code=GOING_AWAY)
                    return
                await websocket.send_json(event)
        except WebSocketDisconnect:
            return
        finally:
            closed.cancel()


async def events_without_upgrade(request: Request) -> Response:
    """A plain ``GET /v1/events``: 426, the events are a WebSocket (``Upgrade: websocket``)."""
    raise ApiError(
        426,
        "/v1/events is a WebSocket: connect with Upgrade: websocket and the client's token "
        "(Authorization: Bearer or ?token=)",
        {"Upgrade": "websocket"},
    )


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """Refuse a websocket before accepting it: HTTP 403 with a JSON error where the server can."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": reason}, status_code=403))
    else:
        await websocket.close(code=POLICY_VIOLATION, reason=reason)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


ROUTES: list[BaseRoute] = [
    Route("/v1/reservations", reserve, methods=["POST"]),
    Route("/v1/reservations", list_reservations, methods=["GET"]),
    Route("/v1/reservations/extend", extend, methods=["POST"]),
    Route("/v1/reservations/end", end, methods=["POST"]),
    WebSocketRoute("/v1/events", events),
    Route("/v1/events", events_without_upgrade, methods=["GET"]),
]
"""The reservation routes and the event websocket, for ``create_app``."""
