"""The fleet service's HTTP API (Starlette): fleets, releases, gateways, target state, assets and
git push at ``/git/<fleet>.git``. The contract is written down in ``docs/fleet-api.md``.

Operator endpoints take the admin token as ``Authorization: Bearer <token>``; git takes it as the
basic-auth password (see :mod:`.git_http`); gateway endpoints take the gateway's own key as
``Authorization: Bearer <key>`` (see :meth:`FleetService.gateway_of`).

**Change tracking.** Every change that can move a gateway's target bumps a counter: the fleet's
(a push, a pin, a variable) or the gateway's (its report adding, removing or retyping a board), and
sets the fleet's current :class:`asyncio.Event` (replaced by a fresh one). Target documents are
cached per gateway under the pair of counters, so an unchanged target (the 304 path) costs no
database access; long polls wait on the event, never poll. One more counter, the service's
*generation*, counts every such change of any fleet: target-state responses carry it as
``X-Picofleet-Generation`` and ``GET /v1/internal/changes`` streams it, which is how the front
workers of ``--workers N`` (:mod:`.front_worker`) know when their cached answers are stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Send

from picofleet.common.http.errors import bearer_token
from picofleet.firmware.asset_cache import AssetCache
from picofleet.fleet.git.http_backend import FLEET_NAME, FleetRepos, GitHttpBackend
from picofleet.fleet.state_checks import GENERATION_HEADER, PlainChecks, send_target
from picofleet.fleet.store import BOARD_LOG_LINES, BoardLogs, FleetExistsError, FleetStore, key_hash, now_iso
from picofleet.fleet.targets import (
    MAX_VALUE,
    BoardReportError,
    board_target,
    encode_target,
    etag_matches,
    gateway_target,
    new_key,
    validate_report,
    variable_key_error,
)

__all__ = ["FleetService", "create_app"]

MAX_WAIT = 60
FEED_HEARTBEAT_S = 10.0
"""An empty line on the change feed after this long without a change (keeps idle links honest)."""
MAX_SEEN_BATCH = 100_000
T = TypeVar("T", int, float)
MAX_LOG_BATCH = 1000
"""Lines per ``POST /v1/gateway/logs`` (the gateway sends at most 500)."""
MAX_LOG_TEXT = 4096
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
SHA256 = re.compile(r"[0-9a-f]{64}")


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
        repos.on_release = self.fleet_changed

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
        """Answer a plain target-state check (see :mod:`.state_checks`) of a gateway whose key and
        current target this process has cached; False (nothing sent) otherwise."""
        auth = self._auth.get(digest)
        current = self._current(auth)[1] if auth is not None else None
        if auth is None or current is None:
            return False
        document, etag = current
        await send_target(send, etag, document, if_none_match, self.generation)
        self._last_seen[auth.id] = now_iso()
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _authorized(request: Request, token: str) -> bool:
    presented = bearer_token(request.headers)
    return presented is not None and secrets.compare_digest(presented.encode(), token.encode())


def _git_url(request: Request, fleet: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/git/{fleet}.git"


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _bounded_param(
    request: Request, name: str, default: str, convert: Callable[[str], T], low: float, high: float
) -> T | None:
    """A numeric query parameter within [low, high], or ``None`` when it is not one."""
    try:
        value = convert(request.query_params.get(name, default))
    except ValueError:
        return None
    return value if low <= value <= high else None  # type: ignore[operator]


def create_app(service: FleetService) -> ASGIApp:
    """The fleet service's ASGI application: Starlette, behind :class:`.state_checks.PlainChecks`."""
    store = service.store

    def unauthorized() -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong admin token (Authorization: Bearer TOKEN)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="picofleet"'},
        )

    def gateway_unauthorized() -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong gateway key (Authorization: Bearer KEY, from POST /v1/gateways)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="picofleet-gateway"'},
        )

    def fleet_json(request: Request, fleet: dict[str, Any]) -> dict[str, Any]:
        return {
            "fleet": fleet["name"],
            "git_url": _git_url(request, fleet["name"]),
            "created": fleet["created"],
            "target": fleet.get("target"),
            "pinned": fleet.get("pinned"),
            "latest": fleet.get("latest"),
            "env": fleet.get("env") or {},
            "config": fleet.get("config") or {},
        }

    async def admin_fleet(request: Request) -> dict[str, Any] | JSONResponse:
        """The path's fleet for an admin request, or the error response."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        name = request.path_params["name"]
        fleet = await store.fleet(name)
        if fleet is None:
            return _error(404, f"no fleet {name!r}")
        return fleet

    async def create_fleet(request: Request) -> JSONResponse:
        """``POST /v1/fleets {"name"}``: create a fleet, its git repository and provisioning key;
        201 ``{"fleet", "git_url", "provisioning_key"}`` (the key is shown only here)."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        body = await _json_body(request)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not FLEET_NAME.fullmatch(name):
            return _error(
                400,
                "invalid fleet name: lowercase letters, digits and '-' (at most 63, not starting with '-')",
            )
        key = new_key("pk")
        try:
            await store.create_fleet(name, key)
        except FleetExistsError:
            return _error(409, f"fleet {name!r} already exists")
        await service.repos.create(name)
        return JSONResponse(
            {"fleet": name, "git_url": _git_url(request, name), "provisioning_key": key}, status_code=201
        )

    async def rotate_provisioning_key(request: Request) -> JSONResponse:
        """``POST /v1/fleets/{name}/provisioning-key``: a new provisioning key (the old one stops
        working; provisioned gateways keep theirs); 200 ``{"fleet", "provisioning_key"}``."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        key = new_key("pk")
        await store.update_fleet(fleet["name"], provisioning_key_sha256=key_hash(key))
        return JSONResponse({"fleet": fleet["name"], "provisioning_key": key})

    async def list_fleets(request: Request) -> JSONResponse:
        """``GET /v1/fleets``: every fleet with its target commit."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        return JSONResponse([fleet_json(request, fleet) for fleet in await store.fleets()])

    async def get_fleet(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}``: the fleet, its git URL, target commit, pin and variables."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        return JSONResponse(fleet_json(request, fleet))

    async def list_releases(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}/releases``: the releases (commit, ref, created, boards), oldest first."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        releases = await store.releases(fleet["name"])
        return JSONResponse(
            [{key: r.get(key) for key in ("commit", "ref", "created", "boards")} for r in releases]
        )

    # -- gateways -------------------------------------------------------------------------------

    async def provision(request: Request) -> JSONResponse:
        """``POST /v1/gateways {"provisioning_key", "name"?}``: register a gateway in the key's fleet;
        201 ``{"gateway", "key", "fleet"}`` (the key is shown only here); wrong key: 401."""
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("provisioning_key"), str):
            return _error(400, 'the body must be JSON: {"provisioning_key": "...", "name": "optional"}')
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 128):
            return _error(400, "name: must be a string of at most 128 characters")
        fleet = await store.fleet_by_provisioning_key(body["provisioning_key"])
        if fleet is None or not body["provisioning_key"]:
            return _error(401, "wrong provisioning key")
        gateway_id, key = uuid.uuid4().hex, new_key("gk")
        await store.add_gateway(
            {
                "id": gateway_id,
                "fleet": fleet["name"],
                "name": name or f"gateway-{gateway_id[:7]}",
                "key_sha256": key_hash(key),
                "created": now_iso(),
                "last_seen": None,
                "boards": [],
            }
        )
        return JSONResponse({"gateway": gateway_id, "key": key, "fleet": fleet["name"]}, status_code=201)

    async def report_state(request: Request) -> JSONResponse:
        """``PUT /v1/gateway/state {"boards": [...]}``: the gateway's full current board list."""
        gateway = await service.gateway_of(request)
        if gateway is None:
            return gateway_unauthorized()
        try:
            boards = validate_report(await _json_body(request))
        except BoardReportError as error:
            return _error(400, str(error))
        record = await store.gateway(gateway.id)
        before = [(b["LocalUUID"], b["BoardType"]) for b in (record or {}).get("boards") or []]
        await store.report_boards(gateway.id, boards, now_iso())
        if before != [(b["LocalUUID"], b["BoardType"]) for b in boards]:
            service.gateway_changed(gateway)
        return JSONResponse({"gateway": gateway.id, "boards": len(boards)})

    async def post_logs(request: Request) -> JSONResponse:
        """``POST /v1/gateway/logs {"lines": [{"board", "time", "level", "text"}], "dropped"?}``:
        board log lines; lines of boards the gateway has not reported are ignored (counted)."""
        gateway = await service.gateway_of(request)
        if gateway is None:
            return gateway_unauthorized()
        body = await _json_body(request)
        lines = body.get("lines") if isinstance(body, dict) else None
        if not isinstance(lines, list) or len(lines) > MAX_LOG_BATCH:
            return _error(
                400,
                'the body must be JSON: {"lines": [{"board", "time", "level", "text"}, ...]}'
                f" (at most {MAX_LOG_BATCH} lines)",
            )
        checked = []
        for n, line in enumerate(lines):
            fields = [
                line.get(k) if isinstance(line, dict) else None for k in ("board", "time", "level", "text")
            ]
            if not all(isinstance(f, str) for f in fields) or not fields[0] or len(fields[0]) > 128:
                return _error(400, f"lines[{n}]: board, time, level and text must be strings (board 1..128)")
            board, time_, level, text = fields
            level = level.lower() if level.lower() in LOG_LEVELS else "info"
            checked.append((board, {"time": time_[:64], "level": level, "text": text[:MAX_LOG_TEXT]}))
        dropped = body.get("dropped")
        if isinstance(dropped, int) and dropped >= 0:
            service.logs_dropped[gateway.id] = dropped
        record = await store.gateway(gateway.id)
        reported = {b["LocalUUID"] for b in (record or {}).get("boards") or []}
        accepted = ignored = 0
        for board, line in checked:
            if board in reported:
                service.logs.add(gateway.fleet, board, {**line, "gateway": gateway.id})
                accepted += 1
            else:
                ignored += 1
        if ignored:
            service.logs_ignored[gateway.id] = service.logs_ignored.get(gateway.id, 0) + ignored
        return JSONResponse({"gateway": gateway.id, "accepted": accepted, "ignored": ignored})

    async def target_state(request: Request) -> Response:
        """``GET /v1/gateway/state[?wait=N]``: the gateway's target state with an ``ETag``; 304 when
        ``If-None-Match`` names it (after waiting up to N ≤ 60 s for a change with ``wait``)."""
        gateway = await service.gateway_of(request)
        if gateway is None:
            return gateway_unauthorized()
        wait = _bounded_param(request, "wait", "0", float, 0, MAX_WAIT)
        if wait is None:
            return _error(400, f"wait: a number of seconds from 0 to {MAX_WAIT}")
        if wait and service.closing:  # an immediate 304 would have the gateway ask again at once
            stopping = _error(503, "the fleet service is stopping; ask again in a moment")
            stopping.headers["Retry-After"] = "2"
            return stopping
        known = request.headers.get("if-none-match")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changed = service.change_event(gateway.fleet)  # taken before reading: no change is missed
            # Read before the target: a target is never labelled with a newer generation than its own.
            generation = str(service.generation)
            try:
                body, etag = await service.target(gateway)
            except LookupError as error:
                return _error(404, str(error))
            headers = {"ETag": etag, GENERATION_HEADER: generation}
            if not etag_matches(known, etag):
                return Response(body, media_type="application/json", headers=headers)
            remaining = deadline - loop.time()
            if remaining <= 0 or service.closing:
                return Response(status_code=304, headers=headers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # -- front workers (--workers N) --------------------------------------------------------------

    async def change_feed(request: Request) -> Response:
        """``GET /v1/internal/changes`` (admin): a stream of lines ``{"generation": N}``, one now and
        one after each change that can move a target (an empty line every 10 s without one)."""
        if not _authorized(request, service.admin_token):
            return unauthorized()

        async def lines() -> Any:
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

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def gateways_seen(request: Request) -> JSONResponse:
        """``POST /v1/internal/seen {"keys": [sha256 of a gateway key, ...]}`` (admin): gateways a
        front worker answered from its cache, noted as seen now; 200 ``{"known": N}``."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        body = await _json_body(request)
        keys = body.get("keys") if isinstance(body, dict) else None
        if (
            not isinstance(keys, list)
            or len(keys) > MAX_SEEN_BATCH
            or not all(isinstance(k, str) and SHA256.fullmatch(k) for k in keys)
        ):
            return _error(
                400, f'the body must be JSON: {{"keys": [sha256 hex, ...]}} (at most {MAX_SEEN_BATCH})'
            )
        return JSONResponse({"known": service.seen_by_key_hash(keys, now_iso())})

    # -- assets ---------------------------------------------------------------------------------

    async def asset(request: Request) -> Response:
        """``GET /v1/assets/{sha256}``: an asset of a release of the caller's fleet (any fleet for
        the admin), streamed, with ``Range`` support (206, 416)."""
        if _authorized(request, service.admin_token):
            fleets = [f["name"] for f in await store.fleets()]
        else:
            gateway = await service.gateway_of(request)
            if gateway is None:
                return gateway_unauthorized()
            fleets = [gateway.fleet]
        sha256 = request.path_params["sha256"]
        if not SHA256.fullmatch(sha256):
            return _error(404, f"no asset {sha256!r}")
        referenced = False
        for fleet in fleets:
            for release in await store.releases(fleet):
                if any(b.get("sha256") == sha256 for b in (release.get("boards") or {}).values()):
                    referenced = True
        path = service.assets.path_of(sha256)
        if not referenced or not path.is_file():
            return _error(404, f"no asset {sha256} in a release of your fleet")
        return FileResponse(path, media_type="application/octet-stream", headers={"ETag": f'"{sha256}"'})

    # -- operator views -------------------------------------------------------------------------

    View = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]

    async def fleet_view(fleet: dict[str, Any]) -> View:
        gateways = await store.gateways(fleet["name"])
        releases = {r["commit"]: r for r in await store.releases(fleet["name"])}
        settings = await store.board_settings(fleet["name"])
        return gateways, releases, settings

    def board_json(
        board: dict[str, Any],
        gateway: dict[str, Any],
        fleet: dict[str, Any],
        releases: dict[str, Any],
        settings: dict[str, Any],
    ) -> dict[str, Any]:
        mine = settings.get(board["LocalUUID"]) or {}
        target = board_target(board, fleet, releases, mine)
        return {
            **board,
            "gateway": gateway["id"],
            "target_commit": target["commit"],
            "pin": mine.get("pin"),
            "board_env": mine.get("env") or {},
            "board_config": mine.get("config") or {},
            "target_environment": target["environment"],
            "target_config": target["config"],
        }

    async def list_gateways(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}/gateways``: the gateways with last_seen and their boards."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        gateways, releases, settings = await fleet_view(fleet)
        return JSONResponse(
            [
                {
                    "gateway": g["id"],
                    "name": g.get("name"),
                    "created": g.get("created"),
                    "last_seen": service.last_seen(g),
                    "logs": {  # board log lines lost on the way (since this service started)
                        "dropped": service.logs_dropped.get(g["id"], 0),
                        "ignored": service.logs_ignored.get(g["id"], 0),
                    },
                    "boards": [board_json(b, g, fleet, releases, settings) for b in g.get("boards") or []],
                }
                for g in gateways
            ]
        )

    async def list_boards(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}/boards``: every reported board with its target commit and pin."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        gateways, releases, settings = await fleet_view(fleet)
        return JSONResponse(
            [board_json(b, g, fleet, releases, settings) for g in gateways for b in g.get("boards") or []]
        )

    # -- pins -----------------------------------------------------------------------------------

    async def release_commit(fleet: str, request: Request) -> str | JSONResponse:
        """The release commit a pin request names (full or a unique prefix of 7+), or the error."""
        body = await _json_body(request)
        commit = body.get("commit") if isinstance(body, dict) else None
        if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,40}", commit):
            return _error(400, 'the body must be JSON: {"commit": "<release commit, 7 to 40 hex digits>"}')
        matches = [r["commit"] for r in await store.releases(fleet) if r["commit"].startswith(commit)]
        if not matches:
            return _error(409, f"{commit} is not a release of fleet {fleet!r}")
        if len(matches) > 1:
            return _error(409, f"{commit} is ambiguous: it starts {len(matches)} releases")
        return matches[0]

    async def pin_fleet(request: Request) -> JSONResponse:
        """``PUT /v1/fleets/{name}/pin {"commit"}``: the fleet's boards run that release."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        commit = await release_commit(fleet["name"], request)
        if isinstance(commit, JSONResponse):
            return commit
        updated = await store.update_fleet(fleet["name"], pinned=commit, target=commit)
        service.fleet_changed(fleet["name"])
        return JSONResponse(fleet_json(request, updated or fleet))

    async def unpin_fleet(request: Request) -> JSONResponse:
        """``DELETE /v1/fleets/{name}/pin``: the fleet tracks its latest release again."""
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        releases = await store.releases(fleet["name"])
        latest = fleet.get("latest") or (releases[-1]["commit"] if releases else None)
        updated = await store.update_fleet(fleet["name"], pinned=None, target=latest)
        service.fleet_changed(fleet["name"])
        return JSONResponse(fleet_json(request, updated or fleet))

    async def known_board(fleet: dict[str, Any], uuid_: str) -> bool:
        if uuid_ in await store.board_settings(fleet["name"]):
            return True
        gateways = await store.gateways(fleet["name"])
        return any(b["LocalUUID"] == uuid_ for g in gateways for b in g.get("boards") or [])

    async def admin_board(request: Request) -> tuple[dict[str, Any], str] | JSONResponse:
        fleet = await admin_fleet(request)
        if isinstance(fleet, JSONResponse):
            return fleet
        board = request.path_params["uuid"]
        if not await known_board(fleet, board):
            return _error(404, f"no board {board!r} in fleet {fleet['name']!r} (no gateway reported it)")
        return fleet, board

    def board_settings_json(fleet: str, settings: dict[str, Any]) -> dict[str, Any]:
        return {
            "fleet": fleet,
            "LocalUUID": settings["uuid"],
            "pin": settings.get("pin"),
            "env": settings.get("env") or {},
            "config": settings.get("config") or {},
        }

    async def pin_board(request: Request) -> JSONResponse:
        """``PUT /v1/fleets/{name}/boards/{uuid}/pin {"commit"}``: this board runs that release,
        whatever the fleet's target."""
        found = await admin_board(request)
        if isinstance(found, JSONResponse):
            return found
        fleet, board = found
        commit = await release_commit(fleet["name"], request)
        if isinstance(commit, JSONResponse):
            return commit
        settings = await store.update_board_settings(fleet["name"], board, pin=commit)
        service.fleet_changed(fleet["name"])
        return JSONResponse(board_settings_json(fleet["name"], settings))

    async def unpin_board(request: Request) -> JSONResponse:
        """``DELETE /v1/fleets/{name}/boards/{uuid}/pin``: the board follows the fleet again."""
        found = await admin_board(request)
        if isinstance(found, JSONResponse):
            return found
        fleet, board = found
        settings = await store.update_board_settings(fleet["name"], board, pin=None)
        service.fleet_changed(fleet["name"])
        return JSONResponse(board_settings_json(fleet["name"], settings))

    async def board_logs(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}/boards/{uuid}/logs[?limit=N]``: the board's last N log lines
        (default 100, at most the 1,000 kept), oldest first."""
        found = await admin_board(request)
        if isinstance(found, JSONResponse):
            return found
        fleet, board = found
        limit = _bounded_param(request, "limit", "100", int, 1, BOARD_LOG_LINES)
        if limit is None:
            return _error(400, f"limit: a whole number from 1 to {BOARD_LOG_LINES}")
        return JSONResponse(service.logs.last(fleet["name"], board, limit))

    # -- variables ------------------------------------------------------------------------------

    async def variable_value(request: Request) -> str | JSONResponse:
        body = await _json_body(request)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            return _error(400, f'the body must be JSON: {{"value": "<a string of at most {MAX_VALUE}>"}}')
        return value

    def variables_endpoint(kind: str, per_board: bool) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            if per_board:
                found = await admin_board(request)
                if isinstance(found, JSONResponse):
                    return found
                fleet, board = found
                current = (await store.board_settings(fleet["name"])).get(board) or {}
            else:
                found_fleet = await admin_fleet(request)
                if isinstance(found_fleet, JSONResponse):
                    return found_fleet
                fleet, board, current = found_fleet, "", found_fleet
            variables = dict(current.get(kind) or {})
            key = request.path_params.get("key")
            if request.method == "GET":
                return JSONResponse(variables)
            assert key is not None
            problem = variable_key_error(kind, key)
            if problem:
                return _error(400, problem)
            if request.method == "PUT":
                value = await variable_value(request)
                if isinstance(value, JSONResponse):
                    return value
                variables[key] = value
            elif key not in variables:
                return _error(404, f"{kind} variable {key} is not set")
            else:
                del variables[key]
            if per_board:
                await store.update_board_settings(fleet["name"], board, **{kind: variables})
            else:
                await store.update_fleet(fleet["name"], **{kind: variables})
            service.fleet_changed(fleet["name"])
            return JSONResponse(variables)

        where = "/v1/fleets/{name}/boards/{uuid}/" if per_board else "/v1/fleets/{name}/"
        endpoint.__doc__ = (
            f'``GET {where}{kind}``, ``PUT|DELETE {where}{kind}/{{key}}`` ``{{"value"}}``: '
            f"{'board' if per_board else 'fleet'} {kind} variables; answers the resulting set."
        )
        return endpoint

    git = GitHttpBackend(service.repos, service.admin_token)
    routes = [
        Route("/v1/fleets", create_fleet, methods=["POST"]),
        Route("/v1/fleets", list_fleets, methods=["GET"]),
        Route("/v1/fleets/{name}", get_fleet, methods=["GET"]),
        Route("/v1/fleets/{name}/releases", list_releases, methods=["GET"]),
        Route("/v1/fleets/{name}/provisioning-key", rotate_provisioning_key, methods=["POST"]),
        Route("/v1/fleets/{name}/gateways", list_gateways, methods=["GET"]),
        Route("/v1/fleets/{name}/boards", list_boards, methods=["GET"]),
        Route("/v1/fleets/{name}/pin", pin_fleet, methods=["PUT"]),
        Route("/v1/fleets/{name}/pin", unpin_fleet, methods=["DELETE"]),
        Route("/v1/fleets/{name}/boards/{uuid}/pin", pin_board, methods=["PUT"]),
        Route("/v1/fleets/{name}/boards/{uuid}/pin", unpin_board, methods=["DELETE"]),
        Route("/v1/fleets/{name}/boards/{uuid}/logs", board_logs, methods=["GET"]),
        Route("/v1/gateways", provision, methods=["POST"]),
        Route("/v1/gateway/state", report_state, methods=["PUT"]),
        Route("/v1/gateway/state", target_state, methods=["GET"]),
        Route("/v1/gateway/logs", post_logs, methods=["POST"]),
        Route("/v1/assets/{sha256}", asset, methods=["GET", "HEAD"]),
        Route("/v1/internal/changes", change_feed, methods=["GET"]),
        Route("/v1/internal/seen", gateways_seen, methods=["POST"]),
        Route("/git/{fleet}.git/{path:path}", git, methods=["GET", "POST"]),
    ]
    for kind in ("env", "config"):
        fleet_vars, board_vars = variables_endpoint(kind, False), variables_endpoint(kind, True)
        routes += [
            Route(f"/v1/fleets/{{name}}/{kind}", fleet_vars, methods=["GET"]),
            Route(f"/v1/fleets/{{name}}/{kind}/{{key}}", fleet_vars, methods=["PUT", "DELETE"]),
            Route(f"/v1/fleets/{{name}}/boards/{{uuid}}/{kind}", board_vars, methods=["GET"]),
            Route(
                f"/v1/fleets/{{name}}/boards/{{uuid}}/{kind}/{{key}}", board_vars, methods=["PUT", "DELETE"]
            ),
        ]
    return PlainChecks(Starlette(routes=routes), service.answer_known)
