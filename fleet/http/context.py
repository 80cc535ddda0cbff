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

**Live events.** Separately, :attr:`FleetService.changes` (a coalescing
:class:`~picofleet.common.changes.ChangeHub`) is told what an operator's view shows changed — a
fleet (:func:`fleet_key`: a push, a pin, a variable, a retry) or one gateway (:func:`gateway_key`:
its report changed its boards, it was provisioned) — and :attr:`FleetService.log_followers` hands
new board log lines to the streams following them (:class:`LogFollowers`, bounded per follower);
``GET /v1/fleets/{name}/events`` (:mod:`.events`) serves both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.types import Send

from picofleet.common.changes import ChangeHub
from picofleet.common.http.auth import bearer_token
from picofleet.common.web.sessions import LoginThrottle, SessionCookies
from picofleet.firmware.asset_cache import AssetCache
from picofleet.fleet.git.http_backend import FleetRepos
from picofleet.fleet.http.metrics import STATE_PATH, FleetMetrics
from picofleet.fleet.state_checks import send_target
from picofleet.fleet.store import BoardLogs, FleetStore, key_hash, now_iso
from picofleet.fleet.targets import encode_target, etag_matches, gateway_target

__all__ = [
    "FleetService",
    "GatewayAuth",
    "LogFollower",
    "LogFollowers",
    "fleet_key",
    "gateway_key",
    "service_of",
]

SESSION_PURPOSE = b"picofleet dashboard session"
"""What the session cookies' signing key is derived for (HMAC-SHA256 of the admin token)."""
SEEN_EVENT_S = 60.0
"""A gateway that only polls is a live-views change this often (its ``last_seen`` moved on)."""
FOLLOWER_LINES = 1000
"""Log lines a live-events follower may have pending; beyond, its oldest are dropped (counted)."""


def fleet_key(fleet: str) -> str:
    """The change key of a fleet-wide change (its record, releases, pins, variables)."""
    return f"fleet:{fleet}"


def gateway_key(fleet: str, gateway_id: str) -> str:
    """The change key of one gateway of ``fleet`` (its board report, its provisioning)."""
    return f"gateway:{fleet}:{gateway_id}"


class LogFollower:
    """One live-events stream's pending board log lines: at most ``limit``, the oldest dropped
    (and counted) when it falls further behind, so a reader that stalls costs bounded memory."""

    def __init__(self, board: str | None, limit: int = FOLLOWER_LINES) -> None:
        self.board = board
        """The board followed, or ``None`` for all of the fleet's boards."""
        self.limit = limit
        self._lines: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._dropped = 0
        self._ready = asyncio.Event()

    def add(self, board: str, line: dict[str, Any]) -> None:
        """A new line of ``board`` (kept if this follower follows that board)."""
        if self.board is not None and board != self.board:
            return
        if len(self._lines) >= self.limit:
            self._lines.popleft()
            self._dropped += 1
        self._lines.append((board, line))
        self._ready.set()

    def pending(self) -> int:
        """How many lines wait (at most ``limit``)."""
        return len(self._lines)

    async def wait(self, timeout: float | None = None) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """The ``(board, line)`` pairs added since the last call and how many were dropped meanwhile,
        waiting up to ``timeout`` seconds for one (``None``: forever); nothing when none came."""
        if not self._lines:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return [], 0
        lines, dropped = list(self._lines), self._dropped
        self._lines.clear()
        self._dropped = 0
        self._ready.clear()
        return lines, dropped


class LogFollowers:
    """The fan-out of new board log lines to the live-events streams following them, per fleet."""

    def __init__(self) -> None:
        self._followers: dict[str, set[LogFollower]] = {}

    def publish(self, fleet: str, board: str, line: dict[str, Any]) -> None:
        """A new log line of ``board`` in ``fleet`` (as ``GET …/logs`` answers it)."""
        for follower in self._followers.get(fleet, ()):
            follower.add(board, line)

    @contextlib.contextmanager
    def follow(self, fleet: str, board: str | None) -> Iterator[LogFollower]:
        """Follow ``fleet``'s new lines of ``board`` (``None``: of every board) for the ``with`` block."""
        follower = LogFollower(board)
        self._followers.setdefault(fleet, set()).add(follower)
        try:
            yield follower
        finally:
            followers = self._followers.get(fleet)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[fleet]


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
        self._seen_published: dict[str, float] = {}
        self.logs = BoardLogs()
        self.logs_ignored: dict[str, int] = {}
        """Per gateway: lines it posted for boards it has not reported (this run)."""
        self.logs_dropped: dict[str, int] = {}
        """Per gateway: lines it says it dropped from its own full queue (its last word)."""
        self.metrics = FleetMetrics()
        """The event metrics ``GET /metrics`` serves (fleet/http/metrics.py)."""
        self.changes: ChangeHub[str] = ChangeHub()
        """What the operator's views show changed (:func:`fleet_key`, :func:`gateway_key`)."""
        self.log_followers = LogFollowers()
        """New board log lines, to the live-events streams following them."""
        self.sessions = SessionCookies.derived(admin_token, SESSION_PURPOSE)
        """The dashboard's session cookies, signed with a key derived from the admin token (a new
        token ends every session)."""
        self.login_throttle = LoginThrottle()
        """Wrong admin tokens on the dashboard's login form, per client address."""
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
        self.changes.publish(fleet_key(fleet))

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
        self._seen(auth, now_iso())
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

    async def fleet_view(self, name: str) -> tuple[dict[str, Any] | None, Any, Any]:
        """The fleet's record, releases by commit and board settings as of its current change
        counter: read once per fleet change and shared with the target states (the live events'
        ``gateway`` views use it). Do not modify what it returns."""
        return await self._fleet_view(name, self._fleet_gen.get(name, 0))

    async def answer_known(self, digest: str, if_none_match: str | None, send: Send) -> bool:
        """Answer a plain target-state check (see :mod:`picofleet.fleet.state_checks`) of a gateway
        whose key and current target this process has cached; False (nothing sent) otherwise."""
        auth = self._auth.get(digest)
        current = self._current(auth)[1] if auth is not None else None
        if auth is None or current is None:
            return False
        document, etag = current
        await send_target(send, etag, document, if_none_match, self.generation)
        self._seen(auth, now_iso())
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
                self._seen(auth, when)
                known += 1
        return known

    def _seen(self, auth: GatewayAuth, when: str) -> None:
        """Note the gateway as seen at ``when``; at most every :data:`SEEN_EVENT_S` seconds per
        gateway this is a change the live views hear of (a quiet gateway is not shown as stale)."""
        self._last_seen[auth.id] = when
        now = time.monotonic()
        if now - self._seen_published.get(auth.id, -SEEN_EVENT_S) >= SEEN_EVENT_S:
            self._seen_published[auth.id] = now
            self.changes.publish(gateway_key(auth.fleet, auth.id))

    def last_seen(self, record: dict[str, Any]) -> str | None:
        """When the gateway last called the fleet (this run's memory, else the stored report time)."""
        return self._last_seen.get(record["id"]) or record.get("last_seen")


def service_of(request: Request) -> FleetService:
    """The :class:`FleetService` of the application serving ``request``."""
    service: FleetService = request.app.state.fleet
    return service
