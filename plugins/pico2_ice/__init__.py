"""Board plugin for the tinyVision pico2-ice (RP2350B + iCE40UP5K FPGA).

Declares the ``pico2-ice`` board type. Its application firmware (pico-ice-sdk, tinyVision's
MicroPython, picofleet's own) enumerates as 1209:b1c0 "pico-ice"; its bootloader is the RP2350
ROM's, which it shares with every Pico 2 — a known serial keeps its pico2-ice record there.
"""

from __future__ import annotations

from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardType, UsbRule
from picofleet.plugins.rp2350 import RP2350_FAMILIES

PID_CODES = "1209"

BOARD_TYPE = BoardType(
    name="pico2-ice",
    chip="RP2350",
    description="tinyVision pico2-ice (RP2350B + iCE40UP5K)",
    usb_rules=(
        # interface 00 is the firmware's console; pico-ice-sdk apps may add a UART bridge, MSC, DFU
        UsbRule(PID_CODES, "b1c0", APPLICATION, "pico-ice", interface="00", priority=10),
        UsbRule("2e8a", "000f", BOOTLOADER, "bootrom", subsystem="block", priority=5),
    ),
    uf2_families=RP2350_FAMILIES,
    bootloader_board_id="RP2350",
)


@hookimpl
def picofleet_board_types() -> list[BoardType]:
    """The ``pico2-ice`` board type."""
    return [BOARD_TYPE]
