"""What a virtual board looks like on USB: the udev-style properties of its tty and block nodes.

The values are those of the real boards (``/work/shared/reference/hardware.md``): a gateway
classifies a virtual board exactly as it would classify the hardware, from VID:PID and the
product string; ``PICOFLEET_VIRTUAL*`` properties are informational only.
"""

from __future__ import annotations

from dataclasses import dataclass

from picofleet.firmware.formats import uf2

BOARD_TYPES = ("rp2040", "rp2350", "pico2-ice")
"""The board types the rack can simulate."""

APP_FIRMWARE = "picofleet-app"
"""The reference firmware's name (image descriptor and ``identify``)."""


@dataclass(frozen=True)
class UsbIdentity:
    """The USB descriptor strings and ids of one device node."""

    vendor_id: str
    model_id: str
    vendor: str
    model: str


def chip_of(board_type: str) -> str:
    """The chip a board type carries: ``rp2040`` or ``rp2350``."""
    return "rp2040" if board_type == "rp2040" else "rp2350"


def accepted_families(board_type: str) -> frozenset[int]:
    """The UF2 family ids the board's ROM bootloader flashes."""
    if chip_of(board_type) == "rp2040":
        return frozenset({uf2.RP2040})
    return frozenset({uf2.RP2_ABSOLUTE, uf2.RP2_DATA, uf2.RP2350_ARM_S, uf2.RP2350_RISCV})


def factory_family(board_type: str) -> int:
    """The family id of the board's factory firmware (and of images built for it)."""
    return uf2.RP2040 if chip_of(board_type) == "rp2040" else uf2.RP2350_ARM_S


_PICO_ICE = UsbIdentity("1209", "b1c0", "tinyVision.ai", "pico-ice")
_MICROPYTHON = UsbIdentity("2e8a", "0005", "MicroPython", "Board in FS mode")


def tty_identity(board_type: str, firmware: str | None) -> UsbIdentity:
    """The identity of the serial port of ``firmware`` (``None``: unknown firmware) on ``board_type``.

    The reference firmware is a MicroPython program: MicroPython's 2e8a:0005 on Pico boards,
    tinyVision's pico-ice MicroPython (1209:b1c0) on pico2-ice. Unknown firmware enumerates like a
    pico-sdk build (or a pico-ice-sdk build on pico2-ice).
    """
    if board_type == "pico2-ice":
        return _PICO_ICE
    if firmware == APP_FIRMWARE:
        return _MICROPYTHON
    if board_type == "rp2040":
        return UsbIdentity("2e8a", "000a", "Raspberry Pi", "Pico")
    return UsbIdentity("2e8a", "0009", "Raspberry Pi", "Pico")


def bootloader_identity(board_type: str) -> tuple[UsbIdentity, str]:
    """The identity of the ROM bootloader's mass-storage device and its file-system label."""
    if chip_of(board_type) == "rp2040":
        return UsbIdentity("2e8a", "0003", "Raspberry Pi", "RP2 Boot"), "RPI-RP2"
    return UsbIdentity("2e8a", "000f", "Raspberry Pi", "RP2350 Boot"), "RP2350"


def info_uf2(board_type: str) -> str:
    """The INFO_UF2.TXT of the board's bootloader drive."""
    if chip_of(board_type) == "rp2040":
        return "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
    return "UF2 Bootloader v1.0\nModel: Raspberry Pi RP2350\nBoard-ID: RP2350\n"


def index_htm(board_type: str) -> str:
    """The INDEX.HTM of the board's bootloader drive (a redirect to the chip's page)."""
    version = RP2040_BOOTROM_SERIAL if chip_of(board_type) == "rp2040" else "5A09D5312E22"
    url = f"https://raspberrypi.com/device/RP2?version={version}"
    return (
        f'<html><head><meta http-equiv="refresh" content="0;URL=\'{url}\'"/></head>'
        f"<body>Redirecting to <a href='{url}'>raspberrypi.com</a></body></html>"
    )


def usb_path(slot: int) -> str:
    """The stable ``ID_PATH`` of the rack slot (one USB hub port per slot)."""
    return f"platform-picofleet-virtual-usb-0:1.{slot + 1}"


def _properties(identity: UsbIdentity, serial: str, slot: int, board_type: str) -> dict[str, str]:
    def udev_text(text: str) -> str:
        return text.replace(" ", "_")

    return {
        "ID_BUS": "usb",
        "ID_VENDOR": udev_text(identity.vendor),
        "ID_VENDOR_ID": identity.vendor_id,
        "ID_MODEL": identity.model,
        "ID_MODEL_ID": identity.model_id,
        "ID_SERIAL": f"{udev_text(identity.vendor)}_{udev_text(identity.model)}_{serial}",
        "ID_SERIAL_SHORT": serial,
        "ID_PATH": usb_path(slot),
        "ID_USB_INTERFACE_NUM": "00",
        "PICOFLEET_VIRTUAL": "1",
        "PICOFLEET_VIRTUAL_BOARD": board_type,
    }


def tty_properties(board_type: str, firmware: str | None, serial: str, slot: int) -> dict[str, str]:
    """udev-style properties of the board's serial port."""
    properties = _properties(tty_identity(board_type, firmware), serial, slot, board_type)
    properties["ID_USB_DRIVER"] = "cdc_acm"
    return properties


RP2040_BOOTROM_SERIAL = "E0C9125B0D9B"
"""The RP2040 bootrom's USB serial: the same on every B2 chip (its bootrom version), not the chip id."""


def block_properties(board_type: str, serial: str, slot: int) -> dict[str, str]:
    """udev-style properties of the board's bootloader drive.

    Like the real chips: the RP2350 bootrom reports the chip's unique id as its serial, the RP2040
    bootrom a fixed string, so an RP2040 in its bootloader is told apart only by its USB port.
    """
    identity, label = bootloader_identity(board_type)
    if chip_of(board_type) == "rp2040":
        serial = RP2040_BOOTROM_SERIAL
    properties = _properties(identity, serial, slot, board_type)
    properties.update(
        {"ID_USB_DRIVER": "usb-storage", "DEVTYPE": "disk", "ID_FS_TYPE": "vfat", "ID_FS_LABEL": label}
    )
    return properties
