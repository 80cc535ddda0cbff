"""Local mode (issue 14, item 3): a board that follows a fleet is flashed by hand only in local mode,
which the fleet sees and the sync respects until the operator hands the board back; and a board
flashed behind the gateway's back (its flash rewritten, then replugged) is re-converged.

A real fleet service, a real gateway process with a virtual board, the real git client and the
real `picofleet` commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from picofleet.common.atomic import atomic_write_bytes
from picofleet.firmware.formats import uf2
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.manager import FlashRefused
from tests.helpers.boards import rack, rack_boards
from tests.helpers.fleet import FleetProcess, fleet_cli, git
from tests.helpers.fleet_repo import next_release, push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import app_uf2
from tests.test_reservations import gateway_in_process

pytestmark = pytest.mark.timeout(180)

OCTETS = {"Content-Type": "application/octet-stream"}


def picofleet(*args: str) -> subprocess.CompletedProcess[str]:
    """``picofleet ARGS`` run to its end (60 s at most), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )


def device(gateway: GatewayProcess, serial: str) -> dict[str, Any]:
    response = gateway.get(f"/v1/devices/{serial}")
    assert response.status_code == 200, response.text
    return response.json()


def at(gateway: GatewayProcess, serial: str, commit: str | None, version: str) -> dict[str, Any] | None:
    """The device once it is Idle on ``commit`` running picofleet-app ``version``."""
    record = device(gateway, serial)
    running = record["FirmwareVersion"] == f"picofleet-app {version}"
    return record if record["Status"] == "Idle" and record["Commit"] == commit and running else None


def fleet_board(fleet: FleetProcess, serial: str) -> dict[str, Any]:
    response = fleet.request("GET", "/v1/fleets/lab/boards")
    assert response.status_code == 200, response.text
    return next(b for b in response.json() if b["LocalUUID"] == serial)


def start(
    fleet: FleetProcess, tmp_path: Path, env: dict[str, str] | None = None, boards: int = 1
) -> tuple[GatewayProcess, str, Path, str]:
    """A fleet "lab" with a gateway (settings ``env``) of ``boards`` virtual boards converged on its
    first release (2.0.0): the gateway, the first board's serial, the work tree and the first commit."""
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateway = GatewayProcess(
        tmp_path / "gw", "--simulate", str(boards), "--fleet", fleet.url, f"--provisioning-key={key}", env=env
    ).start()
    serials = [d["LocalUUID"] for d in idle_boards(gateway, boards)]
    work = tmp_path / "repo"
    first = push_first_release(fleet, work)
    for serial in serials:
        wait_for(
            lambda serial=serial: at(gateway, serial, first, "2.0.0"),
            60,
            "the boards at the first release",
            interval=0.1,
        )
    return gateway, serials[0], work, first


