"""A release with environment, config and an FPGA image reaches the boards (issue 14, items 1 and 2).

A real fleet service, a real gateway process with virtual boards (a pico2-ice and an rp2040), the
real git client and a real iCE40 bitstream: ``/v1/devices`` shows Environment/Config/FpgaImage equal
to the targets, the fleet's board list says ``converged``, and a restarted gateway reads them back
from the boards. Refusals at push: ``fpga:`` for a board type without an FPGA, an invalid bitstream,
a bitstream under ``firmware:``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from tests.helpers.boards import app_uf2, rack
from tests.helpers.fleet import FleetProcess, fleet_cli, git
from tests.helpers.fpga import FpgaBuild, session_counter
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import commit, write

pytestmark = pytest.mark.timeout(240)

SIM_ENV = {"PICOFLEET_SIM_REBOOT_DELAY": "0.05", "PICOFLEET_SIM_BOOT_DELAY": "0.05"}


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> FpgaBuild:
    return session_counter(tmp_path_factory)


def manifest(fpga: str = "fpga/top.bin") -> str:
    return (
        "boards:\n"
        "  pico2-ice:\n"
        "    firmware: build/app.uf2\n"
        f"    fpga: {fpga}\n"
        "    environment: {MODE: lab}\n"
        "    config: {RATE: '5'}\n"
        "  rp2040:\n"
        "    firmware: build/rp2040.uf2\n"
        "    environment: {MODE: bench}\n"
    )


def repo(tmp_path: Path, counter: FpgaBuild, fpga: str = "fpga/top.bin") -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(
        work,
        {
            "fleet.yml": manifest(fpga),
            "build/app.uf2": app_uf2("2.0.0"),
            "build/rp2040.uf2": app_uf2("2.0.0", "rp2040", uf2.RP2040),
            "fpga/top.bin": counter.bin.read_bytes(),
            "fpga/top.asc": counter.asc.read_bytes(),
        },
    )
    return work


def at_target(device: dict) -> bool:
    return (
        device["Status"] == "Idle"
        and device["Commit"] == device["TargetCommit"] is not None
        and device["Environment"] == device["TargetEnvironment"]
        and device["Config"] == device["TargetConfig"]
        and device["FpgaImage"] == device["TargetFpgaImage"]
    )


def test_a_release_with_settings_and_an_fpga_image_converges_and_survives_a_gateway_restart(
    fleet: FleetProcess, tmp_path: Path, counter: FpgaBuild
) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    assert fleet.request("PUT", "/v1/fleets/lab/env/SITE", json={"value": "north"}).status_code == 200
    args = ("--simulate", "1:pico2-ice,1:rp2040", "--fleet", fleet.url, f"--provisioning-key={key}")
    data = tmp_path / "gw"
    gateway = GatewayProcess(data, *args, env=SIM_ENV).start()
    try:
        idle_boards(gateway, 2)
        work = repo(tmp_path, counter)
        head = commit(work, "release with an FPGA image")
        pushed = git(work, "push", fleet.push_url("lab"), "main")
        assert "fpga: fpga/top.bin (ice40-bin" in pushed.stderr, pushed.stderr
        sha256 = hashlib.sha256(counter.bin.read_bytes()).hexdigest()
        (release,) = fleet.releases("lab")
        assert release["boards"]["pico2-ice"]["fpga"] == {
            "path": "fpga/top.bin",
            "sha256": sha256,
            "size": len(counter.bin.read_bytes()),
            "kind": "ice40-bin",
        }
        assert release["boards"]["rp2040"]["fpga"] is None

        devices = gateway.wait_devices(lambda d: all(map(at_target, d)), 90, "both boards at the release")
        by_type = {d["BoardType"]: d for d in devices}
        ice, pico = by_type["pico2-ice"], by_type["rp2040"]
        assert ice["Commit"] == head
        assert ice["Environment"] == {"SITE": "north", "MODE": "lab"}
        assert ice["Config"] == {"RATE": "5"}
        assert ice["FpgaImage"] == sha256
        assert (pico["Environment"], pico["FpgaImage"], pico["TargetFpgaImage"]) == (
            {"SITE": "north", "MODE": "bench"},
            None,
            None,
        )

        def fleet_converged() -> list | None:
            boards = fleet.request("GET", "/v1/fleets/lab/boards").json()
            return boards if len(boards) == 2 and all(b["converged"] for b in boards) else None

        boards = wait_for(fleet_converged, 30, "the fleet to count both boards converged")
        assert {b["BoardType"]: b["target_fpga"] for b in boards} == {"pico2-ice": sha256, "rp2040": None}
        listed = fleet_cli(fleet, "gateways", "lab")
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()[:2]
        assert header.split()[-2:] == ["ON", "TARGET"] and row.split()[-3:] == ["2", "2", "2"], listed.stdout

        # a variable change reaches the board without a flash
        flashes = {b["serial"]: b["flashes"] for b in rack_list(data)}
        assert fleet.request("PUT", "/v1/fleets/lab/env/SITE", json={"value": "south"}).status_code == 200
        gateway.wait_devices(
            lambda d: all(x["Environment"].get("SITE") == "south" and at_target(x) for x in d),
            30,
            "the new variable on both boards",
        )
        assert {b["serial"]: b["flashes"] for b in rack_list(data)} == flashes

        # the supervisor's hook knows no FPGA images: its PUT leaves the fleet's one in place
        hook = {"commit": head, "environment": {"SITE": "south", "MODE": "lab"}, "config": {"RATE": "5"}}
        assert gateway.put(f"/v1/devices/{ice['LocalUUID']}", json=hook).status_code == 200
        assert gateway.get(f"/v1/devices/{ice['LocalUUID']}").json()["TargetFpgaImage"] == sha256

        # what the gateway shows after a restart is what the boards hold: change it behind its back
        gateway.stop()
        stored = data / "virtual" / "storage" / ice["LocalUUID"] / "settings.json"
        assert json.loads(stored.read_text())["environment"] == {"SITE": "south", "MODE": "lab"}
        stored.write_text(json.dumps({"environment": {"MODE": "tampered"}, "config": {}}))
        gateway = GatewayProcess(data, *args, env=SIM_ENV).start()
        gateway.wait_devices(lambda d: all(map(at_target, d)), 60, "both boards back at their targets")
        assert json.loads(stored.read_text())["environment"] == {"SITE": "south", "MODE": "lab"}
        assert "environment and config applied" in (data / "gateway.log").read_text()
        restarted = {d["BoardType"]: d for d in gateway.devices()}
        assert restarted["pico2-ice"]["FpgaImage"] == sha256
    finally:
        gateway.stop()


def rack_list(data: Path) -> list[dict]:
    """The boards of the gateway's virtual rack."""
    return rack(data, "list")["boards"]


