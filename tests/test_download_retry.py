"""An asset the gateway could not download is fetched again by itself, without a new target.

A real fleet service and a gateway with a virtual board: the release's firmware is missing from
the fleet's asset store when the gateway first learns of the release (the download fails), then
comes back; the board converges with no new push, within the gateway's back-off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers.boards import app_uf2
from tests.helpers.fleet import FleetProcess, git
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import commit, write

pytestmark = pytest.mark.timeout(180)

SIM_ENV = {"PICOFLEET_SIM_REBOOT_DELAY": "0.05", "PICOFLEET_SIM_BOOT_DELAY": "0.05"}


def test_a_failed_firmware_download_is_retried_until_the_board_converges(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    args = ("--simulate", "1:pico2-ice", "--fleet", fleet.url, f"--provisioning-key={key}")
    gateway = GatewayProcess(tmp_path / "gw", *args, env=SIM_ENV).start()
    try:
        (board,) = idle_boards(gateway, 1)
        gateway.stop()  # the release is made while the gateway is away ...
        work = tmp_path / "repo"
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        image = app_uf2("2.0.0")
        write(
            work,
            {"fleet.yml": "boards:\n  pico2-ice:\n    firmware: build/app.uf2\n", "build/app.uf2": image},
        )
        head = commit(work, "app 2.0.0")
        git(work, "push", fleet.push_url("lab"), "main")
        sha256 = hashlib.sha256(image).hexdigest()
        (stored,) = (fleet.data / "assets").rglob(sha256)
        hidden = stored.with_name("hidden")
        stored.rename(hidden)  # ... and its firmware is missing when the gateway comes back
        gateway.start()
        wait_for(
            lambda: "cannot get the firmware" in gateway.output(), 30, "the gateway to fail the download"
        )
        assert gateway.get(f"/v1/devices/{board['LocalUUID']}").json()["Commit"] is None
        hidden.rename(stored)
        device = wait_for(
            lambda: (
                (d := gateway.get(f"/v1/devices/{board['LocalUUID']}").json())["Commit"] == head
                and d["Status"] == "Idle"
                and d
            ),
            30,
            "the board to converge without a new push",
        )
        assert device["FirmwareVersion"] == "picofleet-app 2.0.0"
    finally:
        gateway.stop()
