"""Board plugin for the Raspberry Pi Pico (RP2040).

Declares the ``rp2040`` board type: the USB identities of pico-sdk and MicroPython firmware and
of the RP2040 ROM bootloader (../shared/reference/hardware.md). Talking to picofleet firmware
is done by the gateway's built-in hooks; this plugin adds the data that makes a device an RP2040.
"""

from __future__ import annotations

from picofleet.firmware.formats import uf2
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardType, UsbRule

RASPBERRY_PI = "2e8a"

BOARD_TYPE = BoardType(
    name="rp2040",
    chip="RP2040",
    description="Raspberry Pi Pico (RP2040)",
    usb_rules=(
        UsbRule(RASPBERRY_PI, "000a", APPLICATION, "pico-sdk", interface="00", priority=10),
        # MicroPython uses one id for RP2040 and RP2350: the firmware tells them apart (identify).
        UsbRule(RASPBERRY_PI, "0005", APPLICATION, "micropython", interface="00"),
        # the RP2040 bootrom's serial is the same on every chip: its drive is matched by USB port
        UsbRule(
            RASPBERRY_PI, "0003", BOOTLOADER, "bootrom", subsystem="block", priority=10, unique_serial=False
        ),
    ),
    uf2_families=(uf2.RP2040,),
    bootloader_board_id="RPI-RP2",
)


@hookimpl
def picofleet_board_types() -> list[BoardType]:
    """The ``rp2040`` board type."""
    return [BOARD_TYPE]
