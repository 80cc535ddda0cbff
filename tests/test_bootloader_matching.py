"""A bootloader drive is matched to the board being flashed by serial, or by USB port path when the
bootrom reports another serial; the flash goes through the real orchestration with a scripted plugin."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardIdentity, Sighting
from tests.helpers.boards import app_uf2
from tests.helpers.manager import device_manager
from tests.helpers.wait import until

TTY_PATH = "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0"
DISK_PATH = "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0-scsi-0:0:0:0"  # udev's ID_PATH differ
PORT = "1-1.3"  # ... but the USB port is the same


class ScriptedBoard:
    """A plugin playing one board: its firmware, and a bootrom that reports ``bootrom_serial``."""

    def __init__(self, manager_ref: dict[str, Any], drive: Path, bootrom_serial: str):
        self.manager_ref, self.drive, self.bootrom_serial = manager_ref, drive, bootrom_serial
        self.version = "1.0.0"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock_events: list[str] = []

    def app(self, boot: int) -> Sighting:
        return Sighting(
            f"tty-{boot}",
            "E6614103E73F9A2B",
            APPLICATION,
            ("rp2040",),
            "pico-sdk",
            f"/dev/ttyACM{boot}",
            TTY_PATH,
            usb_port=PORT,
        )

    def bootloader(self) -> Sighting:
        return Sighting(
            "block",
            self.bootrom_serial,
            BOOTLOADER,
            ("rp2040",),
            "bootrom",
            str(self.drive),
            DISK_PATH,
            usb_port=PORT,
        )

    def later(self, *steps: Any) -> None:
        manager = self.manager_ref["manager"]
        assert self.loop is not None
        for step in steps:
            self.loop.call_soon_threadsafe(step, manager)

    def plugin(self) -> types.ModuleType:
        module = types.ModuleType("scripted_board")

        @hookimpl(tryfirst=True)
        def picofleet_open_port(board):  # type: ignore[no-untyped-def]
            """A port that needs no device."""
            return types.SimpleNamespace(close=lambda: None)

        @hookimpl(tryfirst=True)
        def picofleet_identify(board, port):  # type: ignore[no-untyped-def]
            """The firmware's answer."""
            return BoardIdentity("rp2040", board.serial, "app", self.version)

        @hookimpl(tryfirst=True)
        def picofleet_enter_bootloader(board, port):  # type: ignore[no-untyped-def]
            """The tty goes, the bootrom's drive comes (with its own serial)."""
            self.later(lambda m: m.on_gone("tty-1"), lambda m: m.on_present(self.bootloader()))
            return True

        @contextlib.contextmanager
        def update_lock() -> Iterator[None]:
            self.lock_events.append("taken")
            yield
            self.lock_events.append("released")

        @hookimpl(tryfirst=True)
        def picofleet_update_lock(config):  # type: ignore[no-untyped-def]
            """A lock that records when it is held."""
            return update_lock()

        @hookimpl(tryfirst=True)
        def picofleet_write_uf2(board, drive, uf2, progress):  # type: ignore[no-untyped-def]
            """The bootrom takes the image and reboots into it."""
            self.lock_events.append("write")
            Path(drive, "written.uf2").write_bytes(uf2)
            self.version = "2.0.0"
            self.later(lambda m: m.on_gone("block"), lambda m: m.on_present(self.app(2)))
            return True

        for function in (
            picofleet_open_port,
            picofleet_identify,
            picofleet_enter_bootloader,
            picofleet_update_lock,
            picofleet_write_uf2,
        ):
            setattr(module, function.__name__, function)
        return module


async def flash_with_bootrom_serial(tmp_path: Path, bootrom_serial: str) -> dict[str, Any]:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    holder: dict[str, Any] = {}
    board_script = ScriptedBoard(holder, drive, bootrom_serial)
    board_script.loop = asyncio.get_running_loop()
    plugins = [("scripted", board_script.plugin())]
    async with device_manager(tmp_path / "data", {"ENM_UPDATE_RETRIES": "0"}, plugins) as manager:
        holder["manager"] = manager
        manager.on_present(board_script.app(1))
        board = await until(
            lambda: (
                (b := manager.find("E6614103E73F9A2B")) is not None and b.record["Status"] == "Idle" and b
            ),
            10,
            "the board Idle",
        )
        image = app_uf2("2.0.0", board="rp2040", family=0xE48BFF56)
        await manager.request_flash(board, FlashJob(image, frozenset({0xE48BFF56}), "2.0.0", "c2"))
        await until(
            lambda: board.record["Commit"] == "c2" or board.record["Status"] == "Broken", 10, "the flash"
        )
        # the commit is recorded inside the flash, the lock let go just after it: wait for both
        await until(lambda: "released" in board_script.lock_events, 10, "the update lock released")
        assert (drive / "written.uf2").read_bytes() == image
        return {"record": board.record, "boards": len(manager.listed()), "lock": board_script.lock_events}


