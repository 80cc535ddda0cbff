"""Flashing virtual boards through their UF2 bootloader; wrong families and bad files refused."""

from __future__ import annotations

import hashlib
import struct

import httpx

from picofleet.firmware.formats import image, uf2
from tests.helpers.boards import app_uf2, rack, rack_boards, wait_rack_gone
from tests.helpers.gateway import idle_boards, wait_for

OCTETS = {"Content-Type": "application/octet-stream"}


def idle(gateway, serial: str) -> dict | None:  # type: ignore[no-untyped-def]
    device = gateway.get(f"/v1/devices/{serial}").json()
    return device if device["Status"] == "Idle" else None


def test_flash_through_the_bootloader_sets_version_and_commit(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
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
    device = idle_boards(gateway, 1)[0]
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
    device = idle_boards(gateway, 1)[0]
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


def test_a_flash_queued_during_a_flash_is_kept(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    url = f"{gateway.url}/v1/devices/{serial}/flash"
    assert (
        httpx.post(url + "?commit=one", content=app_uf2("2.0.0", size=256 * 1024), headers=OCTETS).status_code
        == 202
    )
    wait_for(
        lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] != "Idle", 5, "the first flash to start"
    )
    second = app_uf2("3.0.0")
    assert httpx.post(url + "?commit=two", content=second, headers=OCTETS).status_code == 202

    violations: list[dict] = []

    def second_done() -> dict | None:
        device = gateway.get(f"/v1/devices/{serial}").json()
        pending = device["PendingFlash"] or {}
        if device["Commit"] != "two" and pending.get("sha256") != hashlib.sha256(second).hexdigest():
            violations.append(device)  # until done, the second job must be recorded as pending
        return device if device["Commit"] == "two" and device["Status"] == "Idle" else None

    device = wait_for(second_done, 30, "the second flash")
    assert violations == []
    assert device["FirmwareVersion"] == "picofleet-app 3.0.0"
    assert rack_boards(gateway.data)[serial]["flashes"] == 2


def test_images_the_bootrom_would_ignore_are_refused(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    device = idle_boards(gateway, 1)[0]
    url = f"{gateway.url}/v1/devices/{device['LocalUUID']}/flash"
    small_blocks = uf2.from_binary(
        image.make_app_image("picofleet-app", "4.0.0", "pico2-ice"),
        image.FLASH_BASE,
        uf2.RP2350_ARM_S,
        payload_size=128,
    )
    response = httpx.post(url, content=small_blocks, headers=OCTETS)
    assert response.status_code == 422 and "256-byte payloads" in response.json()["error"]
    far_apart = bytearray(uf2.from_binary(b"\xaa" * 512, image.FLASH_BASE, uf2.RP2350_ARM_S))
    struct.pack_into("<I", far_apart, 512 + 12, image.FLASH_BASE + 0x40000000)  # block 1, 1 GiB away
    response = httpx.post(url, content=bytes(far_apart), headers=OCTETS)
    assert response.status_code == 422 and "block 1 targets 0x50000000" in response.json()["error"]
    # (outside the flash: refused before any flat image is allocated)


def test_identify_needs_a_running_firmware(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    rack(gateway.data, "bootsel", serial=serial)
    wait_for(lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Bootloader", 5, "Bootloader")
    response = gateway.put(f"/v1/devices/{serial}/identify")
    assert response.status_code == 409 and "not running its firmware (Bootloader)" in response.json()["error"]
    rack(gateway.data, "unplug", serial=serial)
    wait_for(lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Offline", 5, "Offline")
    assert gateway.put(f"/v1/devices/{serial}/identify").status_code == 409


def test_a_failed_flash_leaves_the_board_broken_with_the_reason_until_replugged(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"ENM_UPDATE_RETRIES": "0"})
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    # an image that claims version 5.0.0 but boots as firmware the gateway cannot identify
    other = uf2.from_binary(
        image.make_app_image("other-app", "5.0.0", "pico2-ice"), image.FLASH_BASE, uf2.RP2350_ARM_S
    )
    assert (
        httpx.post(
            f"{gateway.url}/v1/devices/{serial}/flash?commit=bad", content=other, headers=OCTETS
        ).status_code
        == 202
    )
    broken = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Broken" and d, 20, "Broken"
    )
    assert "expected version 5.0.0" in broken["StatusReason"]
    assert broken["Commit"] is None  # Commit only on success
    # it stays Broken (the reason visible) while nothing changes: the board answers list requests meanwhile
    for _ in range(20):
        assert gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Broken"
        rack_boards(gateway.data)
    rack(gateway.data, "unplug", serial=serial)
    wait_for(lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Offline", 5, "Offline")
    rack(gateway.data, "plug", serial=serial)
    back = wait_for(lambda: idle(gateway, serial), 10, "Idle after a replug")
    assert back["FirmwareVersion"] is None and back["StatusReason"] is None


def test_a_flash_cut_short_by_a_power_loss_is_done_at_the_next_start(gateway_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    JSON = {"Content-Type": "application/json"}
    assert gateway.put("/v1/enm/status", content='{"targetStatus":"Paused"}', headers=JSON).status_code == 200
    image_bytes = app_uf2("2.5.0")
    assert (
        httpx.post(
            f"{gateway.url}/v1/devices/{serial}/flash?commit=c25", content=image_bytes, headers=OCTETS
        ).status_code
        == 202
    )
    pending = gateway.get(f"/v1/devices/{serial}").json()["PendingFlash"]
    assert pending == {"sha256": hashlib.sha256(image_bytes).hexdigest(), "commit": "c25", "version": "2.5.0"}
    gateway.kill()  # the power goes

    wait_rack_gone(gateway.data)
    (gateway.data / "virtual" / "flash" / f"{serial}.uf2").unlink()  # a half-written flash: no valid image

    again = gateway_factory("--simulate", "1")
    waiting = again.wait_devices(
        lambda d: len(d) == 1 and d[0]["Status"] == "Bootloader", 15, "in its bootloader"
    )
    assert waiting[0]["PendingFlash"]["commit"] == "c25"
    assert again.put("/v1/enm/status", content='{"targetStatus":"Running"}', headers=JSON).status_code == 200
    done = wait_for(
        lambda: (d := idle(again, serial)) and d["Commit"] == "c25" and d["PendingFlash"] is None and d,
        20,
        "the resumed flash",
    )
    assert done["FirmwareVersion"] == "picofleet-app 2.5.0"
    assert done["PendingFlash"] is None


def test_a_board_unplugged_mid_flash_is_recovered_by_the_retry(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    # the bootrom waits 1.5 s after the last block before rebooting: the cable is pulled then
    gateway = gateway_factory(
        "--simulate", "1", env={"PICOFLEET_SIM_REBOOT_DELAY": "1.5", "ENM_UPDATE_RETRIES": "2"}
    )
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    assert (
        httpx.post(
            f"{gateway.url}/v1/devices/{serial}/flash?commit=c3", content=app_uf2("3.0.0"), headers=OCTETS
        ).status_code
        == 202
    )
    wait_for(
        lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Starting", 15, "written, rebooting"
    )
    rack(gateway.data, "unplug", serial=serial)
    rack(gateway.data, "plug", serial=serial)
    done = wait_for(
        lambda: (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] in ("Idle", "Broken") and d,
        40,
        "the retry",
    )
    assert (done["Status"], done["Commit"], done["FirmwareVersion"]) == ("Idle", "c3", "picofleet-app 3.0.0")
    assert "flash attempt 1 of 3 failed" in gateway.output()


def test_a_gateway_stopped_mid_flash_keeps_the_flash_and_finishes_it_after_the_restart(
    gateway_factory,
) -> None:  # type: ignore[no-untyped-def]
    env = {"PICOFLEET_SIM_REBOOT_DELAY": "1.5"}
    gateway = gateway_factory("--simulate", "1", env=env)
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    assert (
        httpx.post(
            f"{gateway.url}/v1/devices/{serial}/flash?commit=c4", content=app_uf2("4.0.0"), headers=OCTETS
        ).status_code
        == 202
    )
    wait_for(
        lambda: gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Starting", 15, "written, rebooting"
    )
    assert gateway.stop() == 0  # SIGTERM in the middle of the flash
    again = gateway_factory("--simulate", "1", env=env)
    assert again.get(f"/v1/devices/{serial}").json()["PendingFlash"]["commit"] == "c4"
    done = wait_for(
        lambda: (d := idle(again, serial)) and d["Commit"] == "c4" and d["PendingFlash"] is None and d,
        30,
        "the flash finished",
    )
    assert (done["FirmwareVersion"], done["PendingFlash"]) == ("picofleet-app 4.0.0", None)