def test_an_asc_is_packed_at_push_and_its_bin_is_what_the_board_gets(
    fleet: FleetProcess, tmp_path: Path, counter: FpgaBuild
) -> None:
    fleet.create_fleet("asc")
    work = repo(tmp_path, counter, fpga="fpga/top.asc")
    commit(work, "an .asc")
    git(work, "push", "-q", fleet.push_url("asc"), "main")
    (release,) = fleet.releases("asc")
    image = release["boards"]["pico2-ice"]["fpga"]
    packed = counter.bin.read_bytes()  # icepack's output: pack_asc is byte-identical to it
    assert (image["kind"], image["sha256"], image["size"]) == (
        "ice40-asc",
        hashlib.sha256(packed).hexdigest(),
        len(packed),
    )
    response = fleet.request("GET", f"/v1/assets/{image['sha256']}")
    assert response.status_code == 200 and response.content == packed


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"fleet.yml": "boards:\n  rp2040:\n    firmware: build/rp2040.uf2\n    fpga: fpga/top.bin\n"},
            "fleet.yml: boards.rp2040.fpga: board type rp2040 has no FPGA (fpga: is only for board types"
            " with an iCE40, such as pico2-ice)",
        ),
        (
            {"fpga/top.bin": b"\xff\x00" * 64},
            "fpga/top.bin: invalid bitstream:",
        ),
        (
            {"fleet.yml": manifest("build/app.uf2")},
            "build/app.uf2: a UF2 under fpga:, which takes an iCE40 .bin or .asc",
        ),
        (
            {"fleet.yml": manifest().replace("firmware: build/app.uf2", "firmware: fpga/top.bin")},
            "fpga/top.bin: an iCE40 bitstream under firmware:, which takes a UF2;"
            " put iCE40 images under fpga:",
        ),
    ],
)
def test_fpga_refusals_at_push_say_why_and_change_nothing(
    fleet: FleetProcess, tmp_path: Path, counter: FpgaBuild, change: dict, reason: str
) -> None:
    fleet.create_fleet("refuse")
    work = repo(tmp_path, counter)
    good = commit(work, "good")
    git(work, "push", "-q", fleet.push_url("refuse"), "main")
    write(work, change)
    commit(work, "bad")
    refused = git(work, "push", fleet.push_url("refuse"), "main", check=False)
    assert refused.returncode != 0
    assert any(line.startswith("remote: ") and reason in line for line in refused.stderr.splitlines()), (
        refused.stderr
    )
    assert [r["commit"] for r in fleet.releases("refuse")] == [good]


