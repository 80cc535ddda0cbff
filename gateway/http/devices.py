"""The dependent devices (the boards) of the gateway's API (docs/api.md).

ENM's routes (docs/api.md, "Differences from ENM"): ``GET /v1/devices``,
``GET/PUT/DELETE /v1/devices/{uuid}``, ``PUT /v1/devices/{uuid}/restart`` (the supervisor's hooks);
picofleet's:
``PUT /v1/devices/{uuid}/identify`` (blink the board), ``POST /v1/devices/{uuid}/flash`` (a
one-off UF2; a board that follows a fleet only in local mode) and
``PUT /v1/devices/{uuid}/local-mode``. A device is named by its LocalUUID (USB serial) or its
ResinUUID; 404 otherwise.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, json_object, read_upload
from picofleet.firmware.formats import image, uf2
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.flashing import check_image
from picofleet.gateway.boards.manager import FlashRefused
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.guard import require_key
from picofleet.gateway.models import APPLICATION, BoardError, BoardType

__all__ = [
    "ROUTES",
    "delete_device",
    "flash_device",
    "get_device",
    "identify_device",
    "list_devices",
    "put_device",
    "put_local_mode",
    "restart_device",
]


def _board_or_404(request: Request) -> Board:
    """The board the request's ``{uuid}`` names, else a 404."""
    uuid = request.path_params["uuid"]
    board = gateway_of(request).manager.find(uuid)
    if board is None:
        raise ApiError(404, f"no device with LocalUUID or ResinUUID {uuid!r}")
    return board


COMMIT = re.compile(r"[0-9A-Za-z._-]{1,64}")
"""What a commit may be: 1 to 64 letters, digits, ``.``, ``_`` or ``-`` (balena's 32- and 40-hex
commits, git's 40- and 64-hex ids, short ids and release names all fit)."""


