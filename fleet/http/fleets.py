"""The operator's routes of fleets (admin token): create and list fleets, rotate a fleet's
provisioning key, list its releases, gateways and boards, read a board's log lines."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, query_number
from picofleet.fleet.git.http_backend import FLEET_NAME
from picofleet.fleet.http.auth import admin_board, admin_fleet, require_admin
from picofleet.fleet.http.context import service_of
from picofleet.fleet.store import (
    BOARD_LOG_LINES,
    DEFAULT_DEPLOY_BRANCH,
    FleetExistsError,
    branch_name_error,
    deploy_branch,
    key_hash,
)
from picofleet.fleet.targets import board_target, new_key

__all__ = [
    "board_logs",
    "create_fleet",
    "fleet_json",
    "gateways_json",
    "get_fleet",
    "list_boards",
    "list_fleets",
    "list_gateways",
    "list_releases",
    "releases_json",
    "rotate_provisioning_key",
]


def git_url(request: Request, fleet: str) -> str:
    """The URL ``git push`` takes for ``fleet`` (as the request reached the service)."""
    return f"{str(request.base_url).rstrip('/')}/git/{fleet}.git"


def fleet_json(request: Request, fleet: dict[str, Any]) -> dict[str, Any]:
    """A fleet as the operator's routes answer it."""
    return {
        "fleet": fleet["name"],
        "git_url": git_url(request, fleet["name"]),
        "created": fleet["created"],
        "deploy_branch": deploy_branch(fleet),
        "target": fleet.get("target"),
        "pinned": fleet.get("pinned"),
        "latest": fleet.get("latest"),
        "env": fleet.get("env") or {},
        "config": fleet.get("config") or {},
    }


async def create_fleet(request: Request) -> JSONResponse:
    """``POST /v1/fleets {"name", "deploy_branch"?}``: create a fleet, its git repository and
    provisioning key; only pushes to ``deploy_branch`` (default ``main``) change what its boards run.
    201 ``{"fleet", "git_url", "deploy_branch", "provisioning_key"}`` (the key is shown only here)."""
    require_admin(request)
    service = service_of(request)
    body = await json_body(request)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not FLEET_NAME.fullmatch(name):
        raise ApiError(
            400, "invalid fleet name: lowercase letters, digits and '-' (at most 63, not starting with '-')"
        )
    branch = body.get("deploy_branch", DEFAULT_DEPLOY_BRANCH)
    problem = branch_name_error(branch)
    if problem is not None:
        raise ApiError(400, problem)
    key = new_key("pk")
    try:
        await service.store.create_fleet(name, key, branch)
    except FleetExistsError:
        raise ApiError(409, f"fleet {name!r} already exists") from None
    await service.repos.create(name, branch)
    return JSONResponse(
        {"fleet": name, "git_url": git_url(request, name), "deploy_branch": branch, "provisioning_key": key},
        status_code=201,
    )


async def rotate_provisioning_key(request: Request) -> JSONResponse:
    """``POST /v1/fleets/{name}/provisioning-key``: a new provisioning key (the old one stops
    working; provisioned gateways keep theirs); 200 ``{"fleet", "provisioning_key"}``."""
    fleet = await admin_fleet(request)
    key = new_key("pk")
    await service_of(request).store.update_fleet(fleet["name"], provisioning_key_sha256=key_hash(key))
    return JSONResponse({"fleet": fleet["name"], "provisioning_key": key})


async def list_fleets(request: Request) -> JSONResponse:
    """``GET /v1/fleets``: every fleet with its target commit."""
    require_admin(request)
    return JSONResponse([fleet_json(request, fleet) for fleet in await service_of(request).store.fleets()])


async def get_fleet(request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}``: the fleet, its git URL, target commit, pin and variables."""
    return JSONResponse(fleet_json(request, await admin_fleet(request)))


async def list_releases(request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}/releases``: the releases (commit, ref, created, message, boards),
    oldest first."""
    fleet = await admin_fleet(request)
    return JSONResponse(await releases_json(request, fleet))


async def releases_json(request: Request, fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """The fleet's releases as ``GET …/releases`` answers them: commit, ref, created, boards and
    ``message`` (the commit's subject line), oldest first."""
    releases = await service_of(request).store.releases(fleet["name"])
    return [{key: r.get(key) for key in ("commit", "ref", "created", "message", "boards")} for r in releases]


# -- gateways and boards as the operator sees them ----------------------------------------------

View = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]


