"""`PICOFLEET_API_KEY`: with a key set, a gateway on 0.0.0.0 refuses the state-changing ENM routes
without it (401, nothing changed), takes them with `X-Api-Key` or the panel's session cookie plus
the CSRF header, and keeps its reads, reservations and event stream open. The key is never shown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from picofleet.gateway.http.guard import PANEL_SUBJECT, session_cookies
from tests.helpers.boards import app_uf2, rack_boards
from tests.helpers.gateway import GatewayProcess, idle_boards, run_gateway_command

KEY = "k3y-" + "0123456789abcdef" * 2
JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


def panel_cookie(key: str) -> str:
    """The session cookie the panel's sign-in issues for ``key`` (as ``name=value``)."""
    cookies = session_cookies(key)
    assert cookies is not None
    response = Response()
    request = Request({"type": "http", "scheme": "http", "path": "/", "headers": [], "server": ("x", 80)})
    cookies.issue(request, response, PANEL_SUBJECT)
    return response.headers["set-cookie"].split(";", 1)[0]


@pytest.fixture
def keyed(gateway_factory) -> GatewayProcess:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2", env={"PICOFLEET_API_KEY": KEY})
    idle_boards(gateway, 2)
    return gateway


def changes(gateway: GatewayProcess, serial: str) -> list[tuple[str, str, dict[str, object]]]:
    """Every guarded route, as (method, path, request arguments) for board ``serial``."""
    return [
        ("PUT", "/v1/enm/status", {"content": '{"targetStatus":"Paused"}', "headers": JSON}),
        ("PUT", "/v1/enm/identify", {}),
        ("PUT", f"/v1/devices/{serial}", {"json": {"commit": "abc"}}),
        ("DELETE", f"/v1/devices/{serial}", {}),
        ("PUT", f"/v1/devices/{serial}/restart", {}),
        ("PUT", f"/v1/devices/{serial}/identify", {}),
        ("POST", f"/v1/devices/{serial}/flash?commit=c1", {"content": app_uf2("9.0.0"), "headers": OCTETS}),
        ("PUT", f"/v1/devices/{serial}/local-mode", {"json": {"LocalMode": True}}),
    ]


def send(gateway: GatewayProcess, method: str, path: str, arguments: dict, **headers: str) -> httpx.Response:  # type: ignore[type-arg]
    merged = {**arguments.get("headers", {}), **headers}
    rest = {name: value for name, value in arguments.items() if name != "headers"}
    return httpx.request(method, gateway.url + path, headers=merged, timeout=30, **rest)


def test_without_the_key_nothing_changes(keyed: GatewayProcess) -> None:
    serial = keyed.devices()[0]["LocalUUID"]
    before = keyed.devices()
    flashes = rack_boards(keyed.data)[serial]["flashes"]
    wrong_keys = 0
    for method, path, arguments in changes(keyed, serial):
        for headers in ({}, {"X-Api-Key": "wrong-" + KEY}, {"X-Api-Key": ""}):
            response = send(keyed, method, path, arguments, **headers)
            message = response.json()["error"]
            assert "nothing was changed" in message and KEY not in message
            if headers and wrong_keys >= 5:  # the key cannot be guessed at network speed
                assert response.status_code == 429, (method, path, headers, response.text)
                assert "too many wrong API keys" in message and int(response.headers["Retry-After"]) > 0
            else:
                assert response.status_code == 401, (method, path, headers, response.text)
                assert "X-Api-Key" in message
            wrong_keys += bool(headers)
    # throttled, even the right key waits out the minute
    assert send(keyed, "PUT", "/v1/enm/identify", {}, **{"X-Api-Key": KEY}).status_code == 429
    assert keyed.devices() == before  # no target, delete, restart, local mode, flash queued
    assert keyed.get("/v1/enm/status").json() == {"currentStatus": "Running", "targetStatus": "Running"}
    assert rack_boards(keyed.data)[serial]["flashes"] == flashes


