"""USB tty and block devices read from sysfs, and the sysfs poller (discovery without udev).

Both USB discovery sources (:class:`~picofleet.gateway.discovery.udev.UdevSource` and :class:`SysfsPoller`)
turn a sysfs device into a :class:`UsbDevice` with :func:`describe`, so they report the same
devices with the same properties.

Which devices are reported
    Only tty and block devices with a USB parent (a ``usb_device`` above them in sysfs); the
    cheap test comes first: the sysfs path must run through a USB root hub (``/usbN/``), so the
    dozens of virtual ttys and the host's disks are skipped without reading a file.

    Block devices: the RP2 bootroms present a disk with an MBR and one FAT partition (label
    RPI-RP2 or RP2350). A *partition* (``DEVTYPE=partition`` or a sysfs ``partition``
    attribute) is reported; a *whole disk* only when it carries a filesystem directly (udev's
    ``ID_FS_TYPE`` on the disk and no ``ID_PART_TABLE_TYPE``). So one board in its bootloader
    yields exactly one block sighting, ``/dev/sdX1``. Without udev properties a disk's content
    cannot be known without reading the medium, so there only partitions are reported (which
    covers the RP2 bootroms).

Properties
    udev's properties when present (``ID_VENDOR_ID``, ``ID_MODEL_ID``, ``ID_SERIAL_SHORT``,
    ``ID_USB_INTERFACE_NUM``, ``ID_PATH``, ``ID_MODEL``, ``ID_FS_LABEL``...), over the kernel's
    ``uevent`` keys (``DEVNAME``, ``DEVTYPE``, ``MAJOR``...). Each ``ID_*`` property udev did not
    provide (a container without /run/udev has only the kernel's keys) is filled from the sysfs
    attributes of the USB parents: ``idVendor``/``idProduct`` (lower-case hex), ``serial``,
    ``manufacturer``/``product`` (for a disk: the SCSI ``vendor``/``model``, as udev does),
    ``bcdDevice`` and the interface's ``bInterfaceNumber``.

    ``ID_PATH`` is derived the way udev's ``path_id`` builtin derives it, for the parents a USB
    board sits under (platform, pci, usb, scsi): ``platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.2:1.0``
    for a tty on a Raspberry Pi 4, ``...-usb-0:1.2:1.0-scsi-0:0:0:0`` for a bootloader disk. A
    board thus keeps its ``usb_path`` whether udev runs or not. Because a tty's and a disk's
    ``ID_PATH`` differ even on one port, every device also gets ``PICOFLEET_USB_PORT``: the
    sysfs name of its USB device (``1-1.2``: bus 1, hub port 1, port 2), the same for a board's
    serial port and its bootloader drive while it stays in the same physical port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeGuard

from picofleet.gateway.models import DeviceEvent, Emit, UsbDevice

log = logging.getLogger("picofleet.discovery.usb")

SYSFS_ROOT = "/sys"
POLL_INTERVAL = 1.0
"""Seconds between two scans of sysfs by :class:`SysfsPoller`."""
Subsystem = Literal["tty", "block"]
SUBSYSTEMS: tuple[Subsystem, ...] = ("tty", "block")
USB_PORT = "PICOFLEET_USB_PORT"
"""The property naming a device's physical USB port (its usb_device's sysfs name, ``1-1.2``)."""

_THROUGH_USB = re.compile(r"/usb\d+/")
_UDEV_SAFE = re.compile(r"[^0-9A-Za-z#+\-.:=@_]")


def read_uevent(path: str) -> dict[str, str]:
    """The ``KEY=value`` lines of a sysfs device's ``uevent`` file (raises ``OSError`` if it is gone)."""
    with open(os.path.join(path, "uevent"), encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _attribute(path: str, name: str) -> str:
    try:
        with open(os.path.join(path, name), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def through_usb(sys_path: str) -> bool:
    """The cheap first test: does this sysfs path run through a USB root hub (``/usbN/``)?"""
    return _THROUGH_USB.search(sys_path) is not None


def _udev_safe(text: str) -> str:
    """A string as udev puts it into ``ID_VENDOR``/``ID_MODEL``: blanks and odd characters become ``_``."""
    return _UDEV_SAFE.sub("_", "_".join(text.split()))


@dataclass(frozen=True)
class _Node:
    """One sysfs device above the reported one."""

    path: str
    subsystem: str
    devtype: str

    @property
    def sysname(self) -> str:
        return os.path.basename(self.path)


def _parents(sys_path: str) -> Iterator[_Node]:
    """The devices above ``sys_path``, nearest first (directories with a ``uevent`` file)."""
    path = os.path.dirname(sys_path)
    while os.path.basename(path) not in ("devices", "") and path != os.path.dirname(path):
        try:
            uevent = read_uevent(path)
        except OSError:
            uevent = None
        if uevent is not None:
            try:
                subsystem = os.path.basename(os.readlink(os.path.join(path, "subsystem")))
            except OSError:
                subsystem = ""
            yield _Node(path, subsystem, uevent.get("DEVTYPE", ""))
        path = os.path.dirname(path)


def _scsi_path(node: _Node) -> str:
    """``scsi-H:C:T:L`` with the host numbered from the lowest host on its parent, as udev's path_id does."""
    try:
        host, channel, target, lun = (int(part) for part in node.sysname.split(":"))
    except ValueError:
        return ""
    host_dir = os.path.dirname(os.path.dirname(os.path.dirname(node.path)))  # .../hostN/targetH:C:T/H:C:T:L
    try:
        hosts = [int(name[4:]) for name in os.listdir(host_dir) if re.fullmatch(r"host\d+", name)]
    except OSError:
        hosts = []
    base = min(hosts, default=host)
    return f"scsi-{host - base}:{channel}:{target}:{lun}"


def path_id(parents: list[_Node]) -> str:
    """An ``ID_PATH`` from a device's parents (nearest first), following udev's path_id builtin."""
    parts: list[str] = []
    index = 0
    while index < len(parents):
        node = parents[index]
        index += 1
        if node.subsystem == "usb" and node.devtype in ("usb_interface", "usb_device"):
            port = node.sysname.partition("-")[2]
            if port:
                parts.append(f"usb-0:{port}")
            skip = "usb"
        elif node.subsystem in ("pci", "platform"):
            parts.append(f"{node.subsystem}-{node.sysname}")
            skip = node.subsystem
        else:
            if node.subsystem == "scsi" and node.devtype == "scsi_device" and (scsi := _scsi_path(node)):
                parts.append(scsi)
            continue
        while index < len(parents) and parents[index].subsystem == skip:
            index += 1
    return "-".join(reversed(parts))


def _block_reported(sys_path: str, properties: Mapping[str, str]) -> bool:
    """Partitions, and whole disks that carry a filesystem directly (see the module docstring)."""
    if properties.get("DEVTYPE") == "partition" or os.path.exists(os.path.join(sys_path, "partition")):
        return True
    return bool(properties.get("ID_FS_TYPE")) and not properties.get("ID_PART_TABLE_TYPE")


def _reported(subsystem: str) -> TypeGuard[Subsystem]:
    """Whether devices of ``subsystem`` are reported (tty and block)."""
    return subsystem in SUBSYSTEMS


def describe(
    sys_path: str, subsystem: str, udev_properties: Mapping[str, str] | None = None
) -> UsbDevice | None:
    """The :class:`UsbDevice` for a tty or block device with a USB parent; ``None`` for any other.

    ``udev_properties`` are udev's (from pyudev); what they lack is filled from sysfs. Returns
    ``None`` too when the device vanished while it was read.
    """
    if not _reported(subsystem) or not through_usb(sys_path):
        return None
    try:
        properties = read_uevent(sys_path)
    except OSError:
        properties = {}
    properties.update(udev_properties or {})
    if subsystem == "block" and not _block_reported(sys_path, properties):
        return None
    devname = properties.get("DEVNAME", "")
    if not devname:
        return None
    if not devname.startswith("/dev/"):
        devname = "/dev/" + devname

    parents: list[_Node] = []
    usb_device = interface = scsi_device = None
    for node in _parents(sys_path):
        parents.append(node)
        if node.subsystem == "usb" and node.devtype == "usb_interface" and interface is None:
            interface = node
        elif node.subsystem == "scsi" and node.devtype == "scsi_device" and scsi_device is None:
            scsi_device = node
        elif node.subsystem == "usb" and node.devtype == "usb_device" and usb_device is None:
            usb_device = node
            if properties.get("ID_PATH"):
                break  # the rest of the chain only matters for deriving ID_PATH
    if usb_device is None:
        return None

    vendor = _attribute(scsi_device.path, "vendor") if scsi_device else ""
    model = _attribute(scsi_device.path, "model") if scsi_device else ""
    derived = {
        "ID_BUS": "usb",
        "ID_VENDOR_ID": _attribute(usb_device.path, "idVendor"),
        "ID_MODEL_ID": _attribute(usb_device.path, "idProduct"),
        "ID_SERIAL_SHORT": _attribute(usb_device.path, "serial"),
        "ID_REVISION": _attribute(usb_device.path, "bcdDevice"),
        "ID_VENDOR": _udev_safe(vendor or _attribute(usb_device.path, "manufacturer")),
        "ID_MODEL": _udev_safe(model or _attribute(usb_device.path, "product")),
        "ID_USB_INTERFACE_NUM": _attribute(interface.path, "bInterfaceNumber") if interface else "",
    }
    for key, value in derived.items():
        if value and not properties.get(key):
            properties[key] = value
    if not properties.get("ID_PATH"):
        properties["ID_PATH"] = path_id(parents)
    for key in ("ID_VENDOR_ID", "ID_MODEL_ID"):
        properties[key] = properties.get(key, "").lower()
    properties[USB_PORT] = usb_device.sysname
    properties["SUBSYSTEM"] = subsystem
    return UsbDevice(key=sys_path, subsystem=subsystem, devname=devname, properties=properties)


def scan(sysfs_root: str = SYSFS_ROOT) -> dict[str, UsbDevice]:
    """Every reported tty and block device under ``sysfs_root`` (``/sys/class/{tty,block}``), by key.

    Blocking (file reads): run it in a thread.
    """
    found: dict[str, UsbDevice] = {}
    for subsystem in SUBSYSTEMS:
        class_dir = os.path.join(sysfs_root, "class", subsystem)
        try:
            names = os.listdir(class_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(os.path.join(class_dir, name))
            except OSError:
                continue
            if not through_usb(target):
                continue  # a virtual tty or a disk of the host: nothing more is read
            device = describe(os.path.normpath(os.path.join(class_dir, target)), subsystem)
            if device is not None:
                found[device.key] = device
    return found


def _identity(device: UsbDevice) -> tuple[str, ...]:
    properties = device.properties
    return (
        device.subsystem,
        device.devname,
        device.vendor_id,
        device.model_id,
        device.serial,
        properties.get("ID_USB_INTERFACE_NUM", ""),
        device.usb_path,
        properties.get(USB_PORT, ""),
    )


class DeviceSet:
    """The devices a source has reported; it emits only what changes.

    A device that comes again with the same key and the same identity (ids, serial, node, port)
    is not reported again (a udev ``change`` event must not make a board reopen its port); one
    whose identity changed under the same key is reported removed, then added.
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.devices: dict[str, UsbDevice] = {}

    def add(self, device: UsbDevice) -> bool:
        """Report ``device`` unless it is already reported as it is; ``True`` if anything was emitted."""
        old = self.devices.get(device.key)
        self.devices[device.key] = device
        if old is not None and _identity(old) == _identity(device):
            return False
        if old is not None:
            self.emit(DeviceEvent("remove", old))
        self.emit(DeviceEvent("add", device))
        return True

    def remove(self, key: str) -> bool:
        """Report the device with ``key`` gone, if it was reported."""
        device = self.devices.pop(key, None)
        if device is None:
            return False
        self.emit(DeviceEvent("remove", device))
        return True

    def update(self, current: Mapping[str, UsbDevice]) -> tuple[int, int]:
        """Make the reported set ``current``, emitting only the difference: ``(added, removed)``.

        New devices are reported before vanished ones, so a board that moved to another node
        while nobody watched goes from the old sighting to the new one without being Offline.
        """
        added = sum(self.add(device) for device in current.values())
        gone = [key for key in self.devices if key not in current]
        for key in gone:
            self.remove(key)
        return added, len(gone)

    def clear(self) -> None:
        """Forget everything without emitting (the core drops a failed source's devices itself)."""
        self.devices.clear()


class SysfsPoller:
    """A :class:`~picofleet.gateway.models.DiscoverySource` for hosts without udev.

    Lists ``/sys/class/tty`` and ``/sys/class/block`` every ``interval`` seconds (in a worker
    thread) and reports the difference to the previous scan. ``ready`` is set after the first
    scan was reported.
    """

    name = "usb"

    def __init__(self, sysfs_root: str = SYSFS_ROOT, interval: float = POLL_INTERVAL) -> None:
        self.sysfs_root = sysfs_root
        self.interval = interval
        self.ready = asyncio.Event()

    async def run(self, emit: Emit) -> None:
        """Scan, report the difference, sleep; until cancelled."""
        reported = DeviceSet(emit)
        while True:
            current = await asyncio.to_thread(scan, self.sysfs_root)
            reported.update(current)
            if not self.ready.is_set():
                log.info("usb: %d USB tty/block devices found in %s", len(current), self.sysfs_root)
                self.ready.set()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Nothing to release: the scans run in the default executor."""