def test_bootloader_drive_with_the_same_serial_is_the_same_board(tmp_path: Path) -> None:
    result = asyncio.run(flash_with_bootrom_serial(tmp_path, "E6614103E73F9A2B"))
    assert result["record"]["Status"] == "Idle" and result["record"]["FirmwareVersion"] == "app 2.0.0"
    assert result["boards"] == 1
    assert result["lock"] == ["taken", "write", "released"]  # the update lock is held while flashing


def test_bootloader_drive_with_another_serial_is_matched_by_usb_port_path(tmp_path: Path) -> None:
    result = asyncio.run(flash_with_bootrom_serial(tmp_path, "RP2-BOOTROM-SERIAL"))
    assert result["record"]["Status"] == "Idle", result["record"]["StatusReason"]
    assert result["record"]["Commit"] == "c2"
    assert result["boards"] == 1  # not a new board


def test_a_port_drive_is_never_given_to_a_board_that_left_the_port_or_to_one_of_several(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with device_manager(tmp_path / "data") as manager:

            def app(key: str, serial: str) -> Sighting:
                return Sighting(
                    key,
                    serial,
                    APPLICATION,
                    ("rp2040",),
                    "pico-sdk",
                    "/nonexistent",
                    TTY_PATH,
                    usb_port=PORT,
                    matching_types=("rp2040",),
                )

            def bootrom(key: str) -> Sighting:
                """An RP2040 bootrom's drive on the port (a drive has no serial number)."""
                return Sighting(
                    key,
                    "",
                    BOOTLOADER,
                    ("rp2040",),
                    "bootrom",
                    "/nonexistent",
                    DISK_PATH,
                    usb_port=PORT,
                    matching_types=("rp2040",),
                )

            drive = bootrom("drive")
            manager.on_present(app("a", "AAAA000000000001"))
            manager.on_gone("a")
            manager.on_present(app("b", "BBBB000000000002"))  # another Pico on the same port
            assert manager.boards["AAAA000000000001"].usb_port == ""  # A no longer claims it
            manager.on_gone("b")
            manager.on_present(drive)  # an RP2040 bootrom there: the last board seen on the port
            assert manager.boards["BBBB000000000002"].sightings.get(BOOTLOADER) is drive
            manager.on_gone("drive")
            manager.boards["AAAA000000000001"].usb_port = PORT  # two boards claiming one port...
            manager.on_present(bootrom("drive2"))
            placeholder = manager.boards[f"usb-port-{PORT}"]  # ... and nobody guesses between them
            assert placeholder.sightings

    asyncio.run(scenario())


def test_a_wrong_guess_from_an_ambiguous_usb_id_is_corrected_by_the_bootloader(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with device_manager(
            tmp_path / "data"
        ) as manager:  # MicroPython on an RP2350 that did not answer identify: guessed rp2040
            manager.on_present(
                Sighting(
                    "tty",
                    "5B8C0E2F7A4D9136",
                    APPLICATION,
                    ("rp2040", "rp2350"),
                    "micropython",
                    "/nonexistent",
                    TTY_PATH,
                    usb_port=PORT,
                )
            )
            manager.on_gone("tty")
            manager.on_present(
                Sighting(
                    "disk",
                    "5B8C0E2F7A4D9136",
                    BOOTLOADER,
                    ("rp2350",),
                    "bootrom",
                    "/nonexistent",
                    DISK_PATH,
                    usb_port=PORT,
                    matching_types=("rp2350", "pico2-ice"),
                )
            )
            board = await until(
                lambda: (
                    (b := manager.find("5B8C0E2F7A4D9136")) is not None
                    and b.record["Status"] == "Bootloader"
                    and b
                ),
                5,
                "the board in its bootloader",
            )
            assert board.record["BoardType"] == "rp2350"

    asyncio.run(scenario())
