"""The fleet service's HTTP API (Starlette): fleets, releases, and git push at ``/git/<fleet>.git``.

Operator endpoints take the admin token as ``Authorization: Bearer <token>``; git takes it as the
basic-auth password (see :mod:`.git_http`).
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .git_http import FLEET_NAME, FleetRepos, GitHttpBackend
from .store import FleetExistsError, FleetStore

__all__ = ["FleetService", "create_app"]


class FleetService:
    """What the endpoints work on: the store, the repositories and the admin token."""

    def __init__(self, store: FleetStore, repos: FleetRepos, admin_token: str) -> None:
        self.store = store
        self.repos = repos
        self.admin_token = admin_token


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
