"""Flashing a board through its UF2 bootloader, the same way for every board type.

Steps, each with a timeout and a reason when it fails: check the image's families against the
board type; ask the firmware to enter the bootloader (``picofleet_enter_bootloader``); wait for
the bootloader drive of *this* board (same serial) to appear; check INFO_UF2.TXT's Board-ID;
write the UF2 (``picofleet_write_uf2``) with progress; wait for the board to come back with its
application firmware; identify it and check the version the image promised. A failed attempt
is retried ENM_UPDATE_RETRIES times with exponential back-off; after the last one the board is
Broken with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from picofleet.firmware.formats import uf2
from picofleet.gateway import bootloader_drive
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.record import Status
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardError, BoardRef, BoardType, Sighting

log = logging.getLogger("picofleet.board")
T = TypeVar("T")

PRESENCE_TIMEOUT = 10.0
BOOTLOADER_TIMEOUT = 10.0
BOOT_TIMEOUT = 15.0
INFO_TIMEOUT = 10.0
RETRY_BASE_DELAY = 0.5


class FlashingHost(Protocol):
    """What flashing asks of the owner of the boards (gateway/boards/manager.py's DeviceManager)."""

    @property
    def config(self) -> GatewayConfig:
        """The gateway's settings (``update_retries``)."""
        ...

    @property
    def board_types(self) -> Mapping[str, BoardType]:
        """The known board types, by name."""
        ...

    def updating(self) -> AbstractAsyncContextManager[None]:
        """Hold the platform's update lock while the board is flashed."""
        ...

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking drive I/O in the board I/O thread pool."""
        ...


class FlashTarget(Protocol):
    """What flashing asks of the board it flashes (gateway/boards/board.py's Board, the caller)."""

    @property
    def manager(self) -> FlashingHost:
        """The board's owner."""
        ...

    @property
    def label(self) -> str:
        """How log lines name the board."""
        ...

    @property
    def record(self) -> Mapping[str, Any]:
        """The board's record (``BoardType``, ``FirmwareVersion``, ``Commit``)."""
        ...

    @property
    def sightings(self) -> Mapping[str, Sighting]:
        """What discovery sees of the board now, by mode."""
        ...

    @property
    def port(self) -> Any:
        """The board's open serial port, or ``None``."""
        ...

    def ref(self, sighting: Sighting | None = None) -> BoardRef:
        """The :class:`BoardRef` hooks receive."""
        ...

    async def update(self, **fields: Any) -> None:
        """Change record fields."""
        ...

    def set_progress(self, done: int, total: int) -> None:
        """Show the flash's live progress."""
        ...

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after presence changes; ``False`` on timeout."""
        ...

    async def call(self, hook: str, **kwargs: Any) -> Any:
        """Call a blocking plugin hook for the board."""
        ...

    async def open_and_identify(self, app: Sighting) -> bool:
        """Open the application port and identify the firmware; ``False`` if it cannot be opened."""
        ...

    async def close_port(self) -> None:
        """Close the board's port if it is open."""
        ...


def check_families(families: frozenset[int], board_type: BoardType) -> None:
    """Raise BoardError unless the board type's bootloader accepts every family of the image."""
    refused = sorted(family for family in families if family not in board_type.uf2_families)
    if refused or not families:
        accepted = ", ".join(uf2.family_name(family) for family in board_type.uf2_families)
        got = ", ".join(uf2.family_name(family) for family in sorted(families)) or "none"
        raise BoardError(f"UF2 family {got} cannot run on a {board_type.name} (accepted: {accepted})")


def check_image(parsed: uf2.UF2Image, board_type: BoardType) -> None:
    """Raise BoardError (the reason, naming the block) unless the board type's bootrom would keep
    ``parsed`` in its flash: families it accepts (:func:`check_families`), every block inside the
    family's flash range (``uf2.FLASH_RANGES``: a block for SRAM would run once and be lost at the
    next reset) and 256-byte payloads (the RP2 bootroms ignore other blocks)."""
    check_families(parsed.families, board_type)
    outside = uf2.outside_flash(parsed)
    if outside is not None:
        raise BoardError(f"{outside}: a {board_type.name} would not keep it across a reset")
    if not parsed.all_payloads_256:
        raise BoardError("the RP2 bootroms only accept UF2 blocks with 256-byte payloads")


def check_bootloader_info(drive: str, board_type: BoardType) -> None:
    """Check the drive's INFO_UF2.TXT names the chip we expect; blocking I/O, run it in a thread.

    ``drive`` is a directory (a mounted or virtual drive) or a block device (or an image file
    standing in for one), whose FAT is read without mounting it (gateway/bootloader_drive.py).
    A raw drive that passes is marked as checked: the built-in ``picofleet_write_uf2`` writes a
    block device only after such a check, and checks again right before writing.
    """
    info = bootloader_drive.read_info_uf2(drive)
    board_ids = bootloader_drive.board_ids(info)
    expected = board_type.bootloader_board_id
    if board_ids != [expected]:
        found = board_ids[0] if board_ids else "no Board-ID"
        raise BoardError(f"its bootloader says {found!r}, a {board_type.name} bootloader says {expected!r}")
    if not os.path.isdir(drive):
        bootloader_drive.mark_checked(drive, expected)


async def flash_board(board: FlashTarget, job: FlashJob) -> None:
    """Flash ``job`` onto ``board`` with retries; raise BoardError after the last failed attempt."""
    async with board.manager.updating():
        await _flash_with_retries(board, job)


async def _flash_with_retries(board: FlashTarget, job: FlashJob) -> None:
    attempts = 1 + board.manager.config.update_retries
    for attempt in range(1, attempts + 1):
        try:
            await _flash_once(board, job)
            return
        except BoardError as error:
            if attempt == attempts:
                raise BoardError(f"flash failed after {attempts} attempt(s): {error}") from None
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            log.warning(
                "%s: flash attempt %d of %d failed (%s); retrying in %g s",
                board.label,
                attempt,
                attempts,
                error,
                delay,
            )
            await board.update(StatusReason=f"attempt {attempt} failed: {error}")
            await asyncio.sleep(delay)


async def _flash_once(board: FlashTarget, job: FlashJob) -> None:
    board_type = board.manager.board_types[str(board.record["BoardType"])]
    check_families(job.families, board_type)
    if not board.sightings and not await board.wait_for(lambda: bool(board.sightings), PRESENCE_TIMEOUT):
        raise BoardError(f"the board is not plugged in (waited {PRESENCE_TIMEOUT:g} s)")

    if BOOTLOADER not in board.sightings:
        app = board.sightings[APPLICATION]
        await board.update(Status=Status.INSTALLING.value)
        if board.port is None and not await board.open_and_identify(app):
            raise BoardError("cannot open its serial port to ask for the bootloader")
        await board.call("picofleet_enter_bootloader", board=board.ref(app), port=board.port)
        await board.close_port()
        if not await board.wait_for(lambda: BOOTLOADER in board.sightings, BOOTLOADER_TIMEOUT):
            raise BoardError(f"did not enter its UF2 bootloader within {BOOTLOADER_TIMEOUT:g} s")

    bootloader = board.sightings[BOOTLOADER]
    try:
        async with asyncio.timeout(INFO_TIMEOUT):  # a USB drive can stall
            await board.manager.run_blocking(check_bootloader_info, bootloader.devname, board_type)
    except TimeoutError:
        raise BoardError(
            f"reading INFO_UF2.TXT on {bootloader.devname} took longer than {INFO_TIMEOUT:g} s"
        ) from None
    await board.update(Status=Status.FLASHING.value)
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(board.set_progress, done, total)

    await board.call(
        "picofleet_write_uf2",
        board=board.ref(bootloader),
        drive=bootloader.devname,
        uf2=job.uf2,
        progress=progress,
    )
    await board.update(Status=Status.STARTING.value)
    back = await board.wait_for(
        lambda: APPLICATION in board.sightings and BOOTLOADER not in board.sightings, BOOT_TIMEOUT
    )
    if not back:
        raise BoardError(f"did not come back with its new firmware within {BOOT_TIMEOUT:g} s")
    if not await _open_when_back(board):
        raise BoardError("came back with its new firmware but its serial port cannot be opened")
    running = board.record.get("FirmwareVersion") or "unknown firmware"
    if job.version is not None and not running.endswith(f" {job.version}"):
        raise BoardError(f"came back running {running}, expected version {job.version}")
    commit = job.commit if job.commit is not None else board.record.get("Commit")
    await board.update(Status=Status.IDLE.value, Commit=commit)


async def _open_when_back(board: FlashTarget) -> bool:
    """Open the port of the board back from its bootloader, retrying a passing failure (a
    ModemManager probing the new port, udev still applying permissions) until BOOT_TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
    while True:
        app = board.sightings.get(APPLICATION)
        if app is not None and await board.open_and_identify(app):
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.5)
