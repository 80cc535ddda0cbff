"""What the gateway's endpoints work on: :class:`GatewayApi`, stored by ``create_app`` as
``app.state.gateway`` and read by every handler through :func:`gateway_of` (HTTP requests and
websockets alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from picofleet.common.web.sessions import LoginThrottle, SessionCookies
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.evaluation.clients import Clients
from picofleet.gateway.evaluation.reservations import ReservationBook
from picofleet.gateway.evaluation.scheduler import EvaluationScheduler
from picofleet.gateway.features import Features
from picofleet.supervisor_bridge.bridge import SupervisorBridge
from picofleet.supervisor_bridge.environment import BalenaEnvironment

__all__ = ["GatewayApi", "bridge_off", "gateway_of"]


def bridge_off() -> SupervisorBridge:
    """A supervisor bridge that is off (the gateway outside balena)."""
    return SupervisorBridge(BalenaEnvironment.from_environ({}))


@dataclass
class GatewayApi:
    """The gateway's state the endpoints read: the boards, their reservations and evaluations, the
    reservation clients (whose tokens evaluations check), the balena bridge and the feature flags;
    the control panel's sessions when an API key is set (gateway/http/guard.py)."""

    manager: DeviceManager
    reservations: ReservationBook
    evaluations: EvaluationScheduler[Board]
    clients: Clients
    """The reservation book's clients (``reservations.clients``)."""
    max_bitstream_bytes: int
    """The largest bitstream upload accepted (``GatewayConfig.max_bitstream_bytes``)."""
    bridge: SupervisorBridge = field(default_factory=bridge_off)
    features: Features = field(default_factory=Features)
    sessions: SessionCookies | None = None
    """The control panel's signed session cookies, ``None`` when no API key is set (nothing to
    sign in to); their secret is derived from the key (``guard.session_cookies``), so changing the
    key ends every session."""
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    """Wrong keys per client address on the panel's sign-in form (``POST /login``)."""
    event_streams: int = 0
    """Open ``GET /v1/gateway/events`` streams (gauge ``picofleet_gateway_event_streams``)."""


def gateway_of(connection: HTTPConnection) -> GatewayApi:
    """The :class:`GatewayApi` of the application serving ``connection`` (a request or a websocket)."""
    api: GatewayApi = connection.app.state.gateway
    return api
