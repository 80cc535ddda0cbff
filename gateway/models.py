"""Data types shared by the gateway core and board plugins (the nouns of the plugin contract).

A *discovery source* reports :class:`UsbDevice` records (what udev, sysfs or the virtual USB bus
says about one tty or block device) as :class:`DeviceEvent`s. The core matches them against the
:class:`UsbRule`s of every registered :class:`BoardType` and turns a match into a
:class:`Sighting`: this board (serial), in this mode (application firmware or UF2 bootloader),
reachable at this path. The device manager keeps one board per serial number and hands plugins
a :class:`BoardRef` when it calls a hook about a board.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

HEX = re.compile(r"[0-9a-fA-F]+")
APPLICATION: Literal["application"] = "application"
BOOTLOADER: Literal["bootloader"] = "bootloader"
Mode = Literal["application", "bootloader"]


@dataclass(frozen=True)
class UsbDevice:
    """One tty or block device as a discovery source reports it.

    ``key`` identifies the device node for its lifetime (a sysfs path, or ``virtual/...``);
    a later ``remove`` event carries the same key. ``properties`` holds udev-style properties
    (``ID_VENDOR_ID``, ``ID_MODEL_ID``, ``ID_SERIAL_SHORT``, ``ID_USB_INTERFACE_NUM``,
    ``ID_PATH``, ``ID_MODEL``...), lower-case hex for ids.
    """

    key: str
    subsystem: Literal["tty", "block"]
    devname: str
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def vendor_id(self) -> str:
        return self.properties.get("ID_VENDOR_ID", "").lower()

    @property
    def model_id(self) -> str:
        return self.properties.get("ID_MODEL_ID", "").lower()

    @property
    def serial(self) -> str:
        return self.properties.get("ID_SERIAL_SHORT", "")

    @property
    def usb_path(self) -> str:
        return self.properties.get("ID_PATH", "")

    @property
    def usb_port(self) -> str:
        """The physical USB port, the same for a board's serial port and its bootloader drive.

        ``PICOFLEET_USB_PORT`` (the USB device's sysfs name, e.g. ``1-1.2``) when the discovery
        source sets it, else ``ID_PATH`` cut after its ``usb-`` port part (``...-usb-0:1.2``).
        """
        port = self.properties.get("PICOFLEET_USB_PORT")
        if port:
            return port
        match = re.match(r"(.*?usb-\d+:[\d.]+)", self.usb_path)
        return match.group(1) if match else self.usb_path

    @property
    def board_serial(self) -> str:
        """The USB serial as a board identity: hex ids upper-case (MicroPython writes the chip id
        in lower case, the bootroms in upper case), else as reported, else the port."""
        serial = self.serial
        if serial and HEX.fullmatch(serial):
            return serial.upper()
        return serial or self.usb_port or self.key


@dataclass(frozen=True)
class DeviceEvent:
    """``add`` (device appeared or was enumerated at start) or ``remove`` (device node went away)."""

    action: Literal["add", "remove"]
    device: UsbDevice


Emit = Callable[[DeviceEvent], None]


class DiscoverySource(Protocol):
    """A long-running producer of :class:`DeviceEvent`s (udev monitor, sysfs poller, virtual USB bus).

    ``run`` first reports every device already present as ``add``, then reports changes until it
    is cancelled. It must not block the event loop: blocking libraries run in a thread and
    hand events back with ``loop.call_soon_threadsafe``. If ``run`` returns or raises, the core
    logs it, drops the source's devices and restarts it after a back-off.
    """

    name: str

    def run(self, emit: Emit) -> Awaitable[None]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class UsbRule:
    """A USB identity that belongs to a board type (data, not code).

    ``mode`` says whether the identity is the board's application firmware or its ROM UF2
    bootloader. ``firmware`` names what runs there (``pico-sdk``, ``micropython``, ``pico-ice``,
    ``bootrom``) for logs and for choosing how to talk to it. ``subsystem`` restricts the rule
    to tty (serial) or block (bootloader drive) nodes; ``interface`` to one USB interface number.
    When several board types match the same device, the one with the highest ``priority``
    wins; a tie is resolved by asking the firmware (``picofleet_identify``). ``unique_serial``
    is False for identities whose USB serial is the same on every board (the RP2040 bootrom's):
    such a device is matched to a board by its USB port instead.
    """

    vendor_id: str
    model_id: str
    mode: Mode
    firmware: str
    subsystem: Literal["tty", "block"] = "tty"
    interface: str | None = None
    priority: int = 0
    unique_serial: bool = True

    def matches(self, device: UsbDevice) -> bool:
        if device.subsystem != self.subsystem:
            return False
        if (device.vendor_id, device.model_id) != (self.vendor_id.lower(), self.model_id.lower()):
            return False
        if self.interface is None:
            return True
        return device.properties.get("ID_USB_INTERFACE_NUM", "") == self.interface


@dataclass(frozen=True)
class BoardType:
    """A kind of board a plugin supports.

    ``uf2_families`` are the UF2 family ids its bootloader accepts (a flash of any other family
    is refused before anything is written). ``bootloader_board_id`` is the ``Board-ID:`` line of
    its bootloader drive's INFO_UF2.TXT, checked before writing. ``fpga`` names the FPGA on the
    board (``"iCE40UP5K"``), or is ``None``: only a board with an iCE40 takes bitstreams in a release.
    """

    name: str
    chip: str
    description: str
    usb_rules: tuple[UsbRule, ...]
    uf2_families: tuple[int, ...]
    bootloader_board_id: str
    fpga: str | None = None


@dataclass(frozen=True)
class Sighting:
    """A classified device: which board (serial), in which mode, reachable where.

    ``serial`` is empty when the device's USB serial does not identify the board (see
    ``UsbRule.unique_serial``); ``usb_port`` then does.
    """

    key: str
    serial: str
    mode: Mode
    board_types: tuple[str, ...]
    firmware: str
    devname: str
    usb_path: str
    virtual: bool = False
    usb_port: str = ""
    matching_types: tuple[str, ...] = ()  # every board type with a rule for it, whatever its priority

    @property
    def ambiguous(self) -> bool:
        return len(self.board_types) > 1


@dataclass(frozen=True)
class BoardRef:
    """What a hook is told about the board it acts on.

    ``port`` is the serial device path while the board runs application firmware, ``drive`` the
    bootloader drive (a block device, or a directory for a mounted or virtual drive) while it
    sits in its UF2 bootloader; at most one of them is set.
    """

    serial: str
    board_type: str
    mode: Mode
    firmware: str
    port: str | None
    drive: str | None
    usb_path: str
    virtual: bool = False


@dataclass(frozen=True)
class FpgaState:
    """The iCE40 image a board holds (``picofleet_identify``, ``picofleet_write_fpga_image``).

    ``sha256`` of the image stored on the board (``None``: it holds none), whether the FPGA
    ``configured`` from it (CDONE went high), and if not the board's reason (``error``).
    """

    sha256: str | None
    configured: bool
    error: str | None = None


@dataclass(frozen=True)
class BoardIdentity:
    """What a board's firmware says about itself (``picofleet_identify``).

    The last three are optional, for firmware that stores them (picofleet-app): ``environment`` and
    ``config`` the settings the board holds (``None``: the firmware does not say, it may not take
    settings), ``fpga_image`` the iCE40 image it holds (``None``: no FPGA, or the firmware does not
    say; a board with an FPGA and no image: ``FpgaState(None, False)``).
    """

    board_type: str
    serial: str
    firmware: str
    version: str
    environment: dict[str, str] | None = None
    config: dict[str, str] | None = None
    fpga_image: FpgaState | None = None


ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``; may be called from a worker thread."""


class BoardError(Exception):
    """A board operation failed; the message says why in words an operator understands."""


@dataclass(frozen=True)
class EvaluationFirmware:
    """The firmware a board needs to evaluate FPGA designs (``picofleet_evaluation_firmware``).

    ``name`` and ``version`` are what the firmware reports in ``identify`` once it runs
    (``picofleet-pulsecount``); ``uf2`` is the image to flash first, or ``None`` when nothing is
    flashed; ``files`` (path on the board → content) are copied over MicroPython's raw REPL after
    the image (``picofleet_install_files``), possibly none.
    """

    name: str
    version: str
    uf2: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)
