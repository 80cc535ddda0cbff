"""Rollback (issue 14, item 4): a release that does not come back running on a board is flashed back
to the image the board ran before; the board ends Idle on its previous commit, the failure is
shown at the gateway and the fleet, the release is not tried again on that board until a retry or
a new release; a board with no earlier image is Broken with that reason.

A real fleet service, a real gateway process with a virtual board, the real git client and the
real `picofleet` commands. The bad release is an image whose firmware does not answer
``identify`` (it boots, but not the version the image promises), and `picofleet sim image
--broken`'s, which the virtual bootrom refuses (the board comes back in its bootloader).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from tests.helpers.boards import rack_boards, wait_rack_gone
from tests.helpers.fleet import FleetProcess, fleet_cli, git
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import MANIFEST, app_uf2, commit, write
from tests.test_local_mode import at, device, fleet_board, picofleet, start

pytestmark = pytest.mark.timeout(240)

NO_RETRIES = {"ENM_UPDATE_RETRIES": "0"}


def silent_uf2(version: str) -> bytes:
    """A pico2-ice image that promises ``version`` of a firmware the virtual board runs but that never
    answers identify: the board comes back, but not running what the image promised."""
    return uf2.from_binary(
        make_app_image("silent-firmware", version, "pico2-ice"), FLASH_BASE, uf2.RP2350_ARM_S
    )


def non_booting_uf2(tmp_path: Path, version: str) -> bytes:
    """`picofleet sim image --broken`'s image (its bootrom refuses it)."""
    out = tmp_path / f"broken-{version}.uf2"
    command = [sys.executable, "-m", "picofleet.cli", "sim", "image", "--board", "pico2-ice"]
    result = subprocess.run(
        [*command, "--version", version, "--broken", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def push(fleet: FleetProcess, work: Path, image: bytes, message: str) -> str:
    write(work, {"build/app.uf2": image})
    pushed = commit(work, message)
    git(work, "push", "-q", fleet.push_url("lab"), "main")
    return pushed


def rolled_back(gateway: GatewayProcess, serial: str, failed: str, back: str, version: str) -> Any:
    """The device once it is Idle on ``back`` (``version``) with ``failed`` in FailedRelease."""
    record = at(gateway, serial, back, version)
    if record is None or not isinstance(record["FailedRelease"], dict):
        return None
    return record if record["FailedRelease"]["commit"] == failed else None


def test_a_release_that_does_not_run_is_rolled_back_not_retried_until_asked(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    gateway, serial, work, first = start(fleet, tmp_path, env=NO_RETRIES)
    try:
        assert device(gateway, serial)["RunningImage"]["commit"] == first
        flashes = rack_boards(gateway.data)[serial]["flashes"]

        second = push(fleet, work, silent_uf2("3.0.0"), "v3 that does not run")
        record = wait_for(
            lambda: rolled_back(gateway, serial, second, first, "2.0.0"), 60, "the rollback", interval=0.1
        )
        assert record["TargetCommit"] == second
        assert "expected version 3.0.0" in record["FailedRelease"]["reason"]
        assert record["FailedRelease"]["time"]
        assert "rolled back to" in record["StatusReason"]
        assert record["RunningImage"]["commit"] == first  # still what a rollback returns to
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 2  # the release, then back

        # the fleet shows it
        reported = wait_for(
            lambda: (b := fleet_board(fleet, serial))["FailedRelease"] and b, 10, "the fleet to see it"
        )
        assert reported["FailedRelease"]["commit"] == second
        assert reported["Commit"] == first and reported["target_commit"] == second
        listed = fleet_cli(fleet, "boards", "lab")
        assert listed.returncode == 0, listed.stderr
        assert f"release {second[:12]} failed, rolled back" in listed.stdout

        # no flash loop: a new target document (a variable) is applied, the release is not tried again
        assert fleet_cli(fleet, "env", "lab", "set", "COLOUR", "red").returncode == 0
        wait_for(
            lambda: device(gateway, serial)["TargetEnvironment"].get("COLOUR") == "red",
            30,
            "the new target applied",
        )
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 2
        assert device(gateway, serial)["FailedRelease"] == record["FailedRelease"]

        # an explicit retry flashes it once more (and it is rolled back once more)
        retried = fleet_cli(fleet, "retry", "lab", serial)
        assert retried.returncode == 0, retried.stderr
        assert "retry 1" in retried.stdout
        again = wait_for(
            lambda: (
                (r := rolled_back(gateway, serial, second, first, "2.0.0"))
                and r["FailedRelease"].get("retry") == 1
                and r
            ),
            60,
            "the retry, rolled back",
            interval=0.1,
        )
        assert again["FailedRelease"]["commit"] == second
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 4

        # a new release that runs clears it
        third = push(fleet, work, app_uf2("4.0.0"), "v4")
        record = wait_for(lambda: at(gateway, serial, third, "4.0.0"), 60, "the third release")
        assert record["FailedRelease"] is None
        assert record["RunningImage"]["commit"] == third
        wait_for(lambda: fleet_board(fleet, serial)["FailedRelease"] is None, 10, "the fleet to see it")
        nothing = fleet_cli(fleet, "retry", "lab", serial)
        assert nothing.returncode == 1 and "no failed release" in nothing.stderr, nothing.stderr
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 5
    finally:
        gateway.stop()


def test_without_an_earlier_image_the_board_is_broken_and_says_so(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateway = GatewayProcess(
        tmp_path / "gw", "--simulate", "1", "--fleet", fleet.url, f"--provisioning-key={key}", env=NO_RETRIES
    ).start()
    try:
        serial = idle_boards(gateway, 1)[0]["LocalUUID"]  # factory firmware: never flashed by the gateway
        work = tmp_path / "repo"
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        write(work, {"fleet.yml": MANIFEST, "build/app.uf2": silent_uf2("2.0.0")})
        bad = commit(work, "v2 that does not run")
        git(work, "push", "-q", fleet.push_url("lab"), "main")
        record = wait_for(
            lambda: (d := device(gateway, serial))["Status"] == "Broken" and d, 60, "the board Broken"
        )
        assert "no earlier image to return to" in record["StatusReason"]
        assert record["FailedRelease"]["commit"] == bad
        assert record["Commit"] is None
        flashes = rack_boards(gateway.data)[serial]["flashes"]
        assert fleet_cli(fleet, "env", "lab", "set", "COLOUR", "red").returncode == 0
        wait_for(
            lambda: device(gateway, serial)["TargetEnvironment"].get("COLOUR") == "red",
            30,
            "the new target applied",
        )
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes  # not flashed again
    finally:
        gateway.stop()


def test_an_image_the_bootrom_refuses_is_rolled_back_at_once(fleet: FleetProcess, tmp_path: Path) -> None:
    broken = non_booting_uf2(tmp_path, "3.0.0")
    gateway, serial, work, first = start(fleet, tmp_path, env=NO_RETRIES)
    try:
        flashes = rack_boards(gateway.data)[serial]["flashes"]
        second = push(fleet, work, broken, "v3 that does not boot")
        record = wait_for(
            lambda: rolled_back(gateway, serial, second, first, "2.0.0"), 60, "the rollback", interval=0.1
        )
        assert "came back in its UF2 bootloader" in record["FailedRelease"]["reason"]
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 2

        # an operator's own image in local mode, then back to the fleet, whose target failed here:
        # not flashed again, and the board says why
        own = tmp_path / "own.uf2"
        own.write_bytes(app_uf2("9.9.9"))
        flash = ("flash", "--gateway", gateway.url, "--device", serial)
        assert picofleet(*flash, "--local-mode", str(own)).returncode == 0
        handed_back = picofleet("local-mode", "--gateway", gateway.url, "--device", serial, "off")
        assert handed_back.returncode == 0, handed_back.stderr
        record = wait_for(
            lambda: (d := device(gateway, serial))["StatusReason"] and d, 30, "the board to say why it waits"
        )
        assert f"release {second} did not run on this board" in record["StatusReason"]
        assert "picofleet fleet retry" in record["StatusReason"]
        assert (record["Status"], record["FirmwareVersion"]) == ("Idle", "picofleet-app 9.9.9")
        assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 3  # only the operator's
    finally:
        gateway.stop()


def test_a_manual_flash_with_a_commit_that_does_not_run_is_rolled_back(
    gateway_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env=NO_RETRIES)
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    good, bad = tmp_path / "good.uf2", tmp_path / "bad.uf2"
    good.write_bytes(app_uf2("2.0.0"))
    bad.write_bytes(silent_uf2("3.0.0"))
    flash = ("flash", "--gateway", gateway.url, "--device", serial)
    assert picofleet(*flash, str(good), "--commit", "good").returncode == 0  # no fleet: no flag needed
    flashes = rack_boards(gateway.data)[serial]["flashes"]

    failed = picofleet(*flash, str(bad), "--commit", "bad")
    assert failed.returncode == 1
    assert "the image did not run" in failed.stderr and "rolled back to picofleet-app 2.0.0" in failed.stderr
    record = device(gateway, serial)
    assert (record["Status"], record["Commit"], record["FirmwareVersion"]) == (
        "Idle",
        "good",
        "picofleet-app 2.0.0",
    )
    assert record["FailedRelease"]["commit"] == "bad" and record["LocalMode"] is False
    assert rack_boards(gateway.data)[serial]["flashes"] == flashes + 2


def test_a_gateway_killed_during_a_rollback_resumes_the_rollback_not_the_release(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    broken = non_booting_uf2(tmp_path, "3.0.0")
    gateway, serial, work, first = start(fleet, tmp_path, env=NO_RETRIES)
    try:
        second = push(fleet, work, broken, "v3 that does not boot")
        wait_for(
            lambda: (device(gateway, serial)["FailedRelease"] or {}).get("commit") == second,
            60,
            "the release to fail (the rollback starts)",
            interval=0.02,
        )
        gateway.kill()  # kill -9 while the board is flashed back
        wait_rack_gone(gateway.data)
        gateway.start()
        record = wait_for(
            lambda: rolled_back(gateway, serial, second, first, "2.0.0"), 60, "the rollback", interval=0.1
        )
        assert record["PendingFlash"] is None
        # the (new) rack counts the flashes since the restart: the rollback only, not the release again
        assert rack_boards(gateway.data)[serial]["flashes"] == 1
        assert "was rolled back: flashing" in gateway.output()
    finally:
        gateway.stop()
