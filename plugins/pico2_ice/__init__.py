"""Board plugin for the tinyVision pico2-ice (RP2350B + iCE40UP5K FPGA).

Declares the ``pico2-ice`` board type. Its application firmware (pico-ice-sdk, tinyVision's
MicroPython, picofleet's own) enumerates as 1209:b1c0 "pico-ice"; its bootloader is the RP2350
ROM's, which it shares with every Pico 2 — a known serial keeps its pico2-ice record there.

For evaluations (``pulsecount``) a real board gets MicroPython (the UF2 of the ``micropython_uf2``
setting) and then the pulse-count firmware's files (``firmware/pico2_ice/``) as ``main.py`` and its
modules.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from picofleet.firmware.pico2_ice import pulsecount
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import (
    APPLICATION,
    BOOTLOADER,
    BoardError,
    BoardType,
    EvaluationFirmware,
    UsbRule,
)
from picofleet.plugins.rp2350 import RP2350_FAMILIES

if TYPE_CHECKING:
    from picofleet.gateway.config import GatewayConfig
    from picofleet.gateway.models import BoardRef

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
    fpga="iCE40UP5K",
)


@hookimpl
def picofleet_board_types() -> list[BoardType]:
    """The ``pico2-ice`` board type."""
    return [BOARD_TYPE]


PULSECOUNT_PACKAGE = "picofleet.firmware.pico2_ice"
PULSECOUNT_FILES = ("main.py", "pulsecount.py", "frames.py", "hw_pico2_ice.py")
"""The files copied onto the board's MicroPython file system, under the same names."""


def pulsecount_files() -> dict[str, bytes]:
    """The pulse-count firmware's files (``firmware/pico2_ice/``), by their path on the board."""
    package = resources.files(PULSECOUNT_PACKAGE)
    try:
        return {name: package.joinpath(name).read_bytes() for name in PULSECOUNT_FILES}
    except OSError as error:
        raise BoardError(f"the pulse-count firmware's files cannot be read: {error}") from None


@hookimpl
def picofleet_evaluation_firmware(
    board: BoardRef, kind: str, config: GatewayConfig
) -> EvaluationFirmware | None:
    """A real pico2-ice evaluates ``pulsecount``: MicroPython (``micropython_uf2``) plus the firmware's files.

    Without ``micropython_uf2`` nothing is flashed: the files are copied onto the MicroPython the
    board runs (if it runs none, its preparation fails saying so).
    """
    if board.virtual or board.board_type != BOARD_TYPE.name or kind != "pulsecount":
        return None
    micropython = None
    if config.micropython_uf2 is not None:
        try:
            micropython = config.micropython_uf2.read_bytes()
        except OSError as error:
            raise BoardError(
                f"cannot read micropython_uf2 {config.micropython_uf2}: {error.strerror}"
            ) from None
    return EvaluationFirmware(
        name=pulsecount.FIRMWARE, version=pulsecount.VERSION, uf2=micropython, files=pulsecount_files()
    )
