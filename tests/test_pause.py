"""Pause frees every serial port (seen in /proc/<pid>/fd) before it says Paused; Running reopens them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import serial

from picofleet.firmware.host.protocol import FirmwareClient
from tests.helpers.boards import app_uf2, rack_boards
from tests.helpers.gateway import idle_boards, wait_for
from tests.helpers.slow_plugins import SLOW_CLOSE, write_plugin

JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


def set_status(gateway, status: str) -> None:  # type: ignore[no-untyped-def]
    response = gateway.put("/v1/enm/status", content=f'{{"targetStatus":"{status}"}}', headers=JSON)
    assert response.status_code == 200


def test_pause_closes_ports_then_running_reopens_them(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "3")
    devices = gateway.wait_devices(
        lambda d: len(d) == 3 and all(x["Port"] for x in d), 15, "3 boards with ports"
    )
    ports = {device["Port"] for device in devices}
    assert set(gateway.open_ports()) == ports

    set_status(gateway, "Paused")
    wait_for(
        lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 10, "currentStatus Paused"
    )
    assert gateway.open_ports() == []  # already closed when it said Paused
    assert all(device["Port"] is None for device in gateway.devices())

    # what pausing is for: user code opens a board's port (exclusively) and talks to the firmware
    port_path = sorted(ports)[0]
    with serial.Serial(port_path, 115200, timeout=0.1, exclusive=True) as port:
        assert FirmwareClient(port).identify()["firmware"] == "picofleet-app"
    time.sleep(0.3)
    assert gateway.open_ports() == []  # the paused gateway keeps its hands off

    # hooks are still recorded while paused
    uuid = devices[0]["LocalUUID"]
    assert gateway.put(f"/v1/devices/{uuid}", json={"commit": "abc"}).status_code == 200
    assert gateway.get(f"/v1/devices/{uuid}").json()["TargetCommit"] == "abc"

    started = time.monotonic()
    set_status(gateway, "Running")
    wait_for(lambda: len(gateway.open_ports()) == 3, 5, "the ports to be reopened")
    assert time.monotonic() - started < 1.0
    assert gateway.get("/v1/enm/status").json()["currentStatus"] == "Running"


def test_target_status_survives_a_restart(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    gateway.wait_devices(lambda d: len(d) == 1, 15, "one board")
    set_status(gateway, "Paused")
    gateway.stop()
    again = gateway_factory("--simulate", "1")
    assert again.get("/v1/enm/status").json()["targetStatus"] == "Paused"
    wait_for(
        lambda: again.get("/v1/enm/status").json()["currentStatus"] == "Paused", 10, "Paused after restart"
    )
    again.wait_devices(
        lambda d: len(d) == 1 and d[0]["Status"] != "Offline", 15, "the board seen while paused"
    )
    assert again.open_ports() == []


def test_never_paused_while_a_port_is_still_open(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_plugin(tmp_path / "site", "slow_close", SLOW_CLOSE)
    gateway = gateway_factory("--simulate", "2", env={"PYTHONPATH": str(tmp_path / "site")})
    gateway.wait_devices(lambda d: len(d) == 2 and all(x["Port"] for x in d), 15, "2 boards with ports")
    set_status(gateway, "Paused")
    observations = 0

    def paused() -> bool:
        nonlocal observations
        status = gateway.get("/v1/enm/status").json()["currentStatus"]
        still_open = gateway.open_ports()
        if status == "Paused":
            assert still_open == [], "said Paused while a port was still open"
            return True
        observations += 1
        return False

    wait_for(paused, 10, "Paused", interval=0, fail_on=Exception)
    assert observations > 3  # the slow close was seen in progress, so the check above meant something


def test_a_flash_in_flight_finishes_before_paused_and_requests_wait_for_running(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    response = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash?commit=before-pause",
        content=app_uf2("2.0.0", size=512 * 1024),
        headers=OCTETS,
        timeout=30,
    )
    assert response.status_code == 202
    set_status(gateway, "Paused")
    wait_for(lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 30, "Paused")
    device = gateway.get(f"/v1/devices/{serial}").json()
    assert device["Commit"] == "before-pause"  # finished, not abandoned half-written
    assert device["FirmwareVersion"] == "picofleet-app 2.0.0"
    assert gateway.open_ports() == []

    # requests made while paused are stored, and carried out once running
    boots = rack_boards(gateway.data)[serial]["boots"]
    assert gateway.put(f"/v1/devices/{serial}/restart").status_code == 200
    identify = gateway.put(f"/v1/devices/{serial}/identify")
    assert identify.status_code == 409 and "paused" in identify.json()["error"]
    assert gateway.get(f"/v1/devices/{serial}").json()["RestartFlag"] is True
    set_status(gateway, "Running")
    wait_for(lambda: rack_boards(gateway.data)[serial]["boots"] > boots, 10, "the stored restart carried out")
    wait_for(
        lambda: gateway.get(f"/v1/devices/{serial}").json()["RestartFlag"] is False, 10, "the flag cleared"
    )
