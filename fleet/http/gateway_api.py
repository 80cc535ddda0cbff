"""The routes gateways call (docs/fleet-api.md, "Gateways"): provisioning with a fleet's
provisioning key, then, with the gateway's own key, board reports, target state (ETag, long
poll), board log lines and the release assets of its fleet."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, query_number
from picofleet.fleet.http.auth import GatewayKeyRequired, is_admin, require_gateway
from picofleet.fleet.http.context import gateway_key, service_of
from picofleet.fleet.state_checks import GENERATION_HEADER
from picofleet.fleet.store import key_hash, now_iso
from picofleet.fleet.targets import MAX_BOARDS, BoardReportError, etag_matches, new_key, validate_report

__all__ = ["asset", "post_logs", "provision", "report_state", "target_state"]

MAX_WAIT = 60
"""The longest long poll, in seconds (``?wait=N``)."""
MAX_REPORT_BODY = MAX_BOARDS * 4096
"""The largest board report accepted: 4 KiB per board (a 413 beyond)."""
MAX_LOG_BATCH = 1000
"""Lines per ``POST /v1/gateway/logs`` (the gateway sends at most 500)."""
MAX_LOG_TEXT = 4096
MAX_LOG_BODY = 16 * 1024 * 1024
"""The largest log batch accepted: the gateway's 500 lines of 2,048 characters fit even with every
character ``\\u``-escaped (a 413 beyond)."""
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
SHA256 = re.compile(r"[0-9a-f]{64}")


async def provision(request: Request) -> JSONResponse:
    """``POST /v1/gateways {"provisioning_key", "name"?}``: register a gateway in the key's fleet;
    201 ``{"gateway", "key", "fleet"}`` (the key is shown only here); wrong key: 401."""
    service = service_of(request)
    store = service.store
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("provisioning_key"), str):
        raise ApiError(400, 'the body must be JSON: {"provisioning_key": "...", "name": "optional"}')
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 128):
        raise ApiError(400, "name: must be a string of at most 128 characters")
    fleet = await store.fleet_by_provisioning_key(body["provisioning_key"])
    if fleet is None or not body["provisioning_key"]:
        raise ApiError(401, "wrong provisioning key")
    gateway_id, key = uuid.uuid4().hex, new_key("gk")
    await store.add_gateway(
        {
            "id": gateway_id,
            "fleet": fleet["name"],
            "name": name or f"gateway-{gateway_id[:7]}",
            "key_sha256": key_hash(key),
            "created": now_iso(),
            "last_seen": None,
            "boards": [],
        }
    )
    service.changes.publish(gateway_key(fleet["name"], gateway_id))
    return JSONResponse({"gateway": gateway_id, "key": key, "fleet": fleet["name"]}, status_code=201)


async def report_state(request: Request) -> JSONResponse:
    """``PUT /v1/gateway/state {"boards": [...]}``: the gateway's full current board list."""
    gateway = await require_gateway(request)
    service = service_of(request)
    try:
        boards = validate_report(await json_body(request, MAX_REPORT_BODY))
    except BoardReportError as error:
        raise ApiError(400, str(error)) from None
    record = await service.store.gateway(gateway.id)
    reported = (record or {}).get("boards") or []
    before = [(b["LocalUUID"], b["BoardType"]) for b in reported]
    await service.store.report_boards(gateway.id, boards, now_iso())
    if before != [(b["LocalUUID"], b["BoardType"]) for b in boards]:
        service.gateway_changed(gateway)
    if reported != boards:  # live views show the boards' status, progress, commit …
        service.changes.publish(gateway_key(gateway.fleet, gateway.id))
    return JSONResponse({"gateway": gateway.id, "boards": len(boards)})


