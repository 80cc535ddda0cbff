"""What the fleet service's endpoints work on: :class:`FleetService`, stored by ``create_app`` as
``app.state.fleet`` (:func:`service_of`), and :class:`GatewayAuth`, an authenticated gateway.

**Change tracking.** Every change that can move a gateway's target bumps a counter: the fleet's
(a push, a pin, a variable) or the gateway's (its report adding, removing or retyping a board), and
sets the fleet's current :class:`asyncio.Event` (replaced by a fresh one). Target documents are
cached per gateway under the pair of counters, so an unchanged target (the 304 path) costs no
database access; long polls wait on the event, never poll. One more counter, the service's
*generation*, counts every such change of any fleet: target-state responses carry it as
``X-Picofleet-Generation`` and ``GET /v1/internal/changes`` streams it, which is how the front
workers of ``--workers N`` (:mod:`picofleet.fleet.workers.front_worker`) know when their cached
answers are stale.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.types import Send

from picofleet.common.http.auth import bearer_token
from picofleet.firmware.asset_cache import AssetCache
from picofleet.fleet.git.http_backend import FleetRepos
from picofleet.fleet.http.metrics import STATE_PATH, FleetMetrics
from picofleet.fleet.state_checks import send_target
from picofleet.fleet.store import BoardLogs, FleetStore, key_hash, now_iso
from picofleet.fleet.targets import encode_target, etag_matches, gateway_target

__all__ = ["FleetService", "GatewayAuth", "service_of"]


class GatewayAuth:
    """An authenticated gateway: its id and its fleet."""

    __slots__ = ("fleet", "id")

    def __init__(self, gateway_id: str, fleet: str) -> None:
        self.id = gateway_id
        self.fleet = fleet


class FleetService:
    """What the endpoints work on: the store, the repositories, the admin token and the in-memory
    change counters, events and target caches."""

    def __init__(self, store: FleetStore, repos: FleetRepos, admin_token: str) -> None:
        self.store = store
        self.repos = repos
        self.admin_token = admin_token
        self.assets = AssetCache(repos.data / "assets")
        self._fleet_gen: dict[str, int] = {}
        self._gateway_gen: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.generation = 0
        """Counts every change that can move any gateway's target (see the module docstring)."""
        self._generation_event = asyncio.Event()
        self.closing = False
        """Set at shutdown: long polls and change feeds end at once instead of being cut off."""
        self._targets: dict[str, tuple[tuple[int, int], bytes, str]] = {}
        self._fleet_views: dict[str, tuple[int, Any]] = {}
        self._auth: dict[str, GatewayAuth] = {}
        self._last_seen: dict[str, str] = {}
        self.logs = BoardLogs()
        self.logs_ignored: dict[str, int] = {}
        """Per gateway: lines it posted for boards it has not reported (this run)."""
        self.logs_dropped: dict[str, int] = {}
        """Per gateway: lines it says it dropped from its own full queue (its last word)."""
        self.metrics = FleetMetrics()
        """The event metrics ``GET /metrics`` serves (fleet/http/metrics.py)."""
        repos.on_release = self.release_recorded
        repos.on_push = self.metrics.push_done

    def release_recorded(self, fleet: str) -> None:
        """A release of ``fleet`` was recorded (the git backend's ``on_release``): counted, and the
        fleet's gateways woken."""
        self.metrics.releases.labels(fleet).inc()
        self.fleet_changed(fleet)

    # -- change tracking ------------------------------------------------------------------------

    def _wake(self, fleet: str) -> None:
        self.generation += 1
        self._generation_event.set()
        self._generation_event = asyncio.Event()
        event = self._events.pop(fleet, None)
        if event is not None:
            event.set()

    def close_long_polls(self) -> None:
        """At shutdown: answer every waiting long poll now (304) and end the change feeds, so that
        the server's graceful shutdown finds no request it has to cut off; new long polls get 503
        with ``Retry-After`` (the gateway backs off) until the server stops."""
        self.closing = True
        self._generation_event.set()
        for event in self._events.values():
            event.set()
        self._events.clear()

    def next_generation(self) -> asyncio.Event:
        """The event the next change of any fleet sets (take it before reading :attr:`generation`)."""
        return self._generation_event

    def fleet_changed(self, fleet: str) -> None:
        """Something of ``fleet`` that targets depend on changed: invalidate and wake long polls."""
        self._fleet_gen[fleet] = self._fleet_gen.get(fleet, 0) + 1
        self._wake(fleet)

    def gateway_changed(self, gateway: GatewayAuth) -> None:
        """The gateway's board set changed: invalidate its target and wake its long polls."""
        self._gateway_gen[gateway.id] = self._gateway_gen.get(gateway.id, 0) + 1
        self._wake(gateway.fleet)

    def change_event(self, fleet: str) -> asyncio.Event:
        """The event the next change of ``fleet`` (or of one of its gateways) sets."""
        event = self._events.get(fleet)
        if event is None:
            event = self._events[fleet] = asyncio.Event()
        return event

    # -- gateways -------------------------------------------------------------------------------

    async def gateway_of(self, request: Request) -> GatewayAuth | None:
        """The gateway whose key is the request's bearer token, or ``None``; notes it as seen."""
        token = bearer_token(request.headers)
        if token is None:
            return None
        digest = key_hash(token)
        auth = self._auth.get(digest)
        if auth is None:
            record = await self.store.gateway_by_key_hash(digest)
            if record is None:
                return None
            auth = self._auth[digest] = GatewayAuth(record["id"], record["fleet"])
        self._last_seen[auth.id] = now_iso()
        return auth

    def _current(self, gateway: GatewayAuth) -> tuple[tuple[int, int], tuple[bytes, str] | None]:
        """The gateway's pair of change counters, and its cached ``(document, ETag)`` if still current."""
        generation = (self._fleet_gen.get(gateway.fleet, 0), self._gateway_gen.get(gateway.id, 0))
        cached = self._targets.get(gateway.id)
        return generation, (cached[1], cached[2]) if cached is not None and cached[0] == generation else None

    async def target(self, gateway: GatewayAuth) -> tuple[bytes, str]:
        """The gateway's target state document (canonical JSON) and its ETag, cached."""
        generation, current = self._current(gateway)
        if current is not None:
            return current
        fleet, releases, settings = await self._fleet_view(gateway.fleet, generation[0])
        record = await self.store.gateway(gateway.id)
        if fleet is None or record is None:
            raise LookupError(f"gateway {gateway.id} or its fleet is gone")
        body, etag = encode_target(gateway_target(fleet, releases, record.get("boards") or [], settings))
        self._targets[gateway.id] = (generation, body, etag)
        return body, etag

    async def _fleet_view(self, name: str, generation: int) -> tuple[dict[str, Any] | None, Any, Any]:
        """The fleet's record, releases by commit and board settings, read once per fleet change
        (after a push every gateway's target is recomputed: they share these reads)."""
        cached = self._fleet_views.get(name)
        if cached is not None and cached[0] == generation:
            return cached[1]
        fleet = await self.store.fleet(name)
        releases = {r["commit"]: r for r in await self.store.releases(name)}
        settings = await self.store.board_settings(name)
        self._fleet_views[name] = (generation, (fleet, releases, settings))
        return fleet, releases, settings

    async def answer_known(self, digest: str, if_none_match: str | None, send: Send) -> bool:
        """Answer a plain target-state check (see :mod:`picofleet.fleet.state_checks`) of a gateway
        whose key and current target this process has cached; False (nothing sent) otherwise."""
        auth = self._auth.get(digest)
        current = self._current(auth)[1] if auth is not None else None
        if auth is None or current is None:
            return False
        document, etag = current
        await send_target(send, etag, document, if_none_match, self.generation)
        self._last_seen[auth.id] = now_iso()
        status = "304" if etag_matches(if_none_match, etag) else "200"
        self.metrics.requests.labels(STATE_PATH, "GET", status).inc()  # answered before routing
        return True

    def seen_by_key_hash(self, digests: list[str], when: str) -> int:
        """Note gateways as seen at ``when`` by their key hashes (from a front worker's cache hits);
        how many were known. Only keys this process has authenticated can be in a worker's cache."""
        known = 0
        for digest in digests:
            auth = self._auth.get(digest)
            if auth is not None:
                self._last_seen[auth.id] = when
                known += 1
        return known

    def last_seen(self, record: dict[str, Any]) -> str | None:
        """When the gateway last called the fleet (this run's memory, else the stored report time)."""
        return self._last_seen.get(record["id"]) or record.get("last_seen")


def service_of(request: Request) -> FleetService:
    """The :class:`FleetService` of the application serving ``request``."""
    service: FleetService = request.app.state.fleet
    return service