def test_with_the_key_the_routes_work(keyed: GatewayProcess) -> None:
    serial = keyed.devices()[0]["LocalUUID"]
    key = {"X-Api-Key": KEY}
    target = keyed.put(f"/v1/devices/{serial}", json={"commit": "abc"}, headers=key)
    assert target.status_code == 200, target.text
    assert keyed.get(f"/v1/devices/{serial}").json()["TargetCommit"] == "abc"
    local = keyed.put(f"/v1/devices/{serial}/local-mode", json={"LocalMode": True}, headers=key)
    assert local.status_code == 200 and local.json()["LocalMode"] is True
    paused = keyed.put("/v1/enm/status", content='{"targetStatus":"Paused"}', headers={**JSON, **key})
    assert paused.status_code == 200, paused.text
    assert keyed.get("/v1/enm/status").json()["targetStatus"] == "Paused"
    # outside balena the gateway's own identify is refused for that reason, past the key
    assert keyed.put("/v1/enm/identify", headers=key).status_code == 409


def test_reads_reservations_and_the_event_stream_stay_open(keyed: GatewayProcess) -> None:
    for path in (
        "/v1/devices",
        "/v1/enm/status",
        "/v1/reservations",
        "/v1/gateway",
        "/metrics",
        "/openapi.json",
    ):
        assert keyed.get(path).status_code == 200, path
    serial = keyed.devices()[0]["LocalUUID"]
    assert keyed.get(f"/v1/devices/{serial}").status_code == 200
    with httpx.stream("GET", f"{keyed.url}/v1/gateway/events", timeout=10) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()) == "event: devices"
    created = httpx.post(f"{keyed.url}/v1/reservations", json={"name": "alice", "count": 1}, timeout=30)
    assert created.status_code == 201, created.text  # the client's own token, not the key


def test_the_panel_session_needs_the_csrf_header(keyed: GatewayProcess) -> None:
    body = {"content": '{"targetStatus":"Paused"}', "headers": JSON}
    cookie = {"Cookie": panel_cookie(KEY)}
    refused = send(keyed, "PUT", "/v1/enm/status", body, **cookie)
    assert refused.status_code == 403 and "X-Picofleet-Request" in refused.json()["error"]
    assert keyed.get("/v1/enm/status").json()["targetStatus"] == "Running"
    other = send(keyed, "PUT", "/v1/enm/status", body, Cookie=panel_cookie("another-key-" + KEY))
    assert other.status_code == 401  # signed under another key: no session
    taken = send(keyed, "PUT", "/v1/enm/status", body, **cookie, **{"X-Picofleet-Request": "1"})
    assert taken.status_code == 200, taken.text
    assert keyed.get("/v1/enm/status").json()["targetStatus"] == "Paused"


def test_the_key_is_never_shown(keyed: GatewayProcess, tmp_path: Path) -> None:
    for path in ("/v1/gateway", "/openapi.json", "/metrics", "/v1/devices"):
        assert KEY not in keyed.get(path).text
    assert KEY not in keyed.output()
    bad = "short key"
    refused = run_gateway_command(tmp_path / "bad", "--port", "0", env={"PICOFLEET_API_KEY": bad})
    assert refused.returncode == 2
    assert "invalid api_key value (from PICOFLEET_API_KEY): must be 16 to 4096" in refused.stderr
    assert bad not in refused.stderr


def test_the_key_can_come_from_a_file(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    gateway = gateway_factory("--simulate", "1", "--api-key-file", str(key_file))
    idle_boards(gateway, 1)
    status = '{"targetStatus":"Paused"}'
    assert gateway.put("/v1/enm/status", content=status, headers=JSON).status_code == 401
    assert (
        gateway.put("/v1/enm/status", content=status, headers={**JSON, "X-Api-Key": KEY}).status_code == 200
    )
    both = run_gateway_command(
        tmp_path / "both", "--port", "0", "--api-key-file", str(key_file), env={"PICOFLEET_API_KEY": KEY}
    )
    assert both.returncode == 2 and "both give the API key" in both.stderr
