"""Hotplug: boards listed within 2 s, Offline within 2 s, replugged boards keep their identity."""

from __future__ import annotations

import time

from tests.helpers.boards import rack, rack_boards
from tests.helpers.gateway import wait_for


def by_serial(devices: list[dict]) -> dict[str, dict]:
    return {device["LocalUUID"]: device for device in devices}


def test_add_remove_replug_and_restart_keep_identity(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2")
    devices = by_serial(
        gateway.wait_devices(
            lambda d: len(d) == 2 and all(x["Status"] == "Idle" for x in d), 15, "2 idle boards"
        )
    )
    serial = sorted(devices)[0]

    started = time.monotonic()
    rack(gateway.data, "unplug", serial=serial)
    wait_for(
        lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Offline", 2, "Offline within 2 s"
    )
    offline = gateway.get(f"/v1/devices/{serial}").json()
    assert offline["Port"] is None
    assert serial not in "".join(gateway.open_ports())
    assert time.monotonic() - started < 2

    rack(gateway.data, "plug", serial=serial)
    back = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Idle" and d,
        2,
        "Idle again within 2 s",
    )
    assert (back["ResinUUID"], back["Name"]) == (devices[serial]["ResinUUID"], devices[serial]["Name"])
    assert len(gateway.devices()) == 2  # the old record, not a new board

    started = time.monotonic()
    new_serial = rack(gateway.data, "add", board_type="rp2040")["serial"]
    new = wait_for(lambda: by_serial(gateway.devices()).get(new_serial), 2, "the new board listed within 2 s")
    assert time.monotonic() - started < 2
    assert new["BoardType"] == "rp2040"  # MicroPython's id is ambiguous: the firmware told

    identities = {s: (d["ResinUUID"], d["Name"]) for s, d in by_serial(gateway.devices()).items()}
    gateway.stop()
    again = gateway_factory("--simulate", "2")
    # the rack keeps its boards: the two pico2-ice come back (the added rp2040 is beyond --simulate)
    after = by_serial(
        again.wait_devices(
            lambda d: sum(x["Status"] == "Idle" for x in d) == 2, 15, "the two boards back after a restart"
        )
    )
    assert set(rack_boards(again.data)) >= set(devices)
    for serial in devices:
        assert (after[serial]["ResinUUID"], after[serial]["Name"]) == identities[serial]
    assert after[new_serial]["Status"] == "Offline"
