"""The operator's routes of pins (admin token): a fleet, or one board, runs a given release instead
of the fleet's latest; unpinned, it follows the fleet again. And the retry of a release that failed
on a board (its gateway rolled it back)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body
from picofleet.fleet.http.auth import admin_board, admin_fleet
from picofleet.fleet.http.context import service_of
from picofleet.fleet.http.fleets import fleet_json

__all__ = ["board_settings_json", "pin_board", "pin_fleet", "retry_board", "unpin_board", "unpin_fleet"]

COMMIT_PREFIX = re.compile(r"[0-9a-f]{7,40}")


async def _release_commit(request: Request, fleet: str) -> str:
    """The release commit a pin request names (full, or a unique prefix of 7+ hex digits)."""
    body = await json_body(request)
    commit = body.get("commit") if isinstance(body, dict) else None
    if not isinstance(commit, str) or not COMMIT_PREFIX.fullmatch(commit):
        raise ApiError(400, 'the body must be JSON: {"commit": "<release commit, 7 to 40 hex digits>"}')
    releases = await service_of(request).store.releases(fleet)
    matches = [r["commit"] for r in releases if r["commit"].startswith(commit)]
    if not matches:
        raise ApiError(409, f"{commit} is not a release of fleet {fleet!r}")
    if len(matches) > 1:
        raise ApiError(409, f"{commit} is ambiguous: it starts {len(matches)} releases")
    return matches[0]


def board_settings_json(fleet: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A board's own settings as the operator's routes answer them."""
    return {
        "fleet": fleet,
        "LocalUUID": settings["uuid"],
        "pin": settings.get("pin"),
        "env": settings.get("env") or {},
        "config": settings.get("config") or {},
        "retry": settings.get("retry") or 0,
    }


async def pin_fleet(request: Request) -> JSONResponse:
    """``PUT /v1/fleets/{name}/pin {"commit"}``: the fleet's boards run that release."""
    fleet = await admin_fleet(request)
    commit = await _release_commit(request, fleet["name"])
    service = service_of(request)
    updated = await service.store.update_fleet(fleet["name"], pinned=commit, target=commit)
    service.fleet_changed(fleet["name"])
    return JSONResponse(fleet_json(request, updated or fleet))


async def unpin_fleet(request: Request) -> JSONResponse:
    """``DELETE /v1/fleets/{name}/pin``: the fleet tracks its latest release again."""
    fleet = await admin_fleet(request)
    service = service_of(request)
    releases = await service.store.releases(fleet["name"])
    # the newest release of the deploy branch (a fleet recorded before "latest" existed: the newest)
    latest = fleet["latest"] if "latest" in fleet else (releases[-1]["commit"] if releases else None)
    updated = await service.store.update_fleet(fleet["name"], pinned=None, target=latest)
    service.fleet_changed(fleet["name"])
    return JSONResponse(fleet_json(request, updated or fleet))


async def pin_board(request: Request) -> JSONResponse:
    """``PUT /v1/fleets/{name}/boards/{uuid}/pin {"commit"}``: this board runs that release,
    whatever the fleet's target."""
    fleet, board = await admin_board(request)
    commit = await _release_commit(request, fleet["name"])
    service = service_of(request)
    settings = await service.store.update_board_settings(fleet["name"], board, pin=commit)
    service.fleet_changed(fleet["name"])
    return JSONResponse(board_settings_json(fleet["name"], settings))


async def unpin_board(request: Request) -> JSONResponse:
    """``DELETE /v1/fleets/{name}/boards/{uuid}/pin``: the board follows the fleet again."""
    fleet, board = await admin_board(request)
    service = service_of(request)
    settings = await service.store.update_board_settings(fleet["name"], board, pin=None)
    service.fleet_changed(fleet["name"])
    return JSONResponse(board_settings_json(fleet["name"], settings))


async def retry_board(request: Request) -> JSONResponse:
    """``POST /v1/fleets/{name}/boards/{uuid}/retry``: flash the release that failed on this board
    (its ``FailedRelease``) once more. The board's target carries a higher ``retry`` count, which
    its gateway takes as the go-ahead. 409 when its gateway reports no failed release for it."""
    fleet, board = await admin_board(request)
    service = service_of(request)
    reported = [
        b
        for g in await service.store.gateways(fleet["name"])
        for b in g.get("boards") or []
        if b.get("LocalUUID") == board
    ]
    failed = next((b["FailedRelease"] for b in reported if isinstance(b.get("FailedRelease"), dict)), None)
    if failed is None:
        raise ApiError(409, f"board {board!r} has no failed release to retry (its gateway reports none)")
    current = (await service.store.board_settings(fleet["name"])).get(board) or {}
    retry = current.get("retry")
    count = retry + 1 if isinstance(retry, int) and retry > 0 else 1
    settings = await service.store.update_board_settings(fleet["name"], board, retry=count)
    service.fleet_changed(fleet["name"])
    return JSONResponse({**board_settings_json(fleet["name"], settings), "failed_release": failed})
