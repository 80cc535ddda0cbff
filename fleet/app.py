"""The fleet service's HTTP API (Starlette): fleets, releases, gateways, target state, assets and
git push at ``/git/<fleet>.git``. The contract is written down in ``docs/fleet-api.md``.

Operator endpoints take the admin token as ``Authorization: Bearer <token>``; git takes it as the
basic-auth password (see :mod:`.git_http`); gateway endpoints take the gateway's own key as
``Authorization: Bearer <key>`` (see :meth:`FleetService.gateway_of`).

**Change tracking.** Every change that can move a gateway's target bumps a counter: the fleet's
(a push, a pin, a variable) or the gateway's (its report adding, removing or retyping a board), and
sets the fleet's current :class:`asyncio.Event` (replaced by a fresh one). Target documents are
cached per gateway under the pair of counters, so an unchanged target (the 304 path) costs no
database access; long polls wait on the event, never poll.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..firmware.assets import AssetCache
from .git_http import FLEET_NAME, FleetRepos, GitHttpBackend
from .store import FleetExistsError, FleetStore, key_hash, now_iso
from .targets import (
    MAX_VALUE,
    BoardReportError,
    board_target,
    encode_target,
    etag_matches,
    gateway_target,
    validate_report,
    variable_key_error,
)

__all__ = ["FleetService", "create_app"]

MAX_WAIT = 60
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
        self._targets: dict[str, tuple[tuple[int, int], bytes, str]] = {}
        self._auth: dict[str, GatewayAuth] = {}
        self._last_seen: dict[str, str] = {}
        self._board_keys: dict[str, list[tuple[str, str]]] = {}
        repos.on_release = self.fleet_changed

    # -- change tracking ------------------------------------------------------------------------

    def _wake(self, fleet: str) -> None:
        event = self._events.pop(fleet, None)
        if event is not None:
            event.set()

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
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return None
        digest = key_hash(value)
        auth = self._auth.get(digest)
        if auth is None:
            record = await self.store.gateway_by_key_hash(digest)
            if record is None:
                return None
            auth = self._auth[digest] = GatewayAuth(record["id"], record["fleet"])
        self._last_seen[auth.id] = now_iso()
        return auth

    async def target(self, gateway: GatewayAuth) -> tuple[bytes, str]:
        """The gateway's target state document (canonical JSON) and its ETag, cached."""
        generation = (self._fleet_gen.get(gateway.fleet, 0), self._gateway_gen.get(gateway.id, 0))
        cached = self._targets.get(gateway.id)
        if cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        fleet = await self.store.fleet(gateway.fleet)
        record = await self.store.gateway(gateway.id)
        if fleet is None or record is None:
            raise LookupError(f"gateway {gateway.id} or its fleet is gone")
        releases = {r["commit"]: r for r in await self.store.releases(gateway.fleet)}
        settings = await self.store.board_settings(gateway.fleet)
        body, etag = encode_target(gateway_target(fleet, releases, record.get("boards") or [], settings))
        self._targets[gateway.id] = (generation, body, etag)
        return body, etag

    def last_seen(self, record: dict[str, Any]) -> str | None:
        """When the gateway last called the fleet (this run's memory, else the stored report time)."""
        return self._last_seen.get(record["id"]) or record.get("last_seen")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), token.encode())


def _git_url(request: Request, fleet: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/git/{fleet}.git"


def create_app(service: FleetService) -> Starlette:
    """The Starlette application of the fleet service."""

    def unauthorized() -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong admin token (Authorization: Bearer TOKEN)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="picofleet"'},
        )

    def fleet_json(request: Request, fleet: dict[str, Any]) -> dict[str, Any]:
        return {
            "fleet": fleet["name"],
            "git_url": _git_url(request, fleet["name"]),
            "created": fleet["created"],
            "target": fleet.get("target"),
            "pinned": fleet.get("pinned"),
        }

    async def create_fleet(request: Request) -> JSONResponse:
        """``POST /v1/fleets {"name"}``: create a fleet and its git repository; 201 {"fleet", "git_url"}."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'the body must be JSON: {"name": "..."}')
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not FLEET_NAME.fullmatch(name):
            return _error(
                400,
                "invalid fleet name: lowercase letters, digits and '-' (at most 63, not starting with '-')",
            )
        try:
            await service.store.create_fleet(name)
        except FleetExistsError:
            return _error(409, f"fleet {name!r} already exists")
        await service.repos.create(name)
        return JSONResponse({"fleet": name, "git_url": _git_url(request, name)}, status_code=201)

    async def list_fleets(request: Request) -> JSONResponse:
        """``GET /v1/fleets``: every fleet with its target commit."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        return JSONResponse([fleet_json(request, fleet) for fleet in await service.store.fleets()])

    async def get_fleet(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}``: the fleet, its git URL, target commit and pin."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        fleet = await service.store.fleet(request.path_params["name"])
        if fleet is None:
            return _error(404, f"no fleet {request.path_params['name']!r}")
        return JSONResponse(fleet_json(request, fleet))

    async def list_releases(request: Request) -> JSONResponse:
        """``GET /v1/fleets/{name}/releases``: the releases (commit, ref, created, boards), oldest first."""
        if not _authorized(request, service.admin_token):
            return unauthorized()
        name = request.path_params["name"]
        if await service.store.fleet(name) is None:
            return _error(404, f"no fleet {name!r}")
        releases = await service.store.releases(name)
        return JSONResponse(
            [{key: r.get(key) for key in ("commit", "ref", "created", "boards")} for r in releases]
        )

    git = GitHttpBackend(service.repos, service.admin_token)
    routes = [
        Route("/v1/fleets", create_fleet, methods=["POST"]),
        Route("/v1/fleets", list_fleets, methods=["GET"]),
        Route("/v1/fleets/{name}", get_fleet, methods=["GET"]),
        Route("/v1/fleets/{name}/releases", list_releases, methods=["GET"]),
        Route("/git/{fleet}.git/{path:path}", git, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)
