"""Flashing through the real gateway code path into a file standing in for a bootloader block device.

The stand-in is what an RP2 bootrom presents as ``/dev/sda1``: a FAT16 filesystem labelled
RPI-RP2 or RP2350 holding INDEX.HTM and INFO_UF2.TXT, made here with pyfatfs; or, byte for
byte, the whole disk ``/dev/sda`` as pico-bootrom-rp2040 ``virtual_disk.c`` and
pico-bootrom-rp2350 ``usb_virtual_disk.c`` synthesise it (an MBR, and a boot sector that on
the RP2040 has no 0x55AA signature). The device manager, store, plugins, flashing and the
built-in hooks are the gateway's own; discovery is replaced by the test calling
``on_present``/``on_gone``, and the board's application firmware by picofleet-app on a pty.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pyfatfs.EightDotThree import EightDotThree
from pyfatfs.FATDirectoryEntry import FATDirectoryEntry
from pyfatfs.PyFat import PyFat

from picofleet.common.http.errors import ApiError
from picofleet.firmware.formats import uf2
from picofleet.gateway import bootloader_drive
from picofleet.gateway.boards import flashing
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.http.devices import _read_image
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardError, Sighting
from tests.helpers.boards import app_uf2
from tests.helpers.fake_micropython import FakeMicroPythonBoard
from tests.helpers.manager import device_manager
from tests.helpers.wait import until

SERIAL = "E6614C311B7E3C2A"
USB_PATH = "platform-xhci-hcd.0-usb-0:1.2:1.0"
BLOCK_KEY = (
    "/sys/devices/platform/xhci-hcd.0/usb1/1-1/1-1.2/1-1.2:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda1"
)
TTY_KEY = "/sys/devices/platform/xhci-hcd.0/usb1/1-1/1-1.2/1-1.2:1.0/tty/ttyACM0"

DISK_SECTORS = 128 * 1024 * 1024 // 512
"""The bootroms' disk: 128 MiB; the FAT partition is all of it but the MBR's sector."""
CHIPS: dict[str, dict[str, Any]] = {
    "rp2040": {
        "label": "RPI-RP2",
        "info": b"UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n",
        "signed_boot_sector": False,
    },
    "rp2350": {
        "label": "RP2350",
        "info": b"UF2 Bootloader v1.0\nModel: Raspberry Pi RP2350\nBoard-ID: RP2350\n",
        "signed_boot_sector": True,
    },
}
"""What the bootroms show (the RP2040's B2 ROM; the RP2350's A2 ROM without OTP white-label data)."""


def index_htm(serial: str = "E0C9125B0D9B") -> bytes:
    """INDEX.HTM: the bootroms' redirect to raspberrypi.com with a 12-character version string."""
    url = f"https://raspberrypi.com/device/RP2?version={serial}"
    return (
        f'<html><head><meta http-equiv="refresh" content="0;URL=\'{url}\'"/></head>'
        f"<body>Redirecting to <a href='{url}'>raspberrypi.com</a></body></html>"
    ).encode()


# -- stand-ins for the bootloader drive -------------------------------------------------------------
def fat_partition(path: Path, chip: str = "rp2040", info: bytes | None = None) -> Path:
    """A FAT16 filesystem like the bootrom's partition (/dev/sda1), made with pyfatfs."""
    path.write_bytes(b"")
    fat = PyFat()
    fat.mkfs(str(path), PyFat.FAT_TYPE_FAT16, size=(DISK_SECTORS - 1) * 512, label=CHIPS[chip]["label"])
    fat.close()  # pyfatfs 1.1.0 places data wrongly right after mkfs on FAT16: reopen first
    fat = PyFat()
    fat.open(str(path))
    for name, data in (("INDEX.HTM", index_htm()), ("INFO_UF2.TXT", info or CHIPS[chip]["info"])):
        short = EightDotThree(encoding=fat.encoding)
        short.set_str_name(name)
        first = fat.allocate_bytes(len(data))[0]
        fat.write_data_to_cluster(data, first)
        attributes = FATDirectoryEntry.ATTR_READ_ONLY | FATDirectoryEntry.ATTR_ARCHIVE
        entry = FATDirectoryEntry.new(
            name=short,
            tz=datetime.UTC,
            encoding=fat.encoding,
            attr=attributes,
            cluster=first,
            filesize=len(data),
        )
        fat.root_dir.add_subdirectory(entry)
    fat.update_directory_entry(fat.root_dir)
    fat.flush_fat()
    fat.close()
    return path


