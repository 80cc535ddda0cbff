"""Flashing virtual boards through their UF2 bootloader; wrong families and bad files refused."""

from __future__ import annotations

import httpx

from picofleet.firmware import uf2
from tests.helpers.boards import app_uf2, rack, rack_boards
from tests.helpers.gateway import wait_for

OCTETS = {"Content-Type": "application/octet-stream"}


def idle(gateway, serial: str) -> dict | None:  # type: ignore[no-untyped-def]
    device = gateway.get(f"/v1/devices/{serial}").json()
    return device if device["Status"] == "Idle" else None


def test_flash_through_the_bootloader_sets_version_and_commit(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = gateway.wait_devices(lambda d: len(d) == 1 and d[0]["Status"] == "Idle", 15, "a board")[0][
        "LocalUUID"
    ]
    boots = rack_boards(gateway.data)[serial]["boots"]
    image = app_uf2("2.0.0", size=256 * 1024)

    response = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash?commit=c0ffee", content=image, headers=OCTETS, timeout=30
    )
    assert response.status_code == 202, response.text
    seen: set[str] = set()

    def done() -> dict | None:
        device = gateway.get(f"/v1/devices/{serial}").json()
        seen.add(device["Status"])
        if device["Status"] == "Flashing" and device["Progress"]:
            assert device["Progress"]["total"] == len(image)
        return device if device["Commit"] == "c0ffee" and device["Status"] == "Idle" else None

    device = wait_for(done, 20, "the flash to finish", interval=0.005)
    assert device["FirmwareVersion"] == "picofleet-app 2.0.0"
    assert {"Installing", "Flashing"} & seen  # the steps are visible in the API
    board = rack_boards(gateway.data)[serial]
    assert board["firmware"] == {"name": "picofleet-app", "version": "2.0.0"}
    assert board["boots"] > boots
    assert device["Port"] == board["port"]


def test_wrong_family_and_invalid_files_are_refused_and_change_nothing(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"PICOFLEET_MAX_UPLOAD_BYTES": "100000"})
    device = gateway.wait_devices(lambda d: len(d) == 1 and d[0]["Status"] == "Idle", 15, "a board")[0]
    serial = device["LocalUUID"]
    boots = rack_boards(gateway.data)[serial]["boots"]
    url = f"{gateway.url}/v1/devices/{serial}/flash"

    wrong = httpx.post(
        url, content=app_uf2("9.9.9", board="rp2040", family=uf2.RP2040), headers=OCTETS, timeout=30
    )
    assert wrong.status_code == 422
    assert "UF2 family rp2040 cannot run on a pico2-ice" in wrong.json()["error"]

    truncated = app_uf2("9.9.9")[:-100]
    bad = httpx.post(url, content=truncated, headers=OCTETS, timeout=30)
    assert bad.status_code == 400 and "not a valid UF2 file" in bad.json()["error"]

    too_big = httpx.post(url, content=b"\0" * 200_000, headers=OCTETS, timeout=30)
    assert too_big.status_code == 413 and "larger than the limit of 100000 bytes" in too_big.json()["error"]

    unknown = httpx.post(f"{gateway.url}/v1/devices/nope/flash", content=app_uf2("1.0.1"), headers=OCTETS)
    assert unknown.status_code == 404

    after = gateway.get(f"/v1/devices/{serial}").json()
    assert (after["FirmwareVersion"], after["Status"], after["Commit"]) == (
        "picofleet-app 1.0.0",
        "Idle",
        None,
    )
    assert rack_boards(gateway.data)[serial]["boots"] == boots  # never sent to its bootloader


def test_board_in_its_bootloader_is_the_same_board_and_can_be_flashed(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    device = gateway.wait_devices(lambda d: len(d) == 1 and d[0]["Status"] == "Idle", 15, "a board")[0]
    serial = device["LocalUUID"]
    rack(gateway.data, "bootsel", serial=serial)
    in_bootloader = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Bootloader" and d,
        5,
        "Bootloader",
    )
    assert in_bootloader["ResinUUID"] == device["ResinUUID"]
    assert in_bootloader["BoardType"] == "pico2-ice"  # not a new rp2350: the serial is known
    assert len(gateway.devices()) == 1

    response = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash", content=app_uf2("3.0.0"), headers=OCTETS
    )
    assert response.status_code == 202
    after = wait_for(lambda: idle(gateway, serial), 20, "the board back from its bootloader")
    assert after["FirmwareVersion"] == "picofleet-app 3.0.0"
