"""The gateway routes of the balena integration (docs/api.md, "balena").

* ``PUT /v1/enm/identify``: the supervisor blinks the device's LED (``POST /v1/blink``) so that a
  person finds the Pi; with the ``IDENTIFY_BOARDS`` feature flag every board running its
  firmware blinks too. 409 outside balena, 503 when the supervisor does not answer, 502 when it
  refuses (a wrong API key); each with the reason.
* ``GET /v1/enm/supervisor``: the bridge's state, the device as balena describes it, and the
  update lock files.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from picofleet.common.http.errors import ApiError
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.guard import require_key
from picofleet.gateway.models import APPLICATION
from picofleet.supervisor_bridge import lock_plugin, update_lock
from picofleet.supervisor_bridge.bridge import BLINK_SECONDS, BridgeOff
from picofleet.supervisor_bridge.supervisor_client import SupervisorRefused, SupervisorUnreachable

__all__ = ["ROUTES", "identify_gateway", "supervisor_status"]


async def identify_gateway(request: Request) -> Response:
    """Blink the device's LED (through the supervisor) and, with IDENTIFY_BOARDS, the boards'."""
    require_key(request)
    api = gateway_of(request)
    try:
        await api.bridge.blink()
    except BridgeOff as error:
        raise ApiError(409, str(error)) from None
    except SupervisorUnreachable as error:
        raise ApiError(503, str(error)) from None
    except SupervisorRefused as error:
        raise ApiError(502, str(error)) from None
    manager = api.manager
    boards: list[str] = []
    if "IDENTIFY_BOARDS" in api.features and not manager.paused:
        for board in manager.listed():
            if APPLICATION in board.sightings:
                manager.request_blink(board)
                boards.append(board.serial)
    return JSONResponse({"blinking": True, "seconds": BLINK_SECONDS, "boards": boards})


async def supervisor_status(request: Request) -> Response:
    """The supervisor bridge's state and the update lock files."""
    api = gateway_of(request)
    lock = await asyncio.to_thread(update_lock.lock_status, api.manager.config)
    if not api.manager.plugins.manager.is_registered(lock_plugin):  # PICOFLEET_DISABLE_PLUGINS: none taken
        lock = {**lock, "enabled": False}
    return JSONResponse({**api.bridge.status(), "updateLock": lock})


ROUTES: list[BaseRoute] = [
    Route("/v1/enm/identify", identify_gateway, methods=["PUT"]),
    Route("/v1/enm/supervisor", supervisor_status, methods=["GET"]),
]
"""The routes of the balena integration, for ``create_app`` (gateway/http/app.py)."""
