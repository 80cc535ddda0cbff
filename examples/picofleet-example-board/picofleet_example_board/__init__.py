"""An example third-party board plugin: the "ACME relay board", an RP2040 board whose firmware
enumerates with the pid.codes test id 1209:0001 and speaks a line protocol of its own.

It shows the three things most plugins do: declare a board type (data), identify the
firmware (ask it), and override one built-in behaviour (how to blink). Everything else
(opening the port, entering the bootloader with the 1200-baud touch, writing the UF2) is the
gateway's built-in default.
"""

from __future__ import annotations

import serial

from picofleet.firmware.formats import uf2
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardIdentity, BoardRef, BoardType, UsbRule

__version__ = "1.0.0"

BOARD_TYPE = BoardType(
    name="acme-relay",
    chip="RP2040",
    description="ACME relay board (RP2040)",
    usb_rules=(
        UsbRule("1209", "0001", APPLICATION, "acme-relay", priority=10),
        UsbRule("2e8a", "0003", BOOTLOADER, "bootrom", subsystem="block", priority=1, unique_serial=False),
    ),
    uf2_families=(uf2.RP2040,),
    bootloader_board_id="RPI-RP2",
)


def _ask(port: serial.Serial, command: bytes) -> bytes:
    """Send one command line and return the answer line (the ACME firmware's protocol)."""
    port.reset_input_buffer()
    port.write(command + b"\n")
    port.timeout = 1.0
    return port.readline().strip()


@hookimpl
def picofleet_board_types() -> list[BoardType]:
    """The ``acme-relay`` board type."""
    return [BOARD_TYPE]


@hookimpl
def picofleet_identify(board: BoardRef, port: serial.Serial) -> BoardIdentity | None:
    """Ask ACME firmware for ``VERSION``; answers look like ``acme-relay 2.1.0``."""
    if board.board_type != BOARD_TYPE.name:
        return None
    answer = _ask(port, b"VERSION").decode(errors="replace").split()
    if len(answer) != 2:
        return None
    return BoardIdentity(
        board_type=BOARD_TYPE.name, serial=board.serial, firmware=answer[0], version=answer[1]
    )


@hookimpl
def picofleet_blink(board: BoardRef, port: serial.Serial, seconds: float) -> bool | None:
    """ACME boards have no LED: click the relay instead."""
    if board.board_type != BOARD_TYPE.name:
        return None
    return _ask(port, b"CLICK %d" % round(seconds)) == b"OK"