def bootrom_disk(path: Path, chip: str = "rp2040", *, total_bytes: int = DISK_SECTORS * 512) -> Path:
    """The whole disk (/dev/sda) as the bootrom synthesises it, sector for sector (sparse file)."""
    sectors_per_fat = 2 * (DISK_SECTORS // 8 + 511) // 512  # SECTORS_PER_FAT of virtual_disk.c: 129
    label = CHIPS[chip]["label"].encode().ljust(11)
    info = CHIPS[chip]["info"]
    index = index_htm()
    with open(path, "wb") as disk:
        disk.truncate(total_bytes)

        def sector(lba: int, data: bytes) -> None:
            disk.seek(lba * 512)
            disk.write(data)

        mbr = bytearray(512)
        mbr[446 + 4] = 0x0E  # FAT16 LBA
        mbr[446 + 8 : 446 + 12] = struct.pack("<I", 1)
        mbr[446 + 12 : 446 + 16] = struct.pack("<I", DISK_SECTORS - 1)
        mbr[0x1B8:0x1BC] = bytes.fromhex("2a3c7e1b")  # the disk serial
        mbr[510:512] = b"\x55\xaa"
        sector(0, bytes(mbr))
        boot = bytearray(512)
        boot[0:3] = b"\xeb\x3c\x90"
        boot[3:11] = b"MSWIN4.1"
        struct.pack_into("<HBHBHHBHHHI", boot, 11, 512, 8, 1, 2, 512, 0, 0xF8, sectors_per_fat, 1, 1, 1)
        struct.pack_into("<I", boot, 0x20, DISK_SECTORS - 1)
        boot[0x26] = 0x29
        boot[0x27:0x2B] = bytes.fromhex("2a3c7e1b")
        boot[0x2B:0x36] = label
        boot[0x36:0x3E] = b"FAT16   "
        boot[0x3E:0x40] = b"\xeb\xfe"
        if CHIPS[chip]["signed_boot_sector"]:
            boot[510:512] = b"\x55\xaa"
        sector(1, bytes(boot))
        fat = struct.pack("<4H", 0xFFF8, 0xFFFF, 0xFFFF, 0xFFFF)  # clusters 2 and 3: one each
        sector(2, fat)
        sector(2 + sectors_per_fat, fat)
        root = 2 + 2 * sectors_per_fat
        time, date = (16 << 11) | (20 << 5) | (51 >> 1), (28 << 9) | (9 << 5) | 5  # 2008-09-05 16:20:51

        def file_entry(name: bytes, cluster: int, size: int) -> bytes:  # init_dir_entry(): read-only, archive
            return name + struct.pack(
                "<BBBHHHHHHHI", 0x21, 0, 100, time, date, 0, 0, time, date, cluster, size
            )

        volume_label = label + bytes([0x28]) + bytes(20)
        index_entry = file_entry(b"INDEX   HTM", 2, len(index))
        sector(root, volume_label + index_entry + file_entry(b"INFO_UF2TXT", 3, len(info)))
        data = root + 512 * 32 // 512  # after the root directory: 512 entries of 32 bytes
        sector(data, index)  # cluster 2
        sector(data + 8, info)  # cluster 3
    return path


def partition_of(disk: Path, path: Path) -> Path:
    """The partition (/dev/sda1) of a bootrom disk: everything after the MBR's sector."""
    with open(disk, "rb") as source, open(path, "wb") as target:
        source.seek(512)
        target.write(source.read(1 << 20))  # everything the bootrom fills in is in the first MiB
        target.truncate(os.path.getsize(disk) - 512)
    return path


# -- INFO_UF2.TXT without mounting ------------------------------------------------------------------
@pytest.mark.parametrize("chip", ["rp2040", "rp2350"])
def test_info_uf2_is_read_from_every_kind_of_stand_in(tmp_path: Path, chip: str) -> None:
    expected = CHIPS[chip]["info"].decode()
    disk = bootrom_disk(tmp_path / "sda", chip)
    stand_ins = [fat_partition(tmp_path / "made.img", chip), disk, partition_of(disk, tmp_path / "sda1")]
    for stand_in in stand_ins:
        assert bootloader_drive.read_info_uf2(str(stand_in)) == expected, stand_in
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "INFO_UF2.TXT").write_bytes(CHIPS[chip]["info"])
    assert bootloader_drive.read_info_uf2(str(mounted)) == expected
    assert bootloader_drive.board_ids(expected) == [CHIPS[chip]["label"]]


