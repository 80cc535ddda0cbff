"""The gateway's built-in hook implementations, asked last (``trylast``).

They cover what is the same for every board: pyserial ports, picofleet's own firmware
protocol (firmware/PROTOCOL.md), the 1200-baud touch, and writing a UF2 to a bootloader drive
that is a directory (a mounted or virtual drive) or a raw block device. Board plugins override
any of them by answering first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time

import serial

from ..firmware.client import FirmwareClient, FirmwareError, NoAnswer, PortLost
from .hookspecs import hookimpl
from .models import BoardError, BoardIdentity, BoardRef, ProgressCallback

log = logging.getLogger("picofleet.board")

IDENTIFY_TIMEOUT = 1.0
TOUCH_HOLD = 0.15
WRITE_CHUNK = 64 * 512
UF2_FILE_NAME = "PICOFLEET.UF2"


board_output = logging.getLogger("picofleet.board.output")
"""What the boards' firmware logs; its level is DEPENDENT_LOG_LEVEL."""

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _client(board: BoardRef, port: serial.Serial) -> FirmwareClient:
    def forward(level: str, text: str) -> None:
        board_output.log(_LEVELS.get(level, logging.INFO), "[%s] %s", board.serial, text)

    return FirmwareClient(port, on_log=forward)


@hookimpl(trylast=True)
def picofleet_open_port(board: BoardRef) -> serial.Serial | None:
    """Open ``board.port`` with pyserial: 115200 8N1, exclusive, short read timeout."""
    if board.port is None:
        return None
    try:
        return serial.Serial(board.port, 115200, timeout=0.1, write_timeout=2, exclusive=True)
    except (serial.SerialException, OSError) as error:
        raise BoardError(f"cannot open {board.port}: {error}") from None


@hookimpl(trylast=True)
def picofleet_close_port(board: BoardRef, port: serial.Serial) -> bool | None:
    """Close the port, ignoring errors of a device that is already gone."""
    with contextlib.suppress(serial.SerialException, OSError):
        port.close()
    return True


@hookimpl(trylast=True)
def picofleet_identify(board: BoardRef, port: serial.Serial) -> BoardIdentity | None:
    """Ask picofleet firmware (``identify``); ``None`` when the firmware does not speak it."""
    try:
        answer = _client(board, port).identify(timeout=IDENTIFY_TIMEOUT)
    except PortLost:
        raise
    except FirmwareError as error:
        log.debug("%s: no picofleet firmware answered identify: %s", board.serial, error)
        return None
    return BoardIdentity(
        board_type=str(answer["board"]),
        serial=str(answer["serial"]),
        firmware=str(answer["firmware"]),
        version=str(answer["version"]),
    )


def touch_1200(port: serial.Serial) -> None:
    """The 1200-baud touch: set the line coding to 1200 baud and drop DTR, as arduino-cli does."""
    try:
        port.baudrate = 1200
        port.dtr = False
        time.sleep(TOUCH_HOLD)  # the firmware reacts to the line coding; give it a moment before close
    except (serial.SerialException, OSError) as error:
        raise BoardError(f"1200-baud touch failed: {error}") from None


@hookimpl(trylast=True)
def picofleet_enter_bootloader(board: BoardRef, port: serial.Serial) -> bool | None:
    """Send picofleet's ``bootloader`` command; when no picofleet firmware answers, do the 1200-baud touch."""
    try:
        _client(board, port).request("bootloader", timeout=IDENTIFY_TIMEOUT)
        return True
    except NoAnswer:
        pass  # another firmware: pico-sdk and pico-ice-sdk stdio reboot to BOOTSEL on the touch
    touch_1200(port)
    return True


@hookimpl(trylast=True)
def picofleet_restart(board: BoardRef, port: serial.Serial) -> bool | None:
    """Send picofleet's ``reboot`` command; ``None`` if no picofleet firmware answers."""
    try:
        _client(board, port).request("reboot", timeout=IDENTIFY_TIMEOUT)
    except NoAnswer:
        return None
    return True


@hookimpl(trylast=True)
def picofleet_blink(board: BoardRef, port: serial.Serial, seconds: float) -> bool | None:
    """Send picofleet's ``blink`` command; ``None`` if no picofleet firmware answers."""
    try:
        _client(board, port).request("blink", timeout=IDENTIFY_TIMEOUT, seconds=seconds)
    except NoAnswer:
        return None
    return True


def _write_chunks(fd: int, uf2: bytes, progress: ProgressCallback, *, positional: bool) -> None:
    total = len(uf2)
    view = memoryview(uf2)
    for offset in range(0, total, WRITE_CHUNK):
        chunk = view[offset : offset + WRITE_CHUNK]
        written = os.pwrite(fd, chunk, offset) if positional else os.write(fd, chunk)
        if written != len(chunk):
            raise BoardError(f"short write to the bootloader drive at byte {offset}")
        progress(offset + len(chunk), total)
    os.fsync(fd)


@hookimpl(trylast=True)
def picofleet_write_uf2(board: BoardRef, drive: str, uf2: bytes, progress: ProgressCallback) -> bool | None:
    """Write the UF2 into a drive directory as one file, or raw and 512-aligned to a block device.

    The RP2 bootroms check every written 512-byte sector for UF2 magics and ignore the FAT, so a
    raw write needs neither a mount nor extra tools.
    """
    try:
        mode = os.stat(drive).st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(os.path.join(drive, UF2_FILE_NAME), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            positional = False
        elif stat.S_ISBLK(mode) or stat.S_ISREG(mode):
            fd = os.open(drive, os.O_WRONLY)
            positional = True
        else:
            raise BoardError(f"{drive} is neither a directory nor a block device")
        try:
            _write_chunks(fd, uf2, progress, positional=positional)
        finally:
            os.close(fd)
    except OSError as error:
        raise BoardError(f"the bootloader drive {drive} went away while writing: {error.strerror}") from None
    return True
