"""git push → every virtual board on two gateways reaches the commit; a second push; a board pin.

A real fleet service, two real gateway processes with virtual boards, and the real git client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess, git
from tests.helpers.fleet_repo import next_release, push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for

pytestmark = pytest.mark.timeout(180)


def converged(gateways: list[GatewayProcess], commit_of: Callable[[dict], str]) -> Callable[[], bool]:
    def check() -> bool:
        for gateway in gateways:
            for device in gateway.devices():
                want = commit_of(device)
                if not (device["Commit"] == device["TargetCommit"] == want and device["Status"] == "Idle"):
                    return False
        return True

    return check


def test_push_converges_two_gateways_and_a_board_pin_takes_one_back(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    created = fleet.create_fleet("lab")
    key = created["provisioning_key"]
    gateways = [
        GatewayProcess(
            tmp_path / f"gw{n}", "--simulate", "2", "--fleet", fleet.url, f"--provisioning-key={key}"
        ).start()
        for n in (1, 2)
    ]
    try:
        for gateway in gateways:
            idle_boards(gateway, 2)

        work = tmp_path / "repo"
        first = push_first_release(fleet, work)
        wait_for(converged(gateways, lambda _: first), 60, "every board at the first release", interval=0.2)
        device = gateways[0].devices()[0]
        assert device["FirmwareVersion"] == "picofleet-app 2.0.0"
        assert device["TargetEnvironment"]["MODE"] == "lab"

        second = next_release(work, "3.0.0")
        git(work, "push", "-q", fleet.push_url("lab"), "main")
        wait_for(converged(gateways, lambda _: second), 60, "every board at the second release", interval=0.2)

        pinned = gateways[1].devices()[0]["LocalUUID"]
        response = fleet.request("PUT", f"/v1/fleets/lab/boards/{pinned}/pin", json={"commit": first})
        assert response.status_code in (200, 204), response.text
        wait_for(
            converged(gateways, lambda d: first if d["LocalUUID"] == pinned else second),
            60,
            "only the pinned board back at the first release",
            interval=0.2,
        )
        assert gateways[1].get(f"/v1/devices/{pinned}").json()["FirmwareVersion"] == "picofleet-app 2.0.0"
    finally:
        for gateway in gateways:
            gateway.stop()