def test_unreadable_drives_raise_board_errors_with_the_reason(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(4096))
    with pytest.raises(
        BoardError, match=re.escape(f"cannot read INFO_UF2.TXT on its bootloader drive {zeros}: no FAT")
    ):
        bootloader_drive.read_info_uf2(str(zeros))
    with pytest.raises(BoardError, match="No such file or directory"):
        bootloader_drive.read_info_uf2(str(tmp_path / "gone"))
    no_info = fat_partition(tmp_path / "noinfo.img")
    with open(no_info, "r+b") as image:  # rename INFO_UF2.TXT in the root directory
        data = image.read(1 << 20)
        image.seek(data.index(b"INFO_UF2TXT"))
        image.write(b"README  TXT")
    with pytest.raises(
        BoardError, match=re.escape("not a readable FAT filesystem (Cannot find entry INFO_UF2.TXT)")
    ):
        bootloader_drive.read_info_uf2(str(no_info))


def test_a_raw_write_needs_a_fresh_check_a_plausible_size_and_uf2_blocks(tmp_path: Path) -> None:
    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040)
    drive = str(fat_partition(tmp_path / "sda1"))
    with pytest.raises(BoardError, match=re.escape("its INFO_UF2.TXT was not checked first")):
        bootloader_drive.check_raw_write(drive, image)
    bootloader_drive.mark_checked(drive, "RPI-RP2")
    bootloader_drive.check_raw_write(drive, image)
    with pytest.raises(BoardError, match="was not checked first"):  # a check is good for one write
        bootloader_drive.check_raw_write(drive, image)
    bootloader_drive.mark_checked(drive, "RP2350")
    with pytest.raises(BoardError, match=re.escape("its INFO_UF2.TXT now says 'RPI-RP2', not 'RP2350'")):
        bootloader_drive.check_raw_write(drive, image)
    bootloader_drive.mark_checked(drive, "RPI-RP2")
    with pytest.raises(BoardError, match="block 1 of the image is not a UF2 block"):
        bootloader_drive.check_raw_write(drive, image[:512] + bytes(512))
    big = str(bootrom_disk(tmp_path / "big", total_bytes=2 << 30))
    bootloader_drive.mark_checked(big, "RPI-RP2")
    with pytest.raises(
        BoardError,
        match=re.escape(f"refusing to write to {big}: {2 << 30} bytes is not an RP2 bootloader drive"),
    ):
        bootloader_drive.check_raw_write(big, image)


# -- the gateway, in-process ---------------------------------------------------------------------------
@asynccontextmanager
async def gateway(data: Path) -> AsyncIterator[DeviceManager]:
    """The gateway's device manager with a real store and the installed plugins (no discovery, no API)."""
    async with device_manager(data, {"ENM_UPDATE_RETRIES": "0"}) as manager:
        yield manager


def bootloader_sighting(drive: Path, board_type: str = "rp2040") -> Sighting:
    """What discovery reports for the bootrom's block device."""
    return Sighting(BLOCK_KEY, SERIAL, BOOTLOADER, (board_type,), "bootrom", str(drive), USB_PATH)


def application_sighting(device: str) -> Sighting:
    """What discovery reports for MicroPython's tty (2e8a:0005 is both an RP2040 and an RP2350)."""
    return Sighting(TTY_KEY, SERIAL, APPLICATION, ("rp2040", "rp2350"), "micropython", device, USB_PATH)


async def board_in_bootloader(manager: DeviceManager, drive: Path, board_type: str = "rp2040") -> Board:
    """Plug in a board sitting in its bootloader and wait until the gateway has it."""
    manager.on_present(bootloader_sighting(drive, board_type))
    board = manager.boards[SERIAL]
    await until(lambda: board.record["Status"] == "Bootloader", 5, "the board in its bootloader")
    return board


