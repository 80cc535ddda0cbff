"""Who is calling the fleet service: the operator (the admin token as ``Authorization: Bearer
<token>``, or the dashboard's session cookie) or a gateway (its own key, as a bearer token); and
the fleet or board an operator's path names.

A request authenticated by the session cookie that changes something (POST, PUT, DELETE …) must
also carry the ``X-Picofleet-Request`` header (CSRF; see :mod:`picofleet.common.web.sessions`),
else 403.

A wrong admin token counts in the service's ``login_throttle`` (the dashboard login form's) for the
request's client address; past its limit, every request of that address presenting a token, the
right one included, is answered 429 with ``Retry-After`` until the window has passed
(:class:`AdminTokensThrottled`), so a token cannot be guessed at network speed. No token at all is
a plain 401 and counts nothing; the right one clears the address's count, as a right sign-in does.

Each helper returns what it found or raises an :class:`~picofleet.common.http.errors.ApiError`
(401 with ``WWW-Authenticate``, 404, 429), answered by the application's exception handler.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from starlette.requests import Request

from picofleet.common.http.auth import bearer_token
from picofleet.common.http.errors import ApiError
from picofleet.common.web.pages import client_address
from picofleet.common.web.sessions import CSRF_HEADER, needs_csrf_header
from picofleet.fleet.http.context import FleetService, GatewayAuth, service_of

__all__ = [
    "AdminTokenRequired",
    "AdminTokensThrottled",
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


class AdminTokensThrottled(ApiError):
    """429: too many wrong admin tokens from the request's address; try again in ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        super().__init__(
            429, f"too many wrong admin tokens, try again in {seconds} s", {"Retry-After": str(seconds)}
        )


class GatewayKeyRequired(ApiError):
    """401: a gateway route without a known gateway key."""

    def __init__(self) -> None:
        super().__init__(
            401,
            "missing or wrong gateway key (Authorization: Bearer KEY, from POST /v1/gateways)",
            {"WWW-Authenticate": 'Bearer realm="picofleet-gateway"'},
        )


def _admin_token_matches(service: FleetService, request: Request, presented: str) -> bool:
    """Whether ``presented`` is the admin token, counted in the throttle (see the module docstring)."""
    client = client_address(request)
    wait = service.login_throttle.check(client)
    if wait is not None:
        raise AdminTokensThrottled(wait)
    if not secrets.compare_digest(presented.encode(), service.admin_token.encode()):
        service.login_throttle.failed(client)
        return False
    service.login_throttle.succeeded(client)
    return True


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin token, or the dashboard's valid session cookie (then
    a request that changes something without the CSRF header is refused: 403). A wrong token is
    counted for the client's address, and an address with too many is refused: 429."""
    service = service_of(request)
    presented = bearer_token(request.headers)
    if presented is not None:
        return _admin_token_matches(service, request, presented)
    if service.sessions.subject(request) is None:
        return False
    if needs_csrf_header(request):
        raise ApiError(
            403,
            f"a signed-in request that changes something needs the {CSRF_HEADER} header"
            " (the dashboard's requests send it)",
        )
    return True


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
