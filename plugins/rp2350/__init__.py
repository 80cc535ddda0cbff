"""Board plugin for the Raspberry Pi Pico 2 (RP2350).

Declares the ``rp2350`` board type: the USB identities of pico-sdk and MicroPython firmware and
of the RP2350 ROM bootloader. A board seen only in the RP2350 bootloader, with no record that
says otherwise, is an ``rp2350``.
"""

from __future__ import annotations

from picofleet.firmware.formats import uf2
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardType, UsbRule

RASPBERRY_PI = "2e8a"

RP2350_FAMILIES = (uf2.RP2_ABSOLUTE, uf2.RP2_DATA, uf2.RP2350_ARM_S, uf2.RP2350_RISCV)
"""What the RP2350 bootrom accepts (ARM non-secure images are not bootable from the ROM)."""

BOARD_TYPE = BoardType(
    name="rp2350",
    chip="RP2350",
    description="Raspberry Pi Pico 2 (RP2350)",
    usb_rules=(
        UsbRule(RASPBERRY_PI, "0009", APPLICATION, "pico-sdk", interface="00", priority=10),
        UsbRule(RASPBERRY_PI, "0005", APPLICATION, "micropython", interface="00"),
        UsbRule(RASPBERRY_PI, "000f", BOOTLOADER, "bootrom", subsystem="block", priority=10),
    ),
    uf2_families=RP2350_FAMILIES,
    bootloader_board_id="RP2350",
)


@hookimpl
def picofleet_board_types() -> list[BoardType]:
    """The ``rp2350`` board type."""
    return [BOARD_TYPE]