def test_settings_the_board_refuses_are_its_status_reason_asked_once_not_broken(
    fleet: FleetProcess, tmp_path: Path, counter: FpgaBuild
) -> None:
    key = fleet.create_fleet("big")["provisioning_key"]
    args = ("--simulate", "1:rp2040", "--fleet", fleet.url, f"--provisioning-key={key}")
    data = tmp_path / "gw"
    gateway = GatewayProcess(data, *args, env=SIM_ENV).start()
    try:
        (board,) = idle_boards(gateway, 1)
        uuid = board["LocalUUID"]
        work = repo(tmp_path, counter)
        commit(work, "release")
        git(work, "push", "-q", fleet.push_url("big"), "main")
        gateway.wait_devices(lambda d: at_target(d[0]), 60, "the board at the release")
        # the fleet takes values up to 4096 characters; the board keeps 2048 bytes of settings
        path = f"/v1/fleets/big/boards/{uuid}/env/NOTES"
        assert fleet.request("PUT", path, json={"value": "n" * 3000}).status_code == 200
        reason = "its environment and config were not applied: board answered: environment and config hold"
        (device,) = gateway.wait_devices(
            lambda d: (d[0]["StatusReason"] or "").startswith(reason), 30, "the refusal as StatusReason"
        )
        assert device["Status"] == "Idle" and device["Environment"] == {"MODE": "bench"}
        for _ in range(3):  # each blink is a reconcile of the board: the refused values are not sent again
            assert gateway.put(f"/v1/devices/{uuid}/identify").status_code == 200
        log = (data / "gateway.log").read_text()
        assert log.count("its environment and config were not applied") == 1, log

        assert fleet.request("DELETE", path).status_code == 200
        gateway.wait_devices(
            lambda d: at_target(d[0]) and d[0]["StatusReason"] is None, 30, "the reason gone with the value"
        )
    finally:
        gateway.stop()


