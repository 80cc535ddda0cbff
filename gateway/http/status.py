"""The gateway's process loop status (ENM, docs/api.md): ``GET /v1/enm/status`` reads it,
``PUT /v1/enm/status`` pauses (every serial port freed) or runs the gateway."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, json_object
from picofleet.gateway.boards.manager import PAUSED, RUNNING
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.guard import require_key

__all__ = ["ROUTES", "get_status", "put_status"]


async def get_status(request: Request) -> Response:
    """Current and target status of the gateway's process loop (ENM)."""
    manager = gateway_of(request).manager
    return JSONResponse({"currentStatus": manager.current_status, "targetStatus": manager.target_status})


async def put_status(request: Request) -> Response:
    """Pause or run the gateway: ``{"targetStatus": "Paused" | "Running"}`` (ENM)."""
    require_key(request)
    body = json_object(await json_body(request), "the request body")
    target = body.get("targetStatus")
    if target not in (PAUSED, RUNNING):
        raise ApiError(400, f'targetStatus must be "Paused" or "Running", not {json.dumps(target)}')
    await gateway_of(request).manager.set_target_status(target)
    return Response(status_code=200)


ROUTES: list[BaseRoute] = [
    Route("/v1/enm/status", get_status, methods=["GET"]),
    Route("/v1/enm/status", put_status, methods=["PUT"]),
]
"""The status routes, for ``create_app``."""
