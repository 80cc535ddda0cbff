"""Both services' OpenAPI documents say what the servers do (issue #13, item 9): the fleet service
has one at /openapi.json listing exactly its routes, and the gateway's event WebSocket answers a
plain GET with the 426 its document names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from picofleet.fleet.http.app import create_app
from tests.helpers.fleet import FleetProcess
from tests.helpers.gateway import GatewayProcess, running_gateway

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def fleet_routes() -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route of the fleet service's application."""
    service = SimpleNamespace(repos=None, admin_token="x", answer_known=None, login_throttle=None)
    app: Any = create_app(service)  # type: ignore[arg-type]
    routes = set()
    for route in app.app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} -> {path}
        routes |= {(path, method.lower()) for method in route.methods or ()}
    return routes


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    paths = document["paths"].items()
    return {(path, method) for path, item in paths for method in item if method in METHODS}


def test_the_fleet_document_lists_exactly_its_routes(fleet: FleetProcess) -> None:
    response = fleet.request("GET", "/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.1")
    routes = fleet_routes()
    document = documented(response.json())
    # Starlette answers HEAD wherever GET is routed; the document names HEAD where it means it
    assert document - routes == set()
    assert {(path, method) for path, method in routes if method != "head"} - document == set()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(Path(tmp_path_factory.mktemp("documents")), 1) as process:
        yield process


def test_a_plain_get_of_the_event_websocket_is_426_as_documented(gateway: GatewayProcess) -> None:
    response = gateway.get("/v1/events")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert "is a WebSocket" in response.json()["error"]
    responses = gateway.get("/openapi.json").json()["paths"]["/v1/events"]["get"]["responses"]
    assert {"101", "403", "426"} <= set(responses)
    wrong = httpx.post(gateway.url + "/v1/events", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"


def test_client_names_and_bitstream_bodies_carry_their_constraints(gateway: GatewayProcess) -> None:
    paths = gateway.get("/openapi.json").json()["paths"]
    name = paths["/v1/reservations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert not re.fullmatch(name["properties"]["name"]["pattern"].strip("^$"), "")
    assert gateway_reserve(gateway, {"name": ""}).status_code == 400
    upload = paths["/v1/bitstreams"]["put"]["requestBody"]["content"]
    assert set(upload) == {"application/octet-stream", "text/plain"}
    assert all(body["schema"]["minLength"] == 1 for body in upload.values())


def gateway_reserve(gateway: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/reservations", json=body, timeout=10)