async def broken(board: Board) -> str:
    """Wait for Broken and return the reason."""
    await until(lambda: board.record["Status"] == "Broken", 10, "Broken")
    return str(board.record["StatusReason"])


def assert_written_block_by_block(drive: Path, image: bytes, before: bytes) -> None:
    """UF2 block i at byte 512 * i, identical; every byte after the image as it was."""
    after = drive.read_bytes()
    assert len(after) == len(before)
    for index in range(len(image) // 512):
        block = after[512 * index : 512 * (index + 1)]
        assert block == image[512 * index : 512 * (index + 1)], f"block {index} differs"
        assert uf2.parse_block(block, index).block_no == index
    assert after[len(image) :] == before[len(image) :]


@pytest.mark.parametrize("stand_in", ["sda1-made-with-pyfatfs", "sda-as-the-rp2040-bootrom-shows-it"])
def test_a_board_in_its_bootloader_is_flashed_and_comes_back(tmp_path: Path, stand_in: str) -> None:
    drive = (
        fat_partition(tmp_path / "sda1")
        if stand_in.startswith("sda1")
        else bootrom_disk(tmp_path / "sda", "rp2040")
    )
    before = drive.read_bytes()
    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040, size=100 * 1024)

    async def scenario() -> None:
        async with gateway(tmp_path / "data") as manager:
            board = await board_in_bootloader(manager, drive)
            job = _read_image(image, manager.board_types["rp2040"])  # as POST /v1/devices/{uuid}/flash does
            job.commit = "c0ffee"
            progress: list[tuple[int, int]] = []
            set_progress = board.set_progress

            def record(done: int, total: int) -> None:
                progress.append((done, total))
                set_progress(done, total)

            board.set_progress = record  # type: ignore[method-assign]
            await manager.request_flash(board, job)
            await until(lambda: board.record["Status"] == "Starting", 10, "the UF2 written")

            assert_written_block_by_block(drive, image, before)
            assert progress[-1] == (len(image), len(image))
            assert all(done % 512 == 0 and total == len(image) for done, total in progress)

            # the bootrom reboots ~1 s after the last block: its drive goes, the new firmware's tty comes
            with FakeMicroPythonBoard("app", version="2.0.0", serial=SERIAL, board="rp2040") as app:
                manager.on_gone(BLOCK_KEY)
                manager.on_present(application_sighting(app.device))
                await until(lambda: board.record["Status"] == "Idle", 10, "the board back and Idle")
                assert board.record["FirmwareVersion"] == "picofleet-app 2.0.0"
                assert board.record["Commit"] == "c0ffee"
                assert board.record["BoardType"] == "rp2040"
                assert board.record["Port"] == app.device
                assert board.provisioned and manager.find(SERIAL) is board
                await manager.stop()  # closes the port before the fake board goes

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("board_type", "family", "message"),
    [
        ("rp2040", uf2.RP2350_ARM_S, "UF2 family rp2350-arm-s cannot run on a rp2040 (accepted: rp2040)"),
        (
            "rp2350",
            uf2.RP2040,
            "UF2 family rp2040 cannot run on a rp2350 (accepted: absolute, data, rp2350-arm-s",
        ),
    ],
)
def test_a_wrong_family_uf2_is_refused_before_anything_is_written(
    tmp_path: Path, board_type: str, family: int, message: str
) -> None:
    chip = board_type
    drive = fat_partition(tmp_path / "sda1", chip)
    before = drive.read_bytes()
    image = app_uf2("2.0.0", board=board_type, family=family)

    async def scenario() -> None:
        async with gateway(tmp_path / "data") as manager:
            board = await board_in_bootloader(manager, drive, board_type)
            with pytest.raises(ApiError) as refused:  # the API answers 422 with the reason
                _read_image(image, manager.board_types[board_type])
            assert refused.value.status == 422 and message in refused.value.message
            # a job that did not come through the API (fleet sync) is refused by flashing itself
            job = FlashJob(image, uf2.read_uf2(image).families, "2.0.0")
            await manager.request_flash(board, job)
            assert message in await broken(board)

    asyncio.run(scenario())
    assert drive.read_bytes() == before


