"""The fleet service's HTTP application (Starlette), assembled: every route, the JSON error
handlers, the git backend; the contract is written down in ``docs/fleet-api.md``.

Operator routes (:mod:`.fleets`, :mod:`.pins`, :mod:`.variables`, the live :mod:`.events`) take the
admin token as ``Authorization: Bearer <token>`` or the dashboard's session cookie; git takes
it as the basic-auth password (see :mod:`picofleet.fleet.git.http_backend`); the routes gateways
call (:mod:`.gateway_api`) take the gateway's own key as ``Authorization: Bearer <key>``;
:mod:`.internal` serves the front workers; ``GET /openapi.json`` describes them all
(:mod:`.openapi`); ``GET /metrics`` (no token) is Prometheus' text format, and every request is
counted by route template (:mod:`.metrics`).
Handlers are plain functions reading the :class:`~.context.FleetService` from ``app.state``; they
raise :class:`~picofleet.common.http.errors.ApiError`, which :mod:`picofleet.common.http.handlers`
answers as ``{"error": message}``, as it does unknown routes (404) and wrong methods (405).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from picofleet.common.http.handlers import exception_handlers
from picofleet.fleet.git.http_backend import GitHttpBackend
from picofleet.fleet.http import events, fleets, gateway_api, internal, metrics, openapi, pins, variables
from picofleet.fleet.http.context import FleetService
from picofleet.fleet.state_checks import PlainChecks

__all__ = ["create_app"]

FLEET = "/v1/fleets/{name}"
BOARD = "/v1/fleets/{name}/boards/{uuid}"


def _variable_routes() -> list[Route]:
    """``GET …/{kind}``, ``PUT|DELETE …/{kind}/{key}`` of a fleet and of a board, for env and config."""
    return [
        route
        for kind in ("env", "config")
        for where in (FLEET, BOARD)
        for route in (
            Route(f"{where}/{kind}", partial(variables.list_variables, kind), methods=["GET"]),
            Route(f"{where}/{kind}/{{key}}", partial(variables.put_variable, kind), methods=["PUT"]),
            Route(f"{where}/{kind}/{{key}}", partial(variables.delete_variable, kind), methods=["DELETE"]),
        )
    ]


def create_app(service: FleetService, pages: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The fleet service's ASGI application: Starlette, behind :class:`.state_checks.PlainChecks`.

    ``pages`` are the dashboard's routes (``picofleet.fleet.dashboard``, a layer above this one,
    passed in by fleet/service.py)."""
    routes = [
        Route("/v1/fleets", fleets.create_fleet, methods=["POST"]),
        Route("/v1/fleets", fleets.list_fleets, methods=["GET"]),
        Route(FLEET, fleets.get_fleet, methods=["GET"]),
        Route(f"{FLEET}/releases", fleets.list_releases, methods=["GET"]),
        Route(f"{FLEET}/provisioning-key", fleets.rotate_provisioning_key, methods=["POST"]),
        Route(f"{FLEET}/gateways", fleets.list_gateways, methods=["GET"]),
        Route(f"{FLEET}/events", events.fleet_events, methods=["GET"]),
        Route(f"{FLEET}/boards", fleets.list_boards, methods=["GET"]),
        Route(f"{BOARD}/logs", fleets.board_logs, methods=["GET"]),
        Route(f"{FLEET}/pin", pins.pin_fleet, methods=["PUT"]),
        Route(f"{FLEET}/pin", pins.unpin_fleet, methods=["DELETE"]),
        Route(f"{BOARD}/pin", pins.pin_board, methods=["PUT"]),
        Route(f"{BOARD}/pin", pins.unpin_board, methods=["DELETE"]),
        Route(f"{BOARD}/retry", pins.retry_board, methods=["POST"]),
        *_variable_routes(),
        Route("/v1/gateways", gateway_api.provision, methods=["POST"]),
        Route("/v1/gateway/state", gateway_api.report_state, methods=["PUT"]),
        Route("/v1/gateway/state", gateway_api.target_state, methods=["GET"]),
        Route("/v1/gateway/logs", gateway_api.post_logs, methods=["POST"]),
        Route("/v1/assets/{sha256}", gateway_api.asset, methods=["GET", "HEAD"]),
        Route("/v1/internal/changes", internal.change_feed, methods=["GET"]),
        Route("/v1/internal/seen", internal.gateways_seen, methods=["POST"]),
        *openapi.ROUTES,
        Route("/metrics", metrics.get_metrics, methods=["GET"]),
        Route(
            "/git/{fleet}.git/{path:path}",
            GitHttpBackend(service.repos, service.admin_token, service.login_throttle),
            methods=["GET", "POST"],
        ),
        *pages,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=exception_handlers(),
        middleware=[Middleware(metrics.RequestCounter, service=service)],
    )
    app.state.fleet = service
    return PlainChecks(app, service.answer_known)
