"""The gateway's HTTP API: edge-node-manager's routes, byte-compatible, plus picofleet's.

ENM routes (see docs/api.md): ``GET/PUT /v1/enm/status``, ``GET /v1/devices``,
``GET/PUT/DELETE /v1/devices/{uuid}``, ``PUT /v1/devices/{uuid}/restart``. Where ENM answered
500 or nothing, picofleet answers right: 400 for malformed JSON or invalid values, 404 for an
unknown device or route, 405 for a wrong method, 413 for an oversize upload, each with a JSON
``{"error": "..."}``. New: ``PUT /v1/devices/{uuid}/identify`` (blink the board) and
``POST /v1/devices/{uuid}/flash`` (a one-off UF2); the balena routes ``PUT /v1/enm/identify`` and
``GET /v1/enm/supervisor`` (supervisor_bridge/api.py). ``GET /openapi.json`` describes them all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from picofleet.common.http.errors import ApiError, error_response, json_body, json_object, read_upload
from picofleet.firmware.formats import image, uf2
from picofleet.gateway.boards.board import Board, FlashJob
from picofleet.gateway.boards.flashing import check_families
from picofleet.gateway.boards.manager import PAUSED, RUNNING, DeviceManager, FlashRefused
from picofleet.gateway.features import Features
from picofleet.gateway.http.evaluations import evaluation_routes
from picofleet.gateway.http.openapi import openapi_document
from picofleet.gateway.http.reservations import reservation_routes
from picofleet.gateway.models import APPLICATION, BoardError, BoardType
from picofleet.supervisor_bridge.api import supervisor_routes
from picofleet.supervisor_bridge.bridge import SupervisorBridge
from picofleet.supervisor_bridge.environment import BalenaEnvironment


def _string_map(value: Any, what: str) -> dict[str, str] | None:
    """An environment or config object: ``null`` or string keys to string values (as balena's)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise ApiError(400, f"{what} must be a JSON object of string values, or null")
    return value


def _read_image(body: bytes, board_type: BoardType) -> FlashJob:
    """Parse and check an uploaded UF2 against the board type (in a worker thread: it is CPU work)."""
    try:
        parsed = uf2.read_uf2(body)
        check_families(parsed.families, board_type)
        if not parsed.all_payloads_256:
            raise BoardError("the RP2 bootroms only accept UF2 blocks with 256-byte payloads")
        version = image.uf2_version(parsed, board_type.uf2_families)
    except uf2.UF2Error as error:
        raise ApiError(400, f"not a valid UF2 file: {error}") from None
    except BoardError as error:
        raise ApiError(422, str(error)) from None
    return FlashJob(body, parsed.families, version)


def create_app(
    manager: DeviceManager, bridge: SupervisorBridge | None = None, features: Features | None = None
) -> Starlette:
    """Build the Starlette application serving ``manager``'s boards.

    ``bridge`` is the balena supervisor bridge (default: one that is off), ``features`` the
    feature flags that are on (default: none).
    """
    bridge = bridge or SupervisorBridge(BalenaEnvironment.from_environ({}))
    features = features or Features()

    def board_or_404(request: Request) -> Board:
        uuid = request.path_params["uuid"]
        board = manager.find(uuid)
        if board is None:
            raise ApiError(404, f"no device with LocalUUID or ResinUUID {uuid!r}")
        return board

    async def get_status(request: Request) -> Response:
        """Current and target status of the gateway's process loop (ENM)."""
        return JSONResponse({"currentStatus": manager.current_status, "targetStatus": manager.target_status})

    async def put_status(request: Request) -> Response:
        """Pause or run the gateway: ``{"targetStatus": "Paused" | "Running"}`` (ENM)."""
        body = json_object(await json_body(request), "the request body")
        target = body.get("targetStatus")
        if target not in (PAUSED, RUNNING):
            raise ApiError(400, f'targetStatus must be "Paused" or "Running", not {json.dumps(target)}')
        await manager.set_target_status(target)
        return Response(status_code=200)

    async def list_devices(request: Request) -> Response:
        """Every dependent device (ENM)."""
        return JSONResponse([board.public() for board in manager.listed()])

    async def get_device(request: Request) -> Response:
        """One dependent device by LocalUUID or ResinUUID (ENM)."""
        return JSONResponse(board_or_404(request).public())

    async def put_device(request: Request) -> Response:
        """Supervisor hook: set TargetCommit, TargetEnvironment, TargetConfig (ENM)."""
        board = board_or_404(request)
        body = json_object(await json_body(request), "the request body")
        commit = body.get("commit")
        if commit is not None and not isinstance(commit, str):
            raise ApiError(400, "commit must be a string or null")
        environment = _string_map(body.get("environment"), "environment")
        config = _string_map(body.get("config"), "config")
        await manager.set_target(board, commit, environment, config)
        return Response(status_code=200)

    async def delete_device(request: Request) -> Response:
        """Supervisor hook: forget a device (ENM). Still plugged in, it is provisioned anew."""
        await manager.request_delete(board_or_404(request))
        return Response(status_code=200)

    async def restart_device(request: Request) -> Response:
        """Supervisor hook: restart a device (ENM). Done when the board is online and the gateway runs."""
        await manager.request_restart(board_or_404(request))
        return Response(status_code=200)

    async def identify_device(request: Request) -> Response:
        """Blink a device's LED so that a person can find it (picofleet)."""
        board = board_or_404(request)
        if manager.paused:
            raise ApiError(409, "the gateway is paused: it does not touch the boards")
        if APPLICATION not in board.sightings:
            raise ApiError(
                409, f"device {board.serial} is not running its firmware ({board.record['Status']})"
            )
        manager.request_blink(board)
        return Response(status_code=200)

    async def flash_device(request: Request) -> Response:
        """Flash a UF2 image (the request body) onto a device (picofleet). 202 once queued."""
        board = board_or_404(request)
        body = await read_upload(request, manager.config.max_upload_bytes, "the upload")
        board_type = manager.board_types.get(str(board.record["BoardType"]))
        if board_type is None:
            raise ApiError(409, f"board type {board.record['BoardType']!r} has no plugin loaded")
        job = await asyncio.to_thread(_read_image, body, board_type)
        job.commit = request.query_params.get("commit")
        try:
            await manager.request_flash(board, job)
        except FlashRefused as error:  # reserved (also while the upload was being read)
            raise ApiError(409, str(error)) from None
        except BoardError as error:  # the asset cache could not store it (disk full, read-only)
            raise ApiError(507, str(error)) from None
        return JSONResponse({"queued": True, "device": board.serial, "bytes": len(body)}, status_code=202)

    async def openapi(request: Request) -> Response:
        """The OpenAPI 3.1 document of this API."""
        return JSONResponse(openapi_document())

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error_response(405, f"method {request.method} is not allowed on {request.url.path}")
        return error_response(exc.status_code, str(exc.detail))

    routes = [
        Route("/v1/enm/status", get_status, methods=["GET"]),
        Route("/v1/enm/status", put_status, methods=["PUT"]),
        Route("/v1/devices", list_devices, methods=["GET"]),
        Route("/v1/devices/{uuid}", get_device, methods=["GET"]),
        Route("/v1/devices/{uuid}", put_device, methods=["PUT"]),
        Route("/v1/devices/{uuid}", delete_device, methods=["DELETE"]),
        Route("/v1/devices/{uuid}/restart", restart_device, methods=["PUT"]),
        Route("/v1/devices/{uuid}/identify", identify_device, methods=["PUT"]),
        Route("/v1/devices/{uuid}/flash", flash_device, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *reservation_routes(manager),
        *evaluation_routes(manager),
        *supervisor_routes(manager, bridge, features),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error})