def test_info_uf2_naming_another_chip_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    drive = fat_partition(tmp_path / "sda1", "rp2350")  # an RP2350's bootrom ...
    before = drive.read_bytes()
    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040)

    async def scenario() -> None:
        async with gateway(tmp_path / "data") as manager:
            board = await board_in_bootloader(manager, drive, "rp2040")  # ... on a board known as an rp2040
            await manager.request_flash(board, _read_image(image, manager.board_types["rp2040"]))
            reason = await broken(board)
            assert "its bootloader says 'RP2350', a rp2040 bootloader says 'RPI-RP2'" in reason

    asyncio.run(scenario())
    assert drive.read_bytes() == before


@pytest.mark.parametrize("what", ["no FAT", "too large"])
def test_a_drive_that_is_not_a_bootloader_drive_is_never_written(tmp_path: Path, what: str) -> None:
    if what == "no FAT":
        drive = tmp_path / "sdb"
        drive.write_bytes(bytes(1 << 20))
        expected = f"cannot read INFO_UF2.TXT on its bootloader drive {drive}: no FAT filesystem"
    else:
        drive = bootrom_disk(tmp_path / "sdb", total_bytes=2 << 30)
        expected = f"refusing to write to {drive}: {2 << 30} bytes is not an RP2 bootloader drive"
    head, stat_before = drive.read_bytes()[: 1 << 20], drive.stat()
    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040)

    async def scenario() -> None:
        async with gateway(tmp_path / "data") as manager:
            board = await board_in_bootloader(manager, drive)
            await manager.request_flash(board, _read_image(image, manager.board_types["rp2040"]))
            assert expected in await broken(board)

    asyncio.run(scenario())
    stat_after = drive.stat()
    assert drive.read_bytes()[: 1 << 20] == head
    assert (stat_after.st_size, stat_after.st_blocks, stat_after.st_mtime_ns) == (
        stat_before.st_size,
        stat_before.st_blocks,
        stat_before.st_mtime_ns,
    )


def watch_status(board: Board) -> list[tuple[str, str | None]]:
    """Record every (Status, StatusReason) the board goes through, however briefly."""
    seen: list[tuple[str, str | None]] = []
    update = board.update

    async def recording(**fields: Any) -> None:
        await update(**fields)
        now = (str(board.record["Status"]), board.record.get("StatusReason"))
        if not seen or seen[-1] != now:
            seen.append(now)

    board.update = recording  # type: ignore[method-assign]
    return seen


NEVER_CAME_BACK = "flash failed after 1 attempt(s): did not come back with its new firmware within 1 s"


@pytest.mark.parametrize("drive_after_the_write", ["stays", "vanishes"])
def test_a_board_that_never_comes_back_is_broken_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drive_after_the_write: str
) -> None:
    """The bootrom stays (it did not take the image) or reboots into nothing that enumerates."""
    monkeypatch.setattr(flashing, "BOOT_TIMEOUT", 1.0)
    drive = fat_partition(tmp_path / "sda1")
    before = drive.read_bytes()
    image = app_uf2("2.0.0", board="rp2040", family=uf2.RP2040)

    async def scenario() -> None:
        async with gateway(tmp_path / "data") as manager:
            board = await board_in_bootloader(manager, drive)
            statuses = watch_status(board)
            await manager.request_flash(board, _read_image(image, manager.board_types["rp2040"]))
            await until(lambda: board.record["Status"] == "Starting", 10, "the UF2 written")
            if drive_after_the_write == "stays":
                assert await broken(board) == NEVER_CAME_BACK
                assert board.record["Status"] == "Broken"  # and it stays so, in its bootloader
            else:
                manager.on_gone(BLOCK_KEY)
                await until(lambda: ("Broken", NEVER_CAME_BACK) in statuses, 10, "Broken with the reason")
                # unplugged (no USB device at all): Offline, as docs/states.md says
                await until(lambda: board.record["Status"] == "Offline", 5, "Offline")
            assert board.record["Commit"] is None

    asyncio.run(scenario())
    assert_written_block_by_block(drive, image, before)
