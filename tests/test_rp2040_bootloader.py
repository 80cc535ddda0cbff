"""RP2040 bootroms all report the USB serial E0C9125B0D9B: their drives are matched by USB port."""

from __future__ import annotations

import httpx

from picofleet.firmware.formats import uf2
from tests.helpers.boards import app_uf2, rack, rack_boards, wait_rack_gone
from tests.helpers.gateway import wait_for

OCTETS = {"Content-Type": "application/octet-stream"}


def statuses(gateway) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {device["LocalUUID"]: device["Status"] for device in gateway.devices()}


def test_two_rp2040_bootloaders_stay_two_boards_and_are_found_after_a_restart(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2:rp2040")
    devices = gateway.wait_devices(
        lambda d: len(d) == 2 and all(x["Status"] == "Idle" for x in d), 15, "2 Picos"
    )
    first, second = sorted(device["LocalUUID"] for device in devices)
    ports = {device["LocalUUID"]: device["UsbPort"] for device in devices}
    assert ports[first] and ports[first] != ports[second]

    for serial in (first, second):
        rack(gateway.data, "bootsel", serial=serial)
    assert {board["drive"] is not None for board in rack_boards(gateway.data).values()} == {True}
    wait_for(
        lambda: statuses(gateway) == {first: "Bootloader", second: "Bootloader"},
        5,
        "both in their bootloaders",
    )
    assert len(gateway.devices()) == 2  # one bootrom serial, still two boards

    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040)
    assert (
        httpx.post(
            f"{gateway.url}/v1/devices/{second}/flash?commit=c2", content=image, headers=OCTETS
        ).status_code
        == 202
    )
    flashed = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{second}").json())["Status"] == "Idle" and d,
        20,
        "the second Pico flashed",
    )
    assert (flashed["Commit"], flashed["FirmwareVersion"]) == ("c2", "picofleet-app 2.0.0")
    assert rack_boards(gateway.data)[first]["state"] == "bootloader"  # the other one untouched
    assert rack_boards(gateway.data)[second]["firmware"]["version"] == "2.0.0"

    gateway.kill()

    wait_rack_gone(gateway.data)
    (gateway.data / "virtual" / "flash" / f"{first}.uf2").unlink()  # it will boot into its bootloader
    again = gateway_factory("--simulate", "2:rp2040")
    wait_for(
        lambda: statuses(again) == {first: "Bootloader", second: "Idle"},
        15,
        "the first Pico found by its port",
    )
    assert len(again.devices()) == 2
