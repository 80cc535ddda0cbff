"""The gateway's HTTP API, assembled: edge-node-manager's routes (docs/api.md lists where they
differ from ENM's), plus picofleet's.

ENM routes (see docs/api.md): ``GET/PUT /v1/enm/status`` (:mod:`.status`), ``GET /v1/devices``,
``GET/PUT/DELETE /v1/devices/{uuid}``, ``PUT /v1/devices/{uuid}/restart`` (:mod:`.devices`). Where
ENM answered 500 or nothing, picofleet answers right: 400 for malformed JSON or invalid values, 404
for an unknown device or route, 405 for a wrong method, 413 for an oversize upload, each with a JSON
``{"error": "..."}``. New: ``PUT /v1/devices/{uuid}/identify`` (blink the board) and
``POST /v1/devices/{uuid}/flash`` (a one-off UF2) in :mod:`.devices`; ``GET /v1/gateway`` (who the
gateway is, :mod:`.identity`); reservations and the event
websocket (:mod:`.reservations`); bitstreams and evaluations (:mod:`.evaluations`); the balena routes
``PUT /v1/enm/identify`` and ``GET /v1/enm/supervisor`` (supervisor_bridge/api.py). ``GET
/openapi.json`` describes them all (:mod:`.openapi`); ``GET /metrics`` is Prometheus' text format
(:mod:`.metrics`); ``GET /v1/gateway/events`` is the live event stream (:mod:`.events`). With
``PICOFLEET_API_KEY`` set, the state-changing ENM routes need the key (:mod:`.guard`).

Handlers are plain functions reading the :class:`~.context.GatewayApi` from ``app.state``; they raise
:class:`~picofleet.common.http.errors.ApiError`, which :mod:`picofleet.common.http.handlers` answers
as ``{"error": message}``, as it does unknown routes (404) and wrong methods (405).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from picofleet.common.http.handlers import exception_handlers
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.evaluation.reservations import ReservationBook
from picofleet.gateway.evaluation.scheduler import EvaluationScheduler
from picofleet.gateway.features import Features
from picofleet.gateway.http import devices, events, identity, metrics, openapi, status
from picofleet.gateway.http import evaluations as evaluations_api
from picofleet.gateway.http import reservations as reservations_api
from picofleet.gateway.http.context import GatewayApi, bridge_off
from picofleet.gateway.http.guard import session_cookies
from picofleet.supervisor_bridge import api as supervisor_api
from picofleet.supervisor_bridge.bridge import SupervisorBridge

__all__ = ["create_app"]


def create_app(
    manager: DeviceManager,
    *,
    reservations: ReservationBook,
    evaluations: EvaluationScheduler[Board],
    bridge: SupervisorBridge | None = None,
    features: Features | None = None,
    pages: Sequence[BaseRoute] = (),
) -> Starlette:
    """Build the Starlette application serving ``manager``'s boards.

    ``reservations`` and ``evaluations`` are the boards' reservation book and evaluation scheduler
    (gateway/service.py's GatewayBoards wires them); ``bridge`` is the balena supervisor bridge
    (default: one that is off), ``features`` the feature flags that are on (default: none);
    ``pages`` the control panel's routes (``picofleet.gateway.panel``, a layer above this one,
    passed in by gateway/service.py).
    """
    routes = [
        *status.ROUTES,
        *identity.ROUTES,
        *devices.ROUTES,
        *openapi.ROUTES,
        *reservations_api.ROUTES,
        *evaluations_api.ROUTES,
        *supervisor_api.ROUTES,
        *metrics.ROUTES,
        *events.ROUTES,
        *pages,
    ]
    app = Starlette(routes=routes, exception_handlers=exception_handlers())
    app.state.gateway = GatewayApi(
        manager=manager,
        reservations=reservations,
        evaluations=evaluations,
        clients=reservations.clients,
        max_bitstream_bytes=manager.config.max_bitstream_bytes,
        bridge=bridge or bridge_off(),
        features=features or Features(),
        sessions=session_cookies(manager.config.api_key),
    )
    app.state.metrics = metrics.metrics_registry(app.state.gateway)
    return app
