"""The evaluation endpoints of the gateway's API (docs/api.md, "Bitstreams" and "Evaluations").

* ``PUT /v1/bitstreams``: an ``.asc`` or ``.bin`` upload → 201 ``{"sha256", "size", "source"}``.
* ``GET``/``HEAD /v1/bitstreams/{sha256}``: 200 when stored (by the ``.bin``'s sha256, or an
  ``.asc`` upload's), else 404 — so clients skip uploads the gateway has.
* ``POST /v1/evaluations`` (``Authorization: Bearer <token>``): queue an evaluation and stream
  its results as NDJSON, one line per result as it completes, then a summary line.
* ``GET /v1/evaluations/{id}`` (same token): the results so far.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from picofleet.common.http.auth import bearer_token
from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body, json_object, read_upload
from picofleet.firmware.asset_cache import SHA256
from picofleet.gateway.evaluation.clients import Clients
from picofleet.gateway.evaluation.jobs import MODES, Evaluation, check_args
from picofleet.gateway.evaluation.scheduler import EvaluationScheduler
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.fields import serials_field

__all__ = ["ROUTES", "authorize", "get_bitstream", "get_evaluation", "post_evaluation", "put_bitstream"]

MAX_BITSTREAMS = 10_000
"""The most bitstreams one evaluation request may name."""
MAX_LABEL = 1000


def authorize(clients: Clients, request: Request, name: str) -> None:
    """403 unless the request carries the token of client ``name``."""
    token = bearer_token(request.headers)
    if token is None:
        raise ApiError(403, f"evaluations of {name!r} need its token: send Authorization: Bearer <token>")
    clients.check_token(name, token)  # a 403 ApiError unless it is name's


def _bitstream_list(value: Any) -> list[tuple[str, str | None]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, 'bitstreams must be a non-empty list of {"sha256", "label"?} objects')
    if len(value) > MAX_BITSTREAMS:
        raise ApiError(413, f"{len(value)} bitstreams in one request; at most {MAX_BITSTREAMS}")
    listed = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(400, f'bitstreams[{index}] must be an object {{"sha256", "label"?}}')
        sha, label = item.get("sha256"), item.get("label")
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise ApiError(400, f"bitstreams[{index}].sha256 must be 64 lower-case hex digits, not {sha!r}")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
            raise ApiError(
                400, f"bitstreams[{index}].label must be a string of at most {MAX_LABEL} characters"
            )
        unknown = sorted(set(item) - {"sha256", "label"})
        if unknown:
            raise ApiError(400, f"bitstreams[{index}]: unknown field {unknown[0]!r}")
        listed.append((sha, label))
    return listed


def _ndjson(line: dict[str, Any]) -> bytes:
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


async def put_bitstream(request: Request) -> Response:
    """Upload an ``.asc`` or ``.bin`` bitstream; 201 with the ``.bin``'s sha256."""
    api = gateway_of(request)
    body = await read_upload(request, api.max_bitstream_bytes, "a bitstream upload")
    try:
        stored = await api.evaluations.bitstreams.add(body)  # BitstreamRejected is an ApiError: its 4xx
    except OSError as error:
        raise ApiError(507, str(error)) from None
    return JSONResponse(stored.public(), status_code=201)


async def get_bitstream(request: Request) -> Response:
    """Whether a bitstream is stored (by its sha256, or an ``.asc`` upload's): 200 or 404."""
    sha = request.path_params["sha256"]
    if not SHA256.fullmatch(sha):
        raise ApiError(400, f"{sha!r} is not a sha256 (64 lower-case hex digits)")
    found = await gateway_of(request).evaluations.bitstreams.lookup(sha)
    if found is None:
        raise ApiError(404, f"no bitstream {sha} on the gateway")
    return JSONResponse(found.public())


async def post_evaluation(request: Request) -> Response:
    """Queue an evaluation; stream its results as NDJSON while the boards count."""
    api = gateway_of(request)
    scheduler, store = api.evaluations, api.evaluations.bitstreams
    body = json_object(await json_body(request), "the request body")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "name must be the client's name (a non-empty string)")
    authorize(api.clients, request, name)
    unknown = sorted(set(body) - {"name", "bitstreams", "serials", "mode", "args"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}")
    bitstreams = _bitstream_list(body.get("bitstreams"))
    serials = serials_field(body.get("serials"))
    mode = body.get("mode", "each")
    if mode not in MODES:
        raise ApiError(400, f'mode must be "each" or "any", not {json.dumps(mode)}')
    try:
        args = check_args(body.get("args"), "args")
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    async with store.no_collection():  # its bitstreams are not deleted while they are queued
        missing = await store.missing(sha for sha, _ in bitstreams)
        if missing:
            raise ApiError(
                422, f"bitstream {missing[0]} is not on the gateway: upload it first (PUT /v1/bitstreams)"
            )
        evaluation = scheduler.submit(name, bitstreams, mode, serials, args)  # or EvaluationRefused (4xx)
    return StreamingResponse(
        _stream(scheduler, evaluation),
        media_type="application/x-ndjson",
        headers={"X-Evaluation": evaluation.id, "Cache-Control": "no-store"},
    )


async def _stream(scheduler: EvaluationScheduler[Any], evaluation: Evaluation) -> AsyncIterator[bytes]:
    """The evaluation's results as NDJSON lines, then its summary; cancelled if the client goes away."""
    try:
        async for result in evaluation.follow():
            yield _ndjson(result)
        yield _ndjson(evaluation.summary())
    finally:
        if not evaluation.done:  # the client went away: nobody waits for the rest
            scheduler.cancel(evaluation, "cancelled: the client closed the result stream")


async def get_evaluation(request: Request) -> Response:
    """An evaluation's results so far (the token of its client)."""
    api = gateway_of(request)
    evaluation = api.evaluations.evaluations.get(request.path_params["id"])
    if evaluation is None:
        raise ApiError(404, f"no evaluation {request.path_params['id']!r} (finished ones are kept a while)")
    authorize(api.clients, request, evaluation.name)
    return JSONResponse(evaluation.public())


ROUTES: list[BaseRoute] = [
    Route("/v1/bitstreams", put_bitstream, methods=["PUT"]),
    Route("/v1/bitstreams/{sha256}", get_bitstream, methods=["GET", "HEAD"]),
    Route("/v1/evaluations", post_evaluation, methods=["POST"]),
    Route("/v1/evaluations/{id}", get_evaluation, methods=["GET"]),
]
"""The bitstream and evaluation routes, for ``create_app``."""