async def post_logs(request: Request) -> JSONResponse:
    """``POST /v1/gateway/logs {"lines": [{"board", "time", "level", "text"}], "dropped"?}``:
    board log lines; lines of boards the gateway has not reported are ignored (counted)."""
    gateway = await require_gateway(request)
    service = service_of(request)
    body = await json_body(request, MAX_LOG_BODY)
    lines = body.get("lines") if isinstance(body, dict) else None
    if not isinstance(lines, list) or len(lines) > MAX_LOG_BATCH:
        raise ApiError(
            400,
            'the body must be JSON: {"lines": [{"board", "time", "level", "text"}, ...]}'
            f" (at most {MAX_LOG_BATCH} lines)",
        )
    checked: list[tuple[str, dict[str, str]]] = []
    for n, line in enumerate(lines):
        fields = [line.get(k) if isinstance(line, dict) else None for k in ("board", "time", "level", "text")]
        strings = [f for f in fields if isinstance(f, str)]
        if len(strings) != len(fields) or not strings[0] or len(strings[0]) > 128:
            raise ApiError(400, f"lines[{n}]: board, time, level and text must be strings (board 1..128)")
        board, time_, level, text = strings
        level = level.lower() if level.lower() in LOG_LEVELS else "info"
        checked.append((board, {"time": time_[:64], "level": level, "text": text[:MAX_LOG_TEXT]}))
    dropped = body.get("dropped")
    if isinstance(dropped, float) and dropped.is_integer():
        dropped = int(dropped)  # 5.0 is a whole number (JSON Schema's "integer" says so too)
    if dropped is not None and (isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0):
        raise ApiError(400, f"dropped: the lines the gateway dropped, a whole number >= 0, not {dropped!r}")
    if dropped is not None:
        service.logs_dropped[gateway.id] = dropped
    record = await service.store.gateway(gateway.id)
    reported = {b["LocalUUID"] for b in (record or {}).get("boards") or []}
    accepted = ignored = 0
    for board, entry in checked:
        if board in reported:
            line = {**entry, "gateway": gateway.id}
            service.logs.add(gateway.fleet, board, line)
            service.log_followers.publish(gateway.fleet, board, line)
            accepted += 1
        else:
            ignored += 1
    if ignored:
        service.logs_ignored[gateway.id] = service.logs_ignored.get(gateway.id, 0) + ignored
    return JSONResponse({"gateway": gateway.id, "accepted": accepted, "ignored": ignored})


async def target_state(request: Request) -> Response:
    """``GET /v1/gateway/state[?wait=N]``: the gateway's target state with an ``ETag``; 304 when
    ``If-None-Match`` names it (after waiting up to N ≤ 60 s for a change with ``wait``)."""
    gateway = await require_gateway(request)
    service = service_of(request)
    wait = query_number(
        request, "wait", "0", float, (0, MAX_WAIT), f"wait: a number of seconds from 0 to {MAX_WAIT}"
    )
    if wait and service.closing:  # an immediate 304 would have the gateway ask again at once
        raise ApiError(503, "the fleet service is stopping; ask again in a moment", {"Retry-After": "2"})
    known = request.headers.get("if-none-match")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        changed = service.change_event(gateway.fleet)  # taken before reading: no change is missed
        # Read before the target: a target is never labelled with a newer generation than its own.
        generation = str(service.generation)
        try:
            body, etag = await service.target(gateway)
        except LookupError as error:
            raise ApiError(404, str(error)) from None
        headers = {"ETag": etag, GENERATION_HEADER: generation}
        if not etag_matches(known, etag):
            return Response(body, media_type="application/json", headers=headers)
        remaining = deadline - loop.time()
        if remaining <= 0 or service.closing:
            return Response(status_code=304, headers=headers)
        with contextlib.suppress(TimeoutError), service.metrics.long_poll(gateway.id):
            await asyncio.wait_for(changed.wait(), remaining)


async def asset(request: Request) -> Response:
    """``GET /v1/assets/{sha256}``: an asset of a release of the caller's fleet (any fleet for
    the admin), streamed, with ``Range`` support (206, 416)."""
    service = service_of(request)
    gateway = await service.gateway_of(request)  # a gateway's own key first: not a wrong admin token
    if gateway is not None:
        fleets = [gateway.fleet]
    elif is_admin(request):
        fleets = [f["name"] for f in await service.store.fleets()]
    else:
        raise GatewayKeyRequired()
    sha256 = request.path_params["sha256"]
    if not SHA256.fullmatch(sha256):
        raise ApiError(404, f"no asset {sha256!r}")
    referenced = False
    for fleet in fleets:
        for release in await service.store.releases(fleet):
            for board in (release.get("boards") or {}).values():
                fpga = board.get("fpga")  # the release's iCE40 image for the board type, if any
                if sha256 in (board.get("sha256"), fpga.get("sha256") if isinstance(fpga, dict) else None):
                    referenced = True
    path = service.assets.path_of(sha256)
    if not referenced or not path.is_file():
        raise ApiError(404, f"no asset {sha256} in a release of your fleet")
    return FileResponse(path, media_type="application/octet-stream", headers={"ETag": f'"{sha256}"'})
