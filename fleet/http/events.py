"""``GET /v1/fleets/{name}/events``: a fleet's live events, as Server-Sent Events (docs/fleet-api.md,
"Live events"): what the dashboard renders, and what ``curl -N`` can follow.

Operator auth (the admin token or the dashboard's session cookie); 404 for an unknown fleet. Events:

* ``fleet`` — the whole view, ``{"fleet", "releases", "gateways"}`` as ``GET …/{name}``,
  ``…/releases`` and ``…/gateways`` answer them: first on connect, then after anything fleet-wide
  changed (a release recorded, a pin, a variable, a retry);
* ``gateway`` — one element of ``GET …/gateways``, after that gateway's report changed its boards
  or it was provisioned, and at most once a minute while it keeps calling (``last_seen``);
* ``logs`` — with ``?logs=UUID`` (one board) or ``?logs=*`` (every board): new log lines,
  ``{"board", "gateway", "lines", "dropped"}``.

``?boards=0`` leaves out ``fleet`` and ``gateway`` (a follower of logs only).

The stream is built on :attr:`FleetService.changes` (a coalescing
:class:`~picofleet.common.changes.ChangeHub`: a reader that falls behind gets the current state
once, never a backlog) and :attr:`FleetService.log_followers` (at most
:data:`~.context.FOLLOWER_LINES` lines pending per reader, the oldest dropped and counted), served
by :class:`~picofleet.common.web.sse.EventStream` (a heartbeat every 15 s; a reader whose socket
does not drain for 30 s is dropped). ``picofleet_fleet_event_streams`` counts the open streams.

A stream authenticated by the dashboard's session cookie (not by the admin token) ends when that
session expires: the browser's ``EventSource`` reconnects, is refused (401), and the page goes
back to the login form; an open page does not go on receiving the fleet after its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from picofleet.common.changes import Subscription
from picofleet.common.http.auth import bearer_token
from picofleet.common.http.errors import ApiError
from picofleet.common.web.sse import EventStream, format_event
from picofleet.fleet.http.auth import admin_fleet
from picofleet.fleet.http.context import LogFollower, fleet_key, gateway_key, service_of
from picofleet.fleet.http.fleets import fleet_json, gateways_json, releases_json

__all__ = ["fleet_events"]

MAX_BOARD_ID = 128
"""The longest board id ``?logs=`` takes (a reported LocalUUID is at most this long)."""
LOG_EVENT_LINES = 100
"""Lines per ``logs`` event at most (more come as several): what one write to a reader holds
stays small (at most ~0.5 MB), even where a reader that stopped reading leaves it in a buffer."""

Lines = list[tuple[str, dict[str, Any]]]


async def fleet_events(request: Request) -> EventStream:
    """``GET /v1/fleets/{name}/events[?logs=UUID|*][&boards=0]``: the fleet's live events (see the
    module docstring) as ``text/event-stream``; 401 without the admin token or a session, 404 for
    an unknown fleet, 400 for a bad query."""
    fleet = await admin_fleet(request)
    logs = request.query_params.get("logs")
    if logs is not None and not 1 <= len(logs) <= MAX_BOARD_ID:
        raise ApiError(400, f"logs: a board's LocalUUID (at most {MAX_BOARD_ID} characters) or *")
    boards = request.query_params.get("boards", "1")
    if boards not in ("0", "1"):
        raise ApiError(400, "boards: 1 (the default: fleet and gateway events) or 0 (log lines only)")
    service = service_of(request)
    service.metrics.event_streams.inc()
    source = _events(request, fleet["name"], boards == "1", None if logs == "*" else logs, logs is not None)
    return EventStream(source, on_close=service.metrics.event_streams.dec, deadline=_session_end(request))


def _session_end(request: Request) -> float | None:
    """When a stream authenticated by the session cookie ends (a :func:`time.monotonic` value: its
    session's expiry); ``None`` for one authenticated by the admin token (as :func:`.auth.is_admin`
    decides: a bearer token, when there is one, is what counts)."""
    if bearer_token(request.headers) is not None:
        return None
    remaining = service_of(request).sessions.remaining_s(request)
    return None if remaining is None else time.monotonic() + remaining


async def _events(
    request: Request, name: str, boards: bool, board: str | None, follow_logs: bool
) -> AsyncIterator[bytes]:
    """The stream's events: subscribed before the first view is read, so no change is missed."""
    service = service_of(request)
    with contextlib.ExitStack() as stack:
        changes = stack.enter_context(service.changes.subscribe()) if boards else None
        follower = stack.enter_context(service.log_followers.follow(name, board)) if follow_logs else None
        if changes is not None:
            view = await _fleet_view(request, name)
            if view is None:
                return
            yield format_event("fleet", view)
        while True:
            keys, lines, dropped = await _next(changes, follower)
            if fleet_key(name) in keys:  # the whole view holds every gateway too
                view = await _fleet_view(request, name)
                if view is None:
                    return
                yield format_event("fleet", view)
            else:
                gateways = {k.rsplit(":", 1)[1] for k in keys if k.startswith(gateway_key(name, ""))}
                fleet = await service.store.fleet(name) if gateways else None
                if fleet is not None:
                    for element in await gateways_json(request, fleet, only=gateways):
                        yield format_event("gateway", element)
            for event in _log_events(lines, dropped):
                yield event


async def _next(
    changes: Subscription[str] | None, follower: LogFollower | None
) -> tuple[set[str], Lines, int]:
    """Wait for what comes first: changed keys, or new log lines (and how many were dropped)."""
    if changes is None and follower is None:
        await asyncio.Event().wait()  # nothing to follow: only heartbeats, until the reader leaves
    if follower is None:
        assert changes is not None
        return await changes.wait(), [], 0
    if changes is None:
        return set(), *await follower.wait()
    keys_task = asyncio.create_task(changes.wait())
    lines_task = asyncio.create_task(follower.wait())
    try:
        await asyncio.wait({keys_task, lines_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (keys_task, lines_task):
            if not task.done():
                task.cancel()  # what it waited for stays pending for the next call
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    keys = keys_task.result() if not keys_task.cancelled() else set()
    lines, dropped = lines_task.result() if not lines_task.cancelled() else ([], 0)
    return keys, lines, dropped


async def _fleet_view(request: Request, name: str) -> dict[str, Any] | None:
    """The ``fleet`` event's data, or ``None`` when the fleet is gone."""
    fleet = await service_of(request).store.fleet(name)
    if fleet is None:
        return None
    return {
        "fleet": fleet_json(request, fleet),
        "releases": await releases_json(request, fleet),
        "gateways": await gateways_json(request, fleet),
    }


def _log_events(lines: Lines, dropped: int) -> list[bytes]:
    """``logs`` events of new lines, one per board and gateway (in the order they came; at most
    :data:`LOG_EVENT_LINES` lines each); the first carries how many lines this reader missed."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for board, line in lines:
        grouped.setdefault((board, str(line.get("gateway"))), []).append(line)
    events = []
    for (board, gateway), group in grouped.items():
        for start in range(0, len(group), LOG_EVENT_LINES):
            part = group[start : start + LOG_EVENT_LINES]
            data = {"board": board, "gateway": gateway, "lines": part, "dropped": dropped}
            events.append(format_event("logs", data))
            dropped = 0
    return events
