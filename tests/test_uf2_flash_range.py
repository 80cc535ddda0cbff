"""Issue #13, item 7: a UF2 whose blocks are not in the flash of their family is refused.

A bootrom writes a block for SRAM (0x20000000) to SRAM and runs it: the board loses it at the
next reset, yet the gateway would record it as the board's commit. The gateway's flash endpoint
and the fleet's push refuse such images, naming the block and its address.
"""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.formats import image, uf2
from tests.helpers.boards import app_uf2, rack_boards
from tests.helpers.fleet import FleetProcess, git
from tests.helpers.gateway import idle_boards
from tests.test_fleet_git import MANIFEST, commit, remote_head, write

pytestmark = pytest.mark.timeout(120)

OCTETS = {"Content-Type": "application/octet-stream"}
SRAM = 0x20000000


def with_block_at(data: bytes, index: int, address: int) -> bytes:
    """``data`` (a UF2 file) with block ``index`` moved to ``address``."""
    changed = bytearray(data)
    struct.pack_into("<I", changed, index * uf2.BLOCK_SIZE + 12, address)
    return bytes(changed)


def test_the_flash_range_of_each_family() -> None:
    good = uf2.read_uf2(app_uf2("2.0.0"))
    assert uf2.outside_flash(good) is None
    e10 = uf2.read_uf2(uf2.from_binary(b"\xef" * 256, 0x10FFFF00, uf2.RP2_ABSOLUTE))  # picotool's block
    assert uf2.outside_flash(e10) is None
    in_sram = uf2.read_uf2(uf2.from_binary(b"\x00" * 1024, SRAM, uf2.RP2040))
    assert uf2.outside_flash(in_sram) == (
        "block 0 targets 0x20000000..0x20000100, outside the flash of family rp2040 (0x10000000..0x11000000)"
    )
    past_the_end = uf2.read_uf2(uf2.from_binary(b"\x00" * 512, 0x10FFFF00, uf2.RP2350_ARM_S))
    assert (problem := uf2.outside_flash(past_the_end)) is not None and problem.startswith(
        "block 1 targets 0x11000000..0x11000100"
    )
    skipped = bytearray(uf2.from_binary(b"\x00" * 256, SRAM, uf2.RP2040))
    struct.pack_into("<I", skipped, 8, uf2.FLAG_NOT_MAIN_FLASH | uf2.FLAG_FAMILY_ID_PRESENT)
    assert uf2.outside_flash(uf2.read_uf2(bytes(skipped))) is None  # no flasher writes it: not checked


def test_the_gateway_refuses_an_image_for_sram(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1")
    before = idle_boards(gateway, 1)[0]
    serial = before["LocalUUID"]
    url = f"{gateway.url}/v1/devices/{serial}/flash?commit=in-ram"
    app = image.make_app_image("picofleet-app", "2.0.0", "pico2-ice")
    whole = uf2.from_binary(app, SRAM, uf2.RP2350_ARM_S)  # a valid UF2, but for SRAM
    response = httpx.post(url, content=whole, headers=OCTETS, timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("block 0 targets 0x20000000..0x20000100, outside the flash")
    # the picofleet app, built as usual but with its third block aimed at SRAM
    in_ram = with_block_at(app_uf2("2.0.0"), 2, SRAM)
    response = httpx.post(url, content=in_ram, headers=OCTETS, timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == (
        "block 2 targets 0x20000000..0x20000100, outside the flash of family rp2350-arm-s "
        "(0x10000000..0x11000000): a pico2-ice would not keep it across a reset"
    )
    after = gateway.get(f"/v1/devices/{serial}").json()
    assert after["Commit"] == before["Commit"] and after["PendingFlash"] is None
    assert after["Status"] == "Idle"
    assert rack_boards(gateway.data)[serial]["flashes"] == 0  # the board was never touched


def test_a_push_with_an_image_for_sram_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    fleet.create_fleet("lab")
    work = tmp_path / "repo"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2("2.0.0")})
    good = commit(work, "good")
    url = fleet.push_url("lab")
    git(work, "push", "-q", url, "main")
    write(work, {"build/app.uf2": with_block_at(app_uf2("3.0.0"), 1, SRAM + 0x100)})
    commit(work, "in RAM")
    refused = git(work, "push", url, "main", check=False)
    assert refused.returncode != 0
    reason = (
        "build/app.uf2: block 1 targets 0x20000100..0x20000200, outside the flash of family rp2350-arm-s "
        "(0x10000000..0x11000000): a pico2-ice would not keep it across a reset"
    )
    assert any(line.startswith("remote: ") and reason in line for line in refused.stderr.splitlines()), (
        refused.stderr
    )
    assert remote_head(work, url) == good
    assert [release["commit"] for release in fleet.releases("lab")] == [good]
