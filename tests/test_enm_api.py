"""The ENM API, with the README's curl bodies, against a real gateway with virtual boards."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from picofleet.gateway.boards.record import ENM_FIELDS, EXTRA_FIELDS
from tests.helpers.boards import rack, rack_boards
from tests.helpers.gateway import GatewayProcess, running_gateway, wait_for

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("enm") / "data", 2) as process:
        yield process


def test_devices_lists_the_virtual_boards_with_enm_fields(gateway: GatewayProcess) -> None:
    devices = gateway.devices()
    serials = rack_boards(gateway.data)
    assert {device["LocalUUID"] for device in devices} == set(serials)
    for device in devices:
        assert list(device) == [*ENM_FIELDS, *EXTRA_FIELDS]
        assert device["BoardType"] == "pico2-ice"
        assert re.fullmatch(r"[0-9a-f]{32}", device["ResinUUID"])
        assert re.fullmatch(r"[a-z]+-[a-z]+", device["Name"])
        assert device["Status"] == "Idle"
        assert device["Port"] == serials[device["LocalUUID"]]["port"]
        assert device["FirmwareVersion"] == "picofleet-app 1.0.0"
        assert device["RestartFlag"] is False and device["DeleteFlag"] is False
    assert len({device["Name"] for device in devices}) == 2


def test_status_line_carries_the_reason_phrase_like_enm(gateway: GatewayProcess) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"GET /v1/enm/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")


def test_device_by_local_or_resin_uuid(gateway: GatewayProcess) -> None:
    device = gateway.devices()[0]
    for uuid in (device["LocalUUID"], device["ResinUUID"]):
        response = gateway.get(f"/v1/devices/{uuid}")
        assert response.status_code == 200
        assert response.json()["ResinUUID"] == device["ResinUUID"]


def test_readme_status_round_trip(gateway: GatewayProcess) -> None:
    response = gateway.put("/v1/enm/status", content='{"targetStatus":"Paused"}', headers=JSON)
    assert response.status_code == 200
    assert gateway.get("/v1/enm/status").json()["targetStatus"] == "Paused"
    wait_for(lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 5, "Paused")
    assert gateway.open_ports() == []
    response = gateway.put("/v1/enm/status", content='{"targetStatus":"Running"}', headers=JSON)
    assert response.status_code == 200
    assert gateway.get("/v1/enm/status").json() == {"currentStatus": "Running", "targetStatus": "Running"}
    wait_for(lambda: len(gateway.open_ports()) == 2, 2, "both ports reopened")


def test_supervisor_hook_sets_the_targets(gateway: GatewayProcess) -> None:
    uuid = gateway.devices()[0]["ResinUUID"]
    body = {
        "appId": 511898,
        "commit": "16b5cd4df8085d2872a6f6fc0c378629a185d78b",
        "environment": {"LED": "on"},
        "config": {"RESIN_HOST_TYPE": "pico2-ice"},
    }
    response = gateway.put(f"/v1/devices/{uuid}", json=body)
    assert response.status_code == 200
    device = gateway.get(f"/v1/devices/{uuid}").json()
    assert device["TargetCommit"] == body["commit"]
    assert device["TargetEnvironment"] == {"LED": "on"}
    assert device["TargetConfig"] == {"RESIN_HOST_TYPE": "pico2-ice"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("PUT", "/v1/enm/status", "{not json", 400, "malformed JSON"),
        (
            "PUT",
            "/v1/enm/status",
            '{"targetStatus":"Stopped"}',
            400,
            'targetStatus must be "Paused" or "Running"',
        ),
        ("PUT", "/v1/enm/status", "[]", 400, "must be a JSON object"),
        ("GET", "/v1/devices/nope", None, 404, "no device with LocalUUID or ResinUUID 'nope'"),
        ("PUT", "/v1/devices/nope", "{}", 404, "no device"),
        ("PUT", "/v1/devices/nope/restart", None, 404, "no device"),
        ("POST", "/v1/devices", None, 405, "method POST is not allowed"),
        ("GET", "/v2/nothing", None, 404, "no route GET /v2/nothing"),
    ],
)
def test_errors_are_4xx_with_a_json_reason(
    gateway: GatewayProcess, method: str, path: str, body: str | None, status: int, message: str
) -> None:
    before = (gateway.get("/v1/enm/status").json(), stored_fields(gateway.devices()))
    response = httpx.request(method, gateway.url + path, content=body, headers=JSON, timeout=10)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert (gateway.get("/v1/enm/status").json(), stored_fields(gateway.devices())) == before


def test_wrong_method_answers_405_naming_every_method_of_the_path(gateway: GatewayProcess) -> None:
    uuid = gateway.devices()[0]["LocalUUID"]
    for method, path, allow in [
        ("POST", "/v1/devices", "GET, HEAD"),
        ("POST", f"/v1/devices/{uuid}", "GET, HEAD, PUT, DELETE"),
        ("PATCH", "/v1/enm/status", "GET, HEAD, PUT"),
        ("DELETE", "/v1/reservations", "GET, HEAD, POST"),
    ]:
        response = httpx.request(method, gateway.url + path, timeout=10)
        assert response.status_code == 405, (method, path)
        assert response.json() == {"error": f"method {method} is not allowed on {path}"}
        assert response.headers["allow"] == allow, (method, path)


def stored_fields(devices: list[dict]) -> list[dict]:
    """What a request must not change: everything but the live fields."""
    return [
        {k: v for k, v in device.items() if k not in ("Port", "Progress", "Status")} for device in devices
    ]


def test_invalid_device_hook_bodies_change_nothing(gateway: GatewayProcess) -> None:
    device = gateway.devices()[0]
    uuid = device["LocalUUID"]
    for body, message in (
        ("{oops", "malformed JSON"),
        ('{"commit": 5}', "commit must be a string"),
        ('{"environment": "x"}', "environment must be a JSON object of string values"),
        ('{"config": {"A": 1}}', "config must be a JSON object of string values"),
        ('{"config": {"A": NaN}}', "malformed JSON: NaN is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "malformed JSON"),
    ):
        response = gateway.put(f"/v1/devices/{uuid}", content=body, headers=JSON)
        assert response.status_code == 400 and message in response.json()["error"]
    after = gateway.get(f"/v1/devices/{uuid}").json()
    assert {k: after[k] for k in ("TargetCommit", "TargetEnvironment", "TargetConfig")} == {
        k: device[k] for k in ("TargetCommit", "TargetEnvironment", "TargetConfig")
    }


def test_oversize_json_body_is_refused(gateway: GatewayProcess) -> None:
    response = gateway.put("/v1/enm/status", content=b" " * (1024 * 1024 + 1), headers=JSON)
    assert response.status_code == 413 and "at most 1048576 bytes" in response.json()["error"]


def test_openapi_describes_every_route(gateway: GatewayProcess) -> None:
    document = gateway.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    expected = {
        "/v1/enm/status": {"get", "put"},
        "/v1/devices": {"get"},
        "/v1/devices/{uuid}": {"get", "put", "delete"},
        "/v1/devices/{uuid}/restart": {"put"},
        "/v1/devices/{uuid}/identify": {"put"},
        "/v1/devices/{uuid}/flash": {"post"},
        "/openapi.json": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(document["paths"][path]), path


def test_identify_blinks_the_board(gateway: GatewayProcess) -> None:
    device = gateway.devices()[0]
    assert gateway.put(f"/v1/devices/{device['LocalUUID']}/identify").status_code == 200
    wait_for(lambda: rack_boards(gateway.data)[device["LocalUUID"]]["led_blinking"], 5, "the LED to blink")


def test_restart_reboots_the_board_and_clears_the_flag(gateway: GatewayProcess) -> None:
    device = gateway.devices()[0]
    serial = device["LocalUUID"]
    boots = rack_boards(gateway.data)[serial]["boots"]
    assert gateway.put(f"/v1/devices/{serial}/restart").status_code == 200
    assert gateway.get(f"/v1/devices/{serial}").json()["RestartFlag"] is True
    wait_for(lambda: rack_boards(gateway.data)[serial]["boots"] > boots, 10, "the board to reboot")
    after = wait_for(
        lambda: (
            (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Idle"
            and not d["RestartFlag"]
            and d
        ),
        10,
        "the board to be back and the flag cleared",
    )
    assert after["ResinUUID"] == device["ResinUUID"]
    assert after["Port"] == rack_boards(gateway.data)[serial]["port"]


def test_delete_forgets_the_board_and_it_is_provisioned_anew(gateway: GatewayProcess) -> None:
    device = gateway.devices()[0]
    assert httpx.delete(f"{gateway.url}/v1/devices/{device['ResinUUID']}", timeout=10).status_code == 200
    fresh = wait_for(
        lambda: next(
            (
                d
                for d in gateway.devices()
                if d["LocalUUID"] == device["LocalUUID"]
                and d["ResinUUID"] != device["ResinUUID"]
                and d["Status"] == "Idle"
            ),
            None,
        ),
        10,
        "the still-plugged board to be provisioned again",
    )
    assert fresh["DeleteFlag"] is False
    assert gateway.get(f"/v1/devices/{device['ResinUUID']}").status_code == 404


def test_sim_cli_lists_the_rack(gateway: GatewayProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "sim", "list", "--data", str(gateway.data)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for serial in rack_boards(gateway.data):
        assert serial in result.stdout
    assert rack(gateway.data, "list")["ok"]
