"""The operator's routes of variables (admin token): a fleet's or one board's ``env`` and
``config`` variables. ``GET …/{kind}`` lists them; ``PUT …/{kind}/{key} {"value"}`` and
``DELETE …/{kind}/{key}`` change one and answer the resulting set. The routes of a board have
``{uuid}`` in their path; ``kind`` is bound by the route table (``functools.partial``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from picofleet.common.http.errors import ApiError
from picofleet.common.http.reading import json_body
from picofleet.fleet.http.auth import admin_board, admin_fleet
from picofleet.fleet.http.context import service_of
from picofleet.fleet.targets import MAX_VALUE, variable_key_error

__all__ = ["delete_variable", "list_variables", "put_variable"]


async def _variables(request: Request, kind: str) -> tuple[str, str | None, dict[str, str]]:
    """The fleet's name, the board (``None`` for the fleet's own) and its current ``kind`` variables."""
    if "uuid" in request.path_params:
        fleet, board = await admin_board(request)
        current = (await service_of(request).store.board_settings(fleet["name"])).get(board) or {}
        return fleet["name"], board, dict(current.get(kind) or {})
    fleet = await admin_fleet(request)
    return fleet["name"], None, dict(fleet.get(kind) or {})


def _key(request: Request, kind: str) -> str:
    key: str = request.path_params["key"]
    problem = variable_key_error(kind, key)
    if problem:
        raise ApiError(400, problem)
    return key


async def _save(
    request: Request, kind: str, fleet: str, board: str | None, variables: dict[str, str]
) -> None:
    service = service_of(request)
    if board is not None:
        await service.store.update_board_settings(fleet, board, **{kind: variables})
    else:
        await service.store.update_fleet(fleet, **{kind: variables})
    service.fleet_changed(fleet)


async def list_variables(kind: str, request: Request) -> JSONResponse:
    """``GET /v1/fleets/{name}[/boards/{uuid}]/{kind}``: the fleet's or board's variables."""
    return JSONResponse((await _variables(request, kind))[2])


async def put_variable(kind: str, request: Request) -> JSONResponse:
    """``PUT /v1/fleets/{name}[/boards/{uuid}]/{kind}/{key} {"value"}``: set one; the resulting set."""
    fleet, board, variables = await _variables(request, kind)
    key = _key(request, kind)
    body = await json_body(request)
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, str) or len(value) > MAX_VALUE:
        raise ApiError(400, f'the body must be JSON: {{"value": "<a string of at most {MAX_VALUE}>"}}')
    variables[key] = value
    await _save(request, kind, fleet, board, variables)
    return JSONResponse(variables)


async def delete_variable(kind: str, request: Request) -> JSONResponse:
    """``DELETE /v1/fleets/{name}[/boards/{uuid}]/{kind}/{key}``: unset one (404 if it is not set);
    the resulting set."""
    fleet, board, variables = await _variables(request, kind)
    key = _key(request, kind)
    if key not in variables:
        raise ApiError(404, f"{kind} variable {key} is not set")
    del variables[key]
    await _save(request, kind, fleet, board, variables)
    return JSONResponse(variables)