async def _fleet_view(request: Request, fleet: dict[str, Any]) -> View:
    """The fleet's gateways, releases by commit and board settings."""
    store = service_of(request).store
    gateways = await store.gateways(fleet["name"])
    releases = {r["commit"]: r for r in await store.releases(fleet["name"])}
    settings = await store.board_settings(fleet["name"])
    return gateways, releases, settings


async def _some_gateways(request: Request, fleet: dict[str, Any], only: set[str]) -> View:
    """Just the gateways ``only`` of the fleet (oldest first), each read by its id, with the
    releases and board settings the service caches per fleet change (:meth:`FleetService.fleet_view`):
    a live ``gateway`` event costs no scan of the whole fleet."""
    service = service_of(request)
    found = [await service.store.gateway(gateway_id) for gateway_id in only]
    gateways = [g for g in found if g is not None and g.get("fleet") == fleet["name"]]
    gateways.sort(key=lambda g: (g.get("created") or "", g["id"]))
    _, releases, settings = await service.fleet_view(fleet["name"])
    return gateways, releases, settings


def _board_json(
    board: dict[str, Any],
    gateway: dict[str, Any],
    fleet: dict[str, Any],
    releases: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """A reported board with its gateway, target, pin and own variables, and whether it is
    ``converged``: it runs the target commit, holds the target's FPGA image (or none when the target
    has none) and reports the target's environment and config."""
    mine = settings.get(board["LocalUUID"]) or {}
    target = board_target(board, fleet, releases, mine)
    target_fpga = target["fpga"]["sha256"] if target.get("fpga") else None
    converged = (
        target["commit"] is not None
        and board.get("Commit") == target["commit"]
        and board.get("FpgaImage") == target_fpga
        and board.get("Environment") == target["environment"]
        and board.get("Config") == target["config"]
    )
    return {
        **board,
        "gateway": gateway["id"],
        "target_commit": target["commit"],
        "pin": mine.get("pin"),
        "board_env": mine.get("env") or {},
        "board_config": mine.get("config") or {},
        "target_environment": target["environment"],
        "target_config": target["config"],
        "target_fpga": target_fpga,
        "converged": converged,
    }


async def list_gateways(request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}/gateways``: the gateways with last_seen and their boards."""
    return JSONResponse(await gateways_json(request, await admin_fleet(request)))


async def gateways_json(
    request: Request, fleet: dict[str, Any], only: set[str] | None = None
) -> list[dict[str, Any]]:
    """The fleet's gateways as ``GET …/gateways`` answers them (just those ``only`` ids, if given:
    read one by one, not the whole fleet)."""
    service = service_of(request)
    if only is None:
        gateways, releases, settings = await _fleet_view(request, fleet)
    else:
        gateways, releases, settings = await _some_gateways(request, fleet, only)
    return [
        {
            "gateway": g["id"],
            "name": g.get("name"),
            "created": g.get("created"),
            "last_seen": service.last_seen(g),
            "logs": {  # board log lines lost on the way (since this service started)
                "dropped": service.logs_dropped.get(g["id"], 0),
                "ignored": service.logs_ignored.get(g["id"], 0),
            },
            "boards": [_board_json(b, g, fleet, releases, settings) for b in g.get("boards") or []],
        }
        for g in gateways
    ]


async def list_boards(request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}/boards``: every reported board with its target commit and pin."""
    fleet = await admin_fleet(request)
    gateways, releases, settings = await _fleet_view(request, fleet)
    return JSONResponse(
        [_board_json(b, g, fleet, releases, settings) for g in gateways for b in g.get("boards") or []]
    )


async def board_logs(request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}/boards/{uuid}/logs[?limit=N]``: the board's last N log lines
    (default 100, at most the 1,000 kept), oldest first."""
    fleet, board = await admin_board(request)
    limit = query_number(
        request,
        "limit",
        "100",
        int,
        (1, BOARD_LOG_LINES),
        f"limit: a whole number from 1 to {BOARD_LOG_LINES}",
    )
    return JSONResponse(service_of(request).logs.last(fleet["name"], board, limit))