def test_enm_device_hook_settings_reach_the_board_and_a_firmware_that_cannot_take_them_says_so(
    gateway_factory,  # type: ignore[no-untyped-def]
) -> None:
    gateway = gateway_factory("--simulate", "2", env={"ENM_UPDATE_RETRIES": "0", **SIM_ENV})
    app, other = (d["LocalUUID"] for d in idle_boards(gateway, 2))
    body = {"commit": None, "environment": {"MODE": "lab"}, "config": {"RATE": "5"}}
    assert gateway.put(f"/v1/devices/{app}", json=body).status_code == 200  # ENM's UpdateEnvironment
    wait_for(
        lambda: (
            (d := gateway.get(f"/v1/devices/{app}").json())["Environment"] == {"MODE": "lab"}
            and d["Config"] == {"RATE": "5"}
        ),
        20,
        "the settings on the board",
    )

    # a firmware without the settings op (it does not even identify itself)
    image_bytes = uf2.from_binary(
        make_app_image("other-app", "5.0.0", "pico2-ice"), FLASH_BASE, uf2.RP2350_ARM_S
    )
    flash = httpx.post(
        f"{gateway.url}/v1/devices/{other}/flash",
        content=image_bytes,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert flash.status_code == 202
    wait_for(lambda: gateway.get(f"/v1/devices/{other}").json()["Status"] == "Broken", 20, "Broken")
    rack(gateway.data, "unplug", serial=other)  # a replug: whatever was wrong, it starts afresh
    wait_for(lambda: gateway.get(f"/v1/devices/{other}").json()["Status"] == "Offline", 5, "Offline")
    rack(gateway.data, "plug", serial=other)
    wait_for(lambda: gateway.get(f"/v1/devices/{other}").json()["Status"] == "Idle", 10, "Idle")
    assert gateway.put(f"/v1/devices/{other}", json=body).status_code == 200
    device = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{other}").json())["StatusReason"] and d, 20, "a StatusReason"
    )
    assert device["Status"] == "Idle" and device["Environment"] is None
    assert device["StatusReason"] == (
        "its firmware cannot take environment and config (it runs a firmware that does not identify itself)"
    )


def test_an_fpga_image_that_does_not_configure_is_the_status_reason_written_once_not_broken(
    fleet: FleetProcess, tmp_path: Path, counter: FpgaBuild
) -> None:
    # the rack cannot turn bitstreams into circuits without IceStorm on its PATH: its simulated FPGA
    # then fails to configure, as an iCE40 whose CDONE stays low
    key = fleet.create_fleet("nofpga")["provisioning_key"]
    args = ("--simulate", "1:pico2-ice", "--fleet", fleet.url, f"--provisioning-key={key}")
    data = tmp_path / "gw"
    gateway = GatewayProcess(data, *args, env={**SIM_ENV, "PATH": str(tmp_path / "empty")}).start()
    try:
        (board,) = idle_boards(gateway, 1)
        work = repo(tmp_path, counter)
        commit(work, "release")
        git(work, "push", "-q", fleet.push_url("nofpga"), "main")
        sha256 = hashlib.sha256(counter.bin.read_bytes()).hexdigest()
        reason = f"its FPGA image {sha256[:12]} did not configure: FPGA simulation unavailable: iceunpack"
        (device,) = gateway.wait_devices(
            lambda d: (d[0]["StatusReason"] or "").startswith(reason), 60, "the FPGA failure as StatusReason"
        )
        assert device["Status"] == "Idle" and device["FpgaImage"] is None
        assert device["TargetFpgaImage"] == sha256 and device["Environment"] == device["TargetEnvironment"]
        for _ in range(3):  # reconciles of the board: the image is not sent again
            wait_for(  # 409 while the board's task is still busy with its last step
                lambda: gateway.put(f"/v1/devices/{board['LocalUUID']}/identify").status_code == 200,
                10,
                "the board to blink",
            )
        log = (data / "gateway.log").read_text()
        assert log.count(f"writing FPGA image {sha256[:12]} to the board") == 1, log
        assert f"FPGA not configured from the new image {sha256}" in log  # the board's own log line
        boards = fleet.request("GET", "/v1/fleets/nofpga/boards").json()
        assert [b["converged"] for b in boards] == [False]
    finally:
        gateway.stop()
