"""Who is calling the fleet service: the operator (the admin token) or a gateway (its own key),
both as ``Authorization: Bearer <token>``; and the fleet or board an operator's path names.

Each helper returns what it found or raises an :class:`~picofleet.common.http.errors.ApiError`
(401 with ``WWW-Authenticate``, 404), answered by the application's exception handler.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request

from picofleet.common.http.auth import bearer_token
from picofleet.common.http.errors import ApiError
from picofleet.fleet.http.context import GatewayAuth, service_of

__all__ = [
    "AdminTokenRequired",
    "GatewayKeyRequired",
    "admin_board",
    "admin_fleet",
    "is_admin",
    "require_admin",
    "require_gateway",
]


class AdminTokenRequired(ApiError):
    """401: an operator route without the admin token."""

    def __init__(self) -> None:
        super().__init__(
            401,
            "missing or wrong admin token (Authorization: Bearer TOKEN)",
            {"WWW-Authenticate": 'Bearer realm="picofleet"'},
        )


class GatewayKeyRequired(ApiError):
    """401: a gateway route without a known gateway key."""

    def __init__(self) -> None:
        super().__init__(
            401,
            "missing or wrong gateway key (Authorization: Bearer KEY, from POST /v1/gateways)",
            {"WWW-Authenticate": 'Bearer realm="picofleet-gateway"'},
        )


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin token."""
    presented = bearer_token(request.headers)
    token = service_of(request).admin_token
    return presented is not None and secrets.compare_digest(presented.encode(), token.encode())


def require_admin(request: Request) -> None:
    """Nothing when the request carries the admin token, else :class:`AdminTokenRequired`."""
    if not is_admin(request):
        raise AdminTokenRequired()


async def require_gateway(request: Request) -> GatewayAuth:
    """The gateway whose key the request carries (noted as seen), else :class:`GatewayKeyRequired`."""
    gateway = await service_of(request).gateway_of(request)
    if gateway is None:
        raise GatewayKeyRequired()
    return gateway


async def admin_fleet(request: Request) -> dict[str, Any]:
    """The fleet ``{name}`` of an operator's path: 401 without the admin token, 404 if there is none."""
    require_admin(request)
    name = request.path_params["name"]
    fleet = await service_of(request).store.fleet(name)
    if fleet is None:
        raise ApiError(404, f"no fleet {name!r}")
    return fleet


async def admin_board(request: Request) -> tuple[dict[str, Any], str]:
    """The fleet and board ``{uuid}`` of an operator's path; 404 for a board no gateway of the fleet
    reported (and that has no settings)."""
    fleet = await admin_fleet(request)
    board = request.path_params["uuid"]
    store = service_of(request).store
    known = board in await store.board_settings(fleet["name"]) or any(
        b["LocalUUID"] == board for g in await store.gateways(fleet["name"]) for b in g.get("boards") or []
    )
    if not known:
        raise ApiError(404, f"no board {board!r} in fleet {fleet['name']!r} (no gateway reported it)")
    return fleet, board
