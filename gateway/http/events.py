"""``GET /v1/gateway/events``: the gateway's state, live, as Server-Sent Events (docs/api.md, "Live events").

What the control panel (and ``curl -N``) watches instead of polling. On connect the whole view:
``devices`` (what ``GET /v1/devices`` answers), ``status`` (``GET /v1/enm/status``),
``reservations`` (``GET /v1/reservations``) and ``evaluations`` (the running evaluations with their
progress); then, as things change:

* ``device``: one device record (as ``GET /v1/devices/{uuid}``) after it changed — status,
  progress while flashing, firmware, port …; also for a board listed for the first time;
* ``device-removed``: ``{"uuid": LocalUUID}`` once a board is forgotten;
* ``status``, ``reservations``: the whole of it again after it changed;
* ``evaluations``: the list again, at most every :data:`EVALUATIONS_EVERY` seconds.

Built on the device manager's :class:`~picofleet.common.changes.ChangeHub` (``manager.changes``):
the stream wakes on the keys published since it last looked and sends the *current* state of
what they name, once — a reader that falls behind gets the latest state, never a backlog, and
an event is sent only when what it shows differs from what this reader was sent last. The
transport rules (heartbeat comment every 15 s, a reader whose socket does not drain for 30 s is
dropped) are picofleet/common/web/sse.py's. No key is needed, as for ``GET /v1/devices``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from picofleet.common.http.errors import ApiError
from picofleet.common.web.sse import EventStream, format_event
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.http.context import GatewayApi, gateway_of

__all__ = ["EVALUATIONS_EVERY", "ROUTES", "evaluations_view", "gateway_events", "status_view"]

EVALUATIONS_EVERY = 0.2
"""Seconds between two ``evaluations`` events of one stream (progress of busy evaluations is
published per result: coalesced to at most five events a second)."""
DEVICE_PREFIX = "device:"
MAX_STREAMS = 64
"""Open streams at most (reading needs no key, so anyone on the network could open them): past it,
503 with ``Retry-After``."""


def status_view(manager: DeviceManager) -> dict[str, str]:
    """What ``GET /v1/enm/status`` answers."""
    return {"currentStatus": manager.current_status, "targetStatus": manager.target_status}


def reservations_view(api: GatewayApi) -> dict[str, Any]:
    """What ``GET /v1/reservations`` answers (never a token)."""
    return {"reservations": [reservation.public() for reservation in api.reservations.all()]}


def evaluations_view(api: GatewayApi) -> list[dict[str, Any]]:
    """The running evaluations, oldest first: what ``GET /v1/evaluations/{id}`` shows of each, without
    the results themselves but with how many units have one (``completed``) and how many are on a
    board now (``running``)."""
    running = []
    for evaluation in list(api.evaluations.evaluations.values()):
        if evaluation.done:
            continue
        view = evaluation.public()
        view.pop("results", None)
        view["completed"] = len(evaluation.results)
        view["running"] = sum(1 for unit in evaluation.units if unit.running_on is not None and not unit.done)
        running.append(view)
    running.sort(key=lambda view: (view["created_at"], view["evaluation"]))
    return running


class _Follower:
    """One stream's view of the gateway: what it sent last, to send only what changed."""

    def __init__(self, api: GatewayApi) -> None:
        self.api = api
        self.manager = api.manager
        self.devices: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.reservations: dict[str, Any] = {}
        self.evaluations: list[dict[str, Any]] = []

    def snapshot(self) -> list[bytes]:
        """The whole view, as sent on connect."""
        self.devices = {board.serial: board.public() for board in self.manager.listed()}
        self.status = status_view(self.manager)
        self.reservations = reservations_view(self.api)
        self.evaluations = evaluations_view(self.api)
        return [
            format_event("devices", list(self.devices.values())),
            format_event("status", self.status),
            format_event("reservations", self.reservations),
            format_event("evaluations", self.evaluations),
        ]

    def device_events(self, keys: set[str]) -> list[bytes]:
        """``device``/``device-removed`` events for the boards ``keys`` name (all: ``"devices"``)."""
        if "devices" in keys:
            serials = set(self.devices) | {board.serial for board in self.manager.listed()}
        else:
            serials = {key[len(DEVICE_PREFIX) :] for key in keys if key.startswith(DEVICE_PREFIX)}
        events = []
        for serial in sorted(serials):
            board = self.manager.boards.get(serial)
            if board is None or not board.provisioned:
                if self.devices.pop(serial, None) is not None:
                    events.append(format_event("device-removed", {"uuid": serial}))
                continue
            record = board.public()
            if self.devices.get(serial) != record:
                self.devices[serial] = record
                events.append(format_event("device", record))
        return events

    def status_event(self) -> list[bytes]:
        """A ``status`` event if the status changed (a board releasing its port may complete a pause)."""
        status = status_view(self.manager)
        if status == self.status:
            return []
        self.status = status
        return [format_event("status", status)]

    def reservations_event(self) -> list[bytes]:
        """A ``reservations`` event if they changed."""
        reservations = reservations_view(self.api)
        if reservations == self.reservations:
            return []
        self.reservations = reservations
        return [format_event("reservations", reservations)]

    def evaluations_event(self) -> list[bytes]:
        """An ``evaluations`` event if they changed."""
        evaluations = evaluations_view(self.api)
        if evaluations == self.evaluations:
            return []
        self.evaluations = evaluations
        return [format_event("evaluations", evaluations)]


async def _events(api: GatewayApi) -> AsyncIterator[bytes]:
    """The stream's events: the snapshot, then what changed (see the module docstring)."""
    loop = asyncio.get_running_loop()
    follower = _Follower(api)
    with api.manager.changes.subscribe() as changes:  # before the snapshot: nothing falls between
        for event in follower.snapshot():
            yield event
        evaluations_due: float | None = None  # when the pending evaluations event may go
        evaluations_sent = loop.time()
        while True:
            timeout = None if evaluations_due is None else max(0.0, evaluations_due - loop.time())
            keys = await changes.wait(timeout)
            events = follower.device_events(keys)
            events += follower.status_event()
            if "reservations" in keys:
                events += follower.reservations_event()
            if "evaluations" in keys and evaluations_due is None:
                evaluations_due = max(loop.time(), evaluations_sent + EVALUATIONS_EVERY)
            if evaluations_due is not None and loop.time() >= evaluations_due:
                evaluations_due, evaluations_sent = None, loop.time()
                events += follower.evaluations_event()
            for event in events:
                yield event


async def gateway_events(request: Request) -> EventStream:
    """The gateway's live events (Server-Sent Events; no key needed, as ``GET /v1/devices``)."""
    api = gateway_of(request)
    if api.event_streams >= MAX_STREAMS:
        raise ApiError(
            503, f"{MAX_STREAMS} event streams are open already: try again later", {"Retry-After": "5"}
        )
    api.event_streams += 1

    def closed() -> None:
        api.event_streams -= 1

    return EventStream(_events(api), on_close=closed)


ROUTES: list[BaseRoute] = [Route("/v1/gateway/events", gateway_events, methods=["GET"])]
"""The event stream's route, for ``create_app``."""