def _commit(value: Any, where: str) -> str | None:
    """A commit (see :data:`COMMIT`) or ``None``; else a 400 naming ``where``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a string or null")
    if not COMMIT.fullmatch(value):
        shown = repr(value) if len(value) <= 80 else f"of {len(value)} characters"
        raise ApiError(400, f"{where} {shown} is not 1 to 64 letters, digits, '.', '_' or '-'")
    return value


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
        check_image(parsed, board_type)
        version = image.uf2_version(parsed, board_type.uf2_families)
    except uf2.UF2Error as error:
        raise ApiError(400, f"not a valid UF2 file: {error}") from None
    except BoardError as error:
        raise ApiError(422, str(error)) from None
    return FlashJob(body, parsed.families, version)


async def list_devices(request: Request) -> Response:
    """Every dependent device (ENM)."""
    return JSONResponse([board.public() for board in gateway_of(request).manager.listed()])


async def get_device(request: Request) -> Response:
    """One dependent device by LocalUUID or ResinUUID (ENM)."""
    return JSONResponse(_board_or_404(request).public())


async def put_device(request: Request) -> Response:
    """Supervisor hook: set TargetCommit, TargetEnvironment, TargetConfig (ENM); 200 once stored.

    Serving a balena dependent app (supervisor_bridge/proxyvisor.py) it also brings the board to
    the commit: 202 while the commit's asset is downloaded and flashed, 200 once the board runs it,
    409/422 with the reason when it will not be flashed (docs/balena.md, "Dependent devices").
    """
    require_key(request, supervisor_hook=True)
    board = _board_or_404(request)
    body = json_object(await json_body(request), "the request body")
    commit = _commit(body.get("commit"), "commit")
    environment = _string_map(body.get("environment"), "environment")
    config = _string_map(body.get("config"), "config")
    proxyvisor = gateway_of(request).bridge.proxyvisor
    if proxyvisor is not None:
        answer = await proxyvisor.hook_update(board, commit, environment, config)
        body = answer.body(board, commit)
        if answer.status >= 400:
            body = {"error": answer.reason, **body}
        return JSONResponse(body, status_code=answer.status)
    await gateway_of(request).manager.set_target(board, commit, environment, config)
    return Response(status_code=200)


async def delete_device(request: Request) -> Response:
    """Supervisor hook: forget a device (ENM). Still plugged in, it is provisioned anew.

    Idempotent, as the supervisor expects (it repeats a DELETE until answered 200): an unknown
    uuid — already deleted — answers 200 ``{"deleted": false, "reason"}``.
    """
    require_key(request, supervisor_hook=True)
    api = gateway_of(request)
    uuid = request.path_params["uuid"]
    board = api.manager.find(uuid)
    if board is None:
        reason = f"no device with LocalUUID or ResinUUID {uuid!r} (deleted already?)"
        return JSONResponse({"deleted": False, "reason": reason})
    if api.bridge.proxyvisor is not None:
        await api.bridge.proxyvisor.hook_delete(board)
    else:
        await api.manager.request_delete(board)
    return JSONResponse({"deleted": True, "device": board.record.get("ResinUUID")})


async def restart_device(request: Request) -> Response:
    """Supervisor hook: restart a device (ENM). Done when the board is online and the gateway runs."""
    require_key(request)
    await gateway_of(request).manager.request_restart(_board_or_404(request))
    return Response(status_code=200)


BLINK_STATUS = {"unsupported": 409, "gone": 409, "failed": 502, "timeout": 504}
"""The answer to an identify request whose board did not blink, by ``BlinkOutcome.kind``."""


async def identify_device(request: Request) -> Response:
    """Blink a device's LED so that a person can find it (picofleet): 200 once the board blinks.

    Else the reason: 409 paused, not running its firmware, busy being flashed or restarted,
    Broken, or its firmware cannot blink; 502 the blink failed; 504 the board did not get to it
    within ``BLINK_WAIT`` seconds.
    """
    require_key(request)
    manager = gateway_of(request).manager
    board = _board_or_404(request)
    if manager.paused:
        raise ApiError(409, "the gateway is paused: it does not touch the boards")
    if APPLICATION not in board.sightings:
        raise ApiError(409, f"device {board.serial} is not running its firmware ({board.record['Status']})")
    if board.busy or board.pending_flash is not None or board.flash_requests:
        raise ApiError(409, f"device {board.serial} is being flashed or restarted ({board.record['Status']})")
    if board.broken:
        raise ApiError(409, f"device {board.serial} is Broken ({board.record.get('StatusReason')})")
    outcome = await manager.blink(board)
    if not outcome.blinked:
        status = BLINK_STATUS.get(outcome.kind, 502)
        raise ApiError(status, f"device {board.serial} did not blink: {outcome.reason}")
    return Response(status_code=200)


def _local_mode_flag(value: str | None) -> bool:
    """The ``local_mode`` query parameter: ``true``/``1`` or ``false``/``0`` (absent: false), else a 400."""
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"the local_mode query parameter {value[:40]!r} is not true or false")


async def flash_device(request: Request) -> Response:
    """Flash a UF2 image (the request body) onto a device (picofleet). 202 once queued.

    ``?commit=C`` is recorded as the device's Commit once it runs the image (else Commit is null).
    A device that follows a fleet (docs/api.md, "Local mode") is refused (409) unless
    ``?local_mode=true``, which puts it in local mode: the fleet sync leaves it alone until
    ``PUT /v1/devices/{uuid}/local-mode {"LocalMode": false}``.
    """
    require_key(request)
    manager = gateway_of(request).manager
    board = _board_or_404(request)
    commit = _commit(request.query_params.get("commit"), "the commit query parameter")
    local_mode = _local_mode_flag(request.query_params.get("local_mode"))
    refusal = manager.local_mode_refusal(board)
    if refusal is not None and not local_mode:
        raise ApiError(409, refusal)
    body = await read_upload(request, manager.config.max_upload_bytes, "the upload")
    board_type = manager.board_types.get(str(board.record["BoardType"]))
    if board_type is None:
        raise ApiError(409, f"board type {board.record['BoardType']!r} has no plugin loaded")
    job = await asyncio.to_thread(_read_image, body, board_type)
    job.commit = commit
    try:
        await manager.request_flash(board, job, local_mode=local_mode)
    except FlashRefused as error:  # reserved, or following a fleet (also since the upload was read)
        raise ApiError(409, str(error)) from None
    except BoardError as error:  # the asset cache could not store it (disk full, read-only)
        raise ApiError(507, str(error)) from None
    return JSONResponse({"queued": True, "device": board.serial, "bytes": len(body)}, status_code=202)


async def put_local_mode(request: Request) -> Response:
    """Put a device in local mode or back to following its fleet (picofleet): body
    ``{"LocalMode": true|false}``; 200 with the device record. Off, the fleet sync applies the
    device's target to it at once (flashing it back to its fleet's release)."""
    require_key(request)
    manager = gateway_of(request).manager
    board = _board_or_404(request)
    body = json_object(await json_body(request), "the request body")
    local_mode = body.get("LocalMode")
    if not isinstance(local_mode, bool) or set(body) != {"LocalMode"}:
        raise ApiError(400, 'the body must be {"LocalMode": true} or {"LocalMode": false}')
    await manager.set_local_mode(board, local_mode)
    return JSONResponse(board.public())


ROUTES: list[BaseRoute] = [
    Route("/v1/devices", list_devices, methods=["GET"]),
    Route("/v1/devices/{uuid}", get_device, methods=["GET"]),
    Route("/v1/devices/{uuid}", put_device, methods=["PUT"]),
    Route("/v1/devices/{uuid}", delete_device, methods=["DELETE"]),
    Route("/v1/devices/{uuid}/restart", restart_device, methods=["PUT"]),
    Route("/v1/devices/{uuid}/identify", identify_device, methods=["PUT"]),
    Route("/v1/devices/{uuid}/flash", flash_device, methods=["POST"]),
    Route("/v1/devices/{uuid}/local-mode", put_local_mode, methods=["PUT"]),
]
"""The device routes, for ``create_app``."""
