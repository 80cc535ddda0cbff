"""The JSON error handlers both services install (picofleet/common/http/handlers.py), in process."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from picofleet.common.http.errors import ApiError
from picofleet.common.http.handlers import exception_handlers


async def _refuse(request: Request) -> Response:
    raise ApiError(409, "not now", {"Retry-After": "2"})


async def _crash(request: Request) -> Response:
    raise RuntimeError("a bug")


APP = Starlette(
    routes=[
        Route("/thing", _refuse, methods=["PUT"]),
        Route("/thing", _crash, methods=["DELETE"]),
        Route("/crash", _crash, methods=["GET"]),
    ],
    exception_handlers=exception_handlers(),
)


def request(method: str, path: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path)

    return asyncio.run(send())


def test_api_errors_keep_their_status_and_headers() -> None:
    response = request("PUT", "/thing")
    assert (response.status_code, response.json()) == (409, {"error": "not now"})
    assert response.headers["retry-after"] == "2"


def test_unknown_route_and_wrong_method() -> None:
    missing = request("GET", "/nothing")
    assert (missing.status_code, missing.json()) == (404, {"error": "no route GET /nothing"})
    wrong = request("POST", "/thing")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "method POST is not allowed on /thing"})
    assert wrong.headers["allow"] == "PUT, DELETE"  # every route of the path, not only the first


def test_an_unexpected_exception_is_a_json_500() -> None:
    response = request("GET", "/crash")
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "internal error: see the service's log"}
