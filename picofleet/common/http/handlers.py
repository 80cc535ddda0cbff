"""Errors turned into JSON in one place: the exception handlers both services' applications install.

* :class:`~.errors.ApiError` → ``{"error": message}`` with its status and headers;
* no route → 404 ``{"error": "no route GET /x"}``;
* a route that does not take the method → 405 ``{"error": "method POST is not allowed on /x"}``
  with an ``Allow`` header naming every method the path takes (Starlette's names only the first
  route's when several routes share a path);
* anything else Starlette raises as an ``HTTPException`` → its status and detail;
* an unexpected exception → 500 ``{"error": ...}`` (Starlette still re-raises it to be logged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from picofleet.common.http.errors import ApiError, error_response

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The order of the methods in an ``Allow`` header."""

Handler = Callable[[Request, Exception], Awaitable[Response]]


def allowed_methods(request: Request) -> list[str]:
    """Every method a route of the request's application takes on the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods, key=_method_rank)


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, f"no route {request.method} {request.url.path}")
    if exc.status_code == 405:
        return error_response(
            405,
            f"method {request.method} is not allowed on {request.url.path}",
            {"Allow": ", ".join(allowed_methods(request))},
        )
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error: see the service's log")


def exception_handlers() -> dict[Any, Handler]:
    """The ``exception_handlers`` of a Starlette application answering every error as JSON."""
    return {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