def test_a_board_following_the_fleet_is_flashed_by_hand_only_in_local_mode(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    gateway, serial, work, first = start(fleet, tmp_path, boards=2)
    try:
        [witness] = [d["LocalUUID"] for d in gateway.devices() if d["LocalUUID"] != serial]
        flashes = rack_boards(gateway.data)[serial]["flashes"]
        url = f"{gateway.url}/v1/devices/{serial}/flash"

        # refused without the flag: the reason names it, nothing changes
        refused = httpx.post(url, content=app_uf2("9.9.9"), headers=OCTETS, timeout=30)
        assert refused.status_code == 409, refused.text
        assert "local_mode=true" in refused.json()["error"] and "--local-mode" in refused.json()["error"]
        image = tmp_path / "app-9.9.9.uf2"
        image.write_bytes(app_uf2("9.9.9"))
        cli = picofleet("flash", "--gateway", gateway.url, "--device", serial, str(image))
        assert cli.returncode == 1 and "--local-mode" in cli.stderr, cli.stderr
        bad_flag = httpx.post(url + "?local_mode=maybe", content=app_uf2("9.9.9"), headers=OCTETS, timeout=30)
        assert bad_flag.status_code == 400 and "local_mode" in bad_flag.json()["error"]
        unchanged = device(gateway, serial)
        assert (unchanged["Commit"], unchanged["FirmwareVersion"], unchanged["LocalMode"]) == (
            first,
            "picofleet-app 2.0.0",
            False,
        )
        assert unchanged["PendingFlash"] is None
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes

        # with it: flashed, in local mode, Commit null (no --commit): no drift hidden behind the old one
        cli = picofleet("flash", "--gateway", gateway.url, "--device", serial, str(image), "--local-mode")
        assert cli.returncode == 0, cli.stderr
        assert "in local mode" in cli.stdout
        local = device(gateway, serial)
        assert (local["Commit"], local["FirmwareVersion"], local["LocalMode"]) == (
            None,
            "picofleet-app 9.9.9",
            True,
        )
        assert local["TargetCommit"] == first
        wait_for(lambda: fleet_board(fleet, serial)["LocalMode"], 10, "the fleet to see local mode")
        listed = fleet_cli(fleet, "boards", "lab")
        assert listed.returncode == 0 and "local mode" in listed.stdout, listed.stdout

        # a new release is not applied to it; the board beside it, flashed by the same sync pass from the
        # same download, shows the pass is over
        flashes = rack_boards(gateway.data)[serial]["flashes"]
        second = next_release(work, "3.0.0")
        git(work, "push", "-q", fleet.push_url("lab"), "main")
        wait_for(lambda: at(gateway, witness, second, "3.0.0"), 60, "the other board at the new release")
        assert device(gateway, serial)["TargetCommit"] == second
        still = device(gateway, serial)
        assert (still["Commit"], still["FirmwareVersion"], still["PendingFlash"]) == (
            None,
            "picofleet-app 9.9.9",
            None,
        )
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes

        # bad requests change nothing
        path = f"/v1/devices/{serial}/local-mode"
        assert gateway.put(path, json={"LocalMode": "no"}).status_code == 400
        assert gateway.put(path, json={}).status_code == 400
        assert gateway.put("/v1/devices/nope/local-mode", json={"LocalMode": False}).status_code == 404
        assert device(gateway, serial)["LocalMode"] is True

        # handed back: converged at once
        back = picofleet("local-mode", "--gateway", gateway.url, "--device", serial, "off")
        assert back.returncode == 0, back.stderr
        assert "local mode off" in back.stdout
        record = wait_for(
            lambda: at(gateway, serial, second, "3.0.0"), 30, "the board back at the fleet's release"
        )
        assert record["LocalMode"] is False
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 1
        wait_for(lambda: not fleet_board(fleet, serial)["LocalMode"], 10, "the fleet to see it follow again")
    finally:
        gateway.stop()


def test_a_board_flashed_behind_the_gateways_back_is_re_converged(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    gateway, serial, _, first = start(fleet, tmp_path)
    try:
        flashes = rack_boards(gateway.data)[serial]["flashes"]
        # as picotool would: another image straight into the board's flash, then a power cycle
        rack(gateway.data, "unplug", serial=serial)
        wait_for(lambda: device(gateway, serial)["Status"] == "Offline", 10, "the board offline")
        atomic_write_bytes(gateway.data / "virtual" / "flash" / f"{serial}.uf2", app_uf2("7.7.7"))
        rack(gateway.data, "plug", serial=serial)

        seen: list[tuple[Any, Any]] = []

        def back_at_release() -> dict[str, Any] | None:
            record = device(gateway, serial)
            seen.append((record["Commit"], record["FirmwareVersion"]))
            return at(gateway, serial, first, "2.0.0") if record["FirmwareVersion"] else None

        wait_for(back_at_release, 30, "the board flashed back to its release", interval=0.02)
        # it never showed the release's commit while it ran something else
        assert (first, "picofleet-app 7.7.7") not in seen
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 1
        assert "flashed behind the gateway's back" in gateway.output()
    finally:
        gateway.stop()


def test_an_operators_flash_is_refused_when_the_fleet_gave_the_board_a_target_during_the_upload(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with gateway_in_process(tmp_path / "gw", 1) as (wired, _):
            manager = wired.manager
            [board] = manager.listed()
            manager.config = dataclasses.replace(manager.config, fleet_url="http://fleet.invalid")
            data = app_uf2("3.0.0")
            job = FlashJob(data, uf2.read_uf2(data).families, "3.0.0")
            assert manager.local_mode_refusal(board) is None  # what the API checked before the upload
            await manager.set_target(board, "c1", {}, {})  # the fleet's target arrives meanwhile
            with pytest.raises(FlashRefused, match="follows the fleet"):
                await manager.request_flash(board, job)
            assert board.pending_flash is None and board.record["PendingFlash"] is None
            assert board.record["LocalMode"] is False
            await manager.request_flash(board, job, local_mode=True)
            assert board.record["LocalMode"] is True and board.pending_flash is job

    asyncio.run(main())
