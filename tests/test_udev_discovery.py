"""Real USB discovery: umockdev boards classified with and without udev, hotplug, supervision, fallback.

The umockdev descriptions in tests/data/umockdev (README.md there) describe four boards on the
four USB ports of a Raspberry Pi 4, and two of them again in their ROM bootloader on the same
port, with the same serial. Tests that need umockdev skip without it; the hotplug test also
needs /usr/bin/python3 with PyGObject and UMockdev (python3-gi, gir1.2-umockdev-1.0).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from picofleet.gateway.discovery import udev
from picofleet.gateway.discovery.sysfs_poll import SysfsPoller, _Node, path_id
from picofleet.gateway.discovery.udev import UdevSource, usb_sources
from picofleet.gateway.models import DeviceEvent
from tests.helpers.gateway import GatewayProcess
from tests.helpers.wait import until

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "umockdev"
SYSTEM_PYTHON = "/usr/bin/python3"
PI4_USB = "platform-fd500000.pcie-pci-0000:01:00.0"

needs_umockdev = pytest.mark.skipif(
    shutil.which("umockdev-run") is None, reason="umockdev-run is not installed (apt install umockdev)"
)


@functools.cache
def _system_umockdev_gi() -> str | None:
    """Why the hotplug testbed cannot run, or ``None``."""
    if shutil.which("umockdev-run") is None:
        return "umockdev is not installed (apt install umockdev)"
    check = "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, timeout=30)
    except OSError as error:
        return f"{SYSTEM_PYTHON} cannot run: {error}"
    if result.returncode != 0:
        return f"{SYSTEM_PYTHON} lacks PyGObject/UMockdev (apt install python3-gi gir1.2-umockdev-1.0)"
    return None


@dataclass(frozen=True)
class Board:
    """What one umockdev description must classify to."""

    board_types: tuple[str, ...]
    mode: str
    serial: str
    devname: str
    firmware: str
    port: str  # PICOFLEET_USB_PORT: the usb_device's sysfs name

    @property
    def usb_path(self) -> str:
        suffix = "-scsi-0:0:0:0" if self.mode == "bootloader" else ""
        return f"usb-0:{self.port.partition('-')[2]}:1.0{suffix}"


PICO_SERIAL = "E6614C775B4F2A39"
PICO2_ICE_SERIAL = "9D2E41B7C05F8A63"
BOARDS = {
    "pico-rp2040-pico-sdk.umockdev": Board(
        ("rp2040",), "application", PICO_SERIAL, "/dev/ttyACM0", "pico-sdk", "1-1.1"
    ),
    "pico2-rp2350-pico-sdk.umockdev": Board(
        ("rp2350",), "application", "3A7F19C2E84D6B05", "/dev/ttyACM1", "pico-sdk", "1-1.2"
    ),
    "pico2-ice-pico-ice-sdk.umockdev": Board(
        ("pico2-ice",), "application", PICO2_ICE_SERIAL, "/dev/ttyACM2", "pico-ice", "1-1.3"
    ),
    # MicroPython has one USB id for RP2040 and RP2350, and writes its serial in lower case: the
    # gateway upper-cases hex serials, so the board's bootloader (upper case) is the same board
    "micropython-rp2350.umockdev": Board(
        ("rp2040", "rp2350"), "application", "5B8C0E2F7A4D9136", "/dev/ttyACM3", "micropython", "1-1.4"
    ),
    # the Pico of the first file, in its ROM bootloader on the same port
    # the RP2040 bootrom reports E0C9125B0D9B on every chip: a serial that identifies no board
    "rp2040-bootloader.umockdev": Board(("rp2040",), "bootloader", "", "/dev/sda1", "bootrom", "1-1.1"),
    # the pico2-ice in its ROM bootloader: by USB alone an rp2350 (its record keeps pico2-ice)
    "rp2350-bootloader.umockdev": Board(
        ("rp2350",), "bootloader", PICO2_ICE_SERIAL, "/dev/sdb1", "bootrom", "1-1.3"
    ),
}
APPLICATIONS = [
    "pico-rp2040-pico-sdk.umockdev",
    "pico2-rp2350-pico-sdk.umockdev",
    "pico2-ice-pico-ice-sdk.umockdev",
    "micropython-rp2350.umockdev",
]
WITH_BOOTLOADERS = [
    "rp2040-bootloader.umockdev",
    "pico2-rp2350-pico-sdk.umockdev",
    "rp2350-bootloader.umockdev",
    "micropython-rp2350.umockdev",
]
UDEV_ONLY = re.compile(r"^E: (ID_\w*|DEVLINKS|TAGS|CURRENT_TAGS|USEC_INITIALIZED)=.*\n", re.MULTILINE)


def without_udev_properties(text: str) -> str:
    """A description as a container without udev sees it: only the kernel's uevent keys."""
    return UDEV_ONLY.sub("", text)


def umockdev_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("-d", str(path))]


@functools.cache
def probe(name: str, variant: str, tmp: str) -> list[dict[str, Any]]:
    """Run tests/helpers/udev_probe.py under umockdev-run with one description.

    ``variant``: ``udev`` (the description as it is), ``stripped-udev`` (udev source, no udev
    properties: filled from sysfs), ``stripped-sysfs`` (the sysfs poller's scan, no udev properties).
    """
    path = DATA / name
    source = "udev"
    if variant.startswith("stripped"):
        path = Path(tmp) / f"stripped-{name}"
        path.write_text(without_udev_properties((DATA / name).read_text()))
        source = variant.removeprefix("stripped-")
    command = [
        "umockdev-run",
        *umockdev_args([path]),
        "--",
        sys.executable,
        "-m",
        "tests.helpers.udev_probe",
        "--source",
        source,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command} failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("umockdev-probe"))


# -- each description, with and without udev properties ------------------------------------------


@needs_umockdev
@pytest.mark.parametrize("variant", ["udev", "stripped-udev", "stripped-sysfs"])
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_description_classifies_to_its_board(name: str, variant: str, probe_dir: str) -> None:
    expected = BOARDS[name]
    results = probe(name, variant, probe_dir)
    # exactly one device per board: a bootloader's disk is left out, only its FAT partition counts
    assert len(results) == 1, [r["device"]["key"] for r in results]
    (result,) = results
    sighting, device = result["sighting"], result["device"]
    assert sighting is not None, f"{name}: no board type claims {device}"
    assert tuple(sighting["board_types"]) == expected.board_types
    assert (sighting["mode"], sighting["serial"], sighting["devname"], sighting["firmware"]) == (
        expected.mode,
        expected.serial,
        expected.devname,
        expected.firmware,
    )
    assert device["subsystem"] == ("block" if expected.mode == "bootloader" else "tty")
    assert device["properties"]["PICOFLEET_USB_PORT"] == expected.port
    if variant == "udev":
        assert sighting["usb_path"] == f"{PI4_USB}-{expected.usb_path}"  # udev's ID_PATH
    else:
        # derived like udev's path_id (the descriptions leave out the hubs and the PCIe controller)
        assert sighting["usb_path"] == expected.usb_path
        assert "ID_SERIAL" not in device["properties"]  # really without udev: nothing udev-only leaked in


@needs_umockdev
@pytest.mark.parametrize(
    ("application", "bootloader"),
    [
        ("pico-rp2040-pico-sdk.umockdev", "rp2040-bootloader.umockdev"),
        ("pico2-ice-pico-ice-sdk.umockdev", "rp2350-bootloader.umockdev"),
    ],
)
def test_bootloader_has_the_serial_and_port_of_its_application_firmware(
    application: str, bootloader: str, probe_dir: str
) -> None:
    for variant in ("udev", "stripped-sysfs"):
        (app,) = probe(application, variant, probe_dir)
        (boot,) = probe(bootloader, variant, probe_dir)
        # the RP2350 bootrom reports the chip's id; the RP2040's identifies no board (its port does)
        expected = "" if "rp2040" in bootloader else app["sighting"]["serial"]
        assert boot["sighting"]["serial"] == expected
        assert app["sighting"]["mode"] == "application" and boot["sighting"]["mode"] == "bootloader"
        app_port = app["device"]["properties"]["PICOFLEET_USB_PORT"]
        assert app_port == boot["device"]["properties"]["PICOFLEET_USB_PORT"]


def test_path_id_follows_udev_for_a_pi4_bootloader_disk() -> None:
    devices = "/sys/devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0"
    usb = f"{devices}/usb1/1-1/1-1.2/1-1.2:1.0"
    parents = [  # nearest first, as describe() collects them
        _Node(f"{usb}/host3/target3:0:0/3:0:0:0", "scsi", "scsi_device"),
        _Node(f"{usb}/host3/target3:0:0", "scsi", "scsi_target"),
        _Node(f"{usb}/host3", "scsi", "scsi_host"),
        _Node(usb, "usb", "usb_interface"),
        _Node(f"{devices}/usb1/1-1/1-1.2", "usb", "usb_device"),
        _Node(f"{devices}/usb1/1-1", "usb", "usb_device"),
        _Node(f"{devices}/usb1", "usb", "usb_device"),
        _Node(devices, "pci", ""),
        _Node(os.path.dirname(devices), "pci", ""),
        _Node("/sys/devices/platform/scb/fd500000.pcie/pci0000:00", "", ""),
        _Node("/sys/devices/platform/scb/fd500000.pcie", "platform", ""),
        _Node("/sys/devices/platform/scb", "platform", ""),
    ]
    assert path_id(parents) == f"{PI4_USB}-usb-0:1.2:1.0-scsi-0:0:0:0"
    assert path_id(parents[3:]) == f"{PI4_USB}-usb-0:1.2:1.0"  # the tty of the same port


# -- a fake sysfs, a fake pyudev -----------------------------------------------------------------


class FakeSysfs:
    """A sysfs tree in a temporary directory with USB boards plugged and unplugged."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.usb = root / "devices/pci0000:00/0000:00:14.0/usb1"
        for directory in ("class/tty", "class/block", "bus/usb", "bus/scsi"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        virtual = root / "devices/virtual/tty/tty0"  # a tty without a USB parent: never reported
        self._device(virtual, "tty", {"MAJOR": "4", "MINOR": "0", "DEVNAME": "tty0"})
        (root / "class/tty/tty0").symlink_to(os.path.relpath(virtual, root / "class/tty"))

    def _device(self, path: Path, subsystem: str, uevent: dict[str, str], **attributes: str) -> Path:
        path.mkdir(parents=True)
        (path / "uevent").write_text("".join(f"{key}={value}\n" for key, value in uevent.items()))
        target = self.root / ("bus" if subsystem in ("usb", "scsi") else "class") / subsystem
        (path / "subsystem").symlink_to(os.path.relpath(target, path))
        for name, value in attributes.items():
            (path / name).write_text(value + "\n")
        return path

    def _usb(self, port: str, serial: str, pid: str, interface_class: str) -> Path:
        device = self._device(
            self.usb / port,
            "usb",
            {"DEVTYPE": "usb_device", "PRODUCT": f"2e8a/{int(pid, 16):x}/100"},
            idVendor="2e8a",
            idProduct=pid,
            serial=serial,
            manufacturer="Raspberry Pi",
            product="Pico",
        )
        return self._device(
            device / f"{port}:1.0",
            "usb",
            {"DEVTYPE": "usb_interface"},
            bInterfaceNumber="00",
            bInterfaceClass=interface_class,
        )

    def plug_tty(self, port: str, serial: str, tty: str, pid: str = "000a") -> str:
        interface = self._usb(port, serial, pid, "02")
        node = self._device(interface / "tty" / tty, "tty", {"MAJOR": "166", "MINOR": "0", "DEVNAME": tty})
        (self.root / "class/tty" / tty).symlink_to(os.path.relpath(node, self.root / "class/tty"))
        return str(node)

    def plug_bootloader(self, port: str, serial: str, disk: str, pid: str = "0003") -> str:
        interface = self._usb(port, serial, pid, "08")
        host = self._device(interface / "host0", "scsi", {"DEVTYPE": "scsi_host"})
        target = self._device(host / "target0:0:0", "scsi", {"DEVTYPE": "scsi_target"})
        scsi = self._device(target / "0:0:0:0", "scsi", {"DEVTYPE": "scsi_device"}, vendor="RPI", model="RP2")
        whole = self._device(scsi / "block" / disk, "block", {"DEVTYPE": "disk", "DEVNAME": disk})
        part = self._device(
            whole / f"{disk}1", "block", {"DEVTYPE": "partition", "DEVNAME": f"{disk}1"}, partition="1"
        )
        for node in (whole, part):
            (self.root / "class/block" / node.name).symlink_to(
                os.path.relpath(node, self.root / "class/block")
            )
        return str(part)

    def unplug(self, port: str) -> None:
        device = self.usb / port
        for subsystem in ("tty", "block"):
            for link in (self.root / "class" / subsystem).iterdir():
                if str(device) in os.path.realpath(link):
                    link.unlink()
        shutil.rmtree(device)


class FakeDevice:
    """What the source reads of a pyudev.Device."""

    def __init__(self, sys_path: str, subsystem: str, action: str | None = None) -> None:
        self.sys_path = sys_path
        self.subsystem = subsystem
        self.action = action
        self.device_path = sys_path
        self.properties: dict[str, str] = {}


class FakeContext:
    """pyudev.Context.list_devices over a FakeSysfs; ``failures`` makes the next listings raise."""

    def __init__(self, sysfs: FakeSysfs) -> None:
        self.sysfs = sysfs
        self.failures = 0

    def list_devices(self, subsystem: str) -> Iterator[FakeDevice]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        class_dir = self.sysfs.root / "class" / subsystem
        for link in sorted(class_dir.iterdir()):
            yield FakeDevice(os.path.realpath(link), subsystem)


class FakeMonitor:
    """A pyudev.Monitor fed by the test; ``die`` makes its next receive raise."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.events: deque[FakeDevice] = deque()
        self.failure: Exception | None = None
        self.receive_buffer = 0
        self.started = False

    def filter_by(self, subsystem: str) -> None:
        assert subsystem in ("tty", "block")

    def set_receive_buffer_size(self, size: int) -> None:
        self.receive_buffer = size

    def start(self) -> None:
        self.started = True

    def fileno(self) -> int:
        return self.read_end

    def push(self, device: FakeDevice) -> None:
        self.events.append(device)
        os.write(self.write_end, b"e")

    def die(self, error: Exception) -> None:
        self.failure = error
        os.write(self.write_end, b"!")

    def hang_up(self) -> None:
        """The socket hangs up with nothing to read: poll() says POLLHUP, receiving gives None."""
        os.close(self.write_end)
        self.write_end = -1

    def poll(self, timeout: float | None = None) -> FakeDevice | None:
        assert timeout == 0, "the monitor thread must never block in poll()"
        if self.failure is not None:
            raise self.failure
        if not self.events:
            return None
        os.read(self.read_end, 1)
        return self.events.popleft()

    def close(self) -> None:
        os.close(self.read_end)
        if self.write_end >= 0:
            os.close(self.write_end)


def summary(events: list[DeviceEvent]) -> list[tuple[str, str, str]]:
    return [(event.action, event.device.serial, event.device.devname) for event in events]


async def stop(task: asyncio.Task[Any], source: UdevSource, monitors: list[FakeMonitor]) -> None:
    """End a scenario: cancel the source's run, close it and every monitor it opened."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await source.close()
    for monitor in monitors:
        monitor.close()


# -- supervision of the monitor thread ------------------------------------------------------------


def test_monitor_thread_death_restarts_it_and_reports_only_the_difference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.plug_tty("1-1.1", "AAAA000000000001", "ttyACM0")
    sysfs.plug_tty("1-1.2", "BBBB000000000002", "ttyACM1")
    monitors: list[FakeMonitor] = []

    def open_monitor(context: FakeContext) -> FakeMonitor:
        monitors.append(FakeMonitor())
        return monitors[-1]

    async def scenario() -> None:
        events: list[DeviceEvent] = []
        source = UdevSource(context_factory=lambda: FakeContext(sysfs), monitor_factory=open_monitor)
        task = asyncio.create_task(source.run(events.append))
        try:
            await asyncio.wait_for(source.ready.wait(), 5)
            assert sorted(summary(events)) == [
                ("add", "AAAA000000000001", "/dev/ttyACM0"),
                ("add", "BBBB000000000002", "/dev/ttyACM1"),
            ]
            assert monitors[0].started and monitors[0].receive_buffer == udev.RECEIVE_BUFFER

            events.clear()  # hotplug through the monitor
            monitors[0].push(FakeDevice(sysfs.plug_tty("1-1.3", "CCCC000000000003", "ttyACM2"), "tty", "add"))
            await until(lambda: len(events) == 1, 5, "the hotplugged board")
            assert summary(events) == [("add", "CCCC000000000003", "/dev/ttyACM2")]

            # while the monitor is dead, B is unplugged and D plugged in; A and C stay
            events.clear()
            sysfs.unplug("1-1.2")
            sysfs.plug_tty("1-1.4", "DDDD000000000004", "ttyACM3")
            monitors[0].die(OSError(errno.ENOBUFS, "No buffer space available"))
            await until(lambda: source.restarts == 1 and len(events) == 2, 5, "the monitor restarted")
            assert summary(events) == [
                ("add", "DDDD000000000004", "/dev/ttyACM3"),
                ("remove", "BBBB000000000002", "/dev/ttyACM1"),
            ]  # nothing about A and C: they must not flap Offline
            assert len(monitors) == 2 and monitors[1].started

            events.clear()  # the new monitor is followed
            monitors[1].push(FakeDevice(events_key(sysfs, "1-1.3", "ttyACM2"), "tty", "remove"))
            await until(lambda: len(events) == 1, 5, "the removal seen by the new monitor")
            assert summary(events) == [("remove", "CCCC000000000003", "/dev/ttyACM2")]
        finally:
            await stop(task, source, monitors)

    with caplog.at_level(logging.INFO, logger="picofleet.discovery.usb"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    died = [record for record in caplog.records if "udev monitor died" in record.getMessage()]
    assert len(died) == 1, [record.getMessage() for record in caplog.records]
    message = died[0].getMessage()
    assert died[0].levelno == logging.WARNING
    assert "No buffer space available" in message and "1 added, 1 removed, 2 unchanged" in message


@pytest.mark.parametrize("failing", ["monitor", "enumeration"])
def test_reopen_failing_once_reports_no_board_gone_and_recovers(
    failing: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reopening after a death fails once: retried after a back-off, nothing flaps Offline."""
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.plug_tty("1-1.1", "AAAA000000000001", "ttyACM0")
    sysfs.plug_tty("1-1.2", "BBBB000000000002", "ttyACM1")
    context = FakeContext(sysfs)
    monitors: list[FakeMonitor] = []
    opened = 0

    def open_monitor(context: FakeContext) -> FakeMonitor:
        nonlocal opened
        opened += 1
        if failing == "monitor" and opened == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        monitors.append(FakeMonitor())
        return monitors[-1]

    async def scenario() -> None:
        events: list[DeviceEvent] = []
        source = UdevSource(context_factory=lambda: context, monitor_factory=open_monitor)
        task = asyncio.create_task(source.run(events.append))
        try:
            await asyncio.wait_for(source.ready.wait(), 5)
            assert len(events) == 2
            events.clear()
            if failing == "enumeration":
                context.failures = 1
            monitors[0].die(OSError(errno.ENOBUFS, "No buffer space available"))
            await until(
                lambda: source.restarts == 1 and opened == 3, 5, "the monitor reopened after a failure"
            )
            await until(lambda: monitors[-1].started and not task.done(), 5, "the new monitor started")
            await asyncio.sleep(0.05)  # time for the reopened monitor's enumeration to be reported
            assert events == []  # A and B stayed: neither is reported gone, nor added again
            assert not task.done()  # the failure did not escape to the supervisor

            new = monitors[-1]  # the new monitor is followed
            new.push(FakeDevice(sysfs.plug_tty("1-1.3", "CCCC000000000003", "ttyACM2"), "tty", "add"))
            await until(lambda: len(events) == 1, 5, "the board seen by the new monitor")
            assert summary(events) == [("add", "CCCC000000000003", "/dev/ttyACM2")]
        finally:
            await stop(task, source, monitors)

    with caplog.at_level(logging.INFO, logger="picofleet.discovery.usb"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    error = "Too many open files" if failing == "monitor" else "Input/output error"
    assert len(messages) == 2, messages
    assert "cannot open the udev monitor or enumerate the devices" in messages[0] and error in messages[0]
    assert messages[0].endswith("retrying in 0.5 s, the 2 devices reported stay reported")
    assert messages[1].startswith("usb: the udev monitor died (OSError: [Errno 105] No buffer space")
    assert messages[1].endswith("0 added, 0 removed, 2 unchanged")


def test_pollhup_restarts_the_monitor_without_spinning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitor whose socket hangs up (POLLHUP, nothing to read) is replaced, not polled in a loop."""
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.plug_tty("1-1.1", "AAAA000000000001", "ttyACM0")
    monitors: list[FakeMonitor] = []
    polls = 0
    real_poll = udev.select.poll

    class CountingPoll:
        def __init__(self) -> None:
            self.poller = real_poll()

        def register(self, fd: int, mask: int) -> None:
            self.poller.register(fd, mask)

        def poll(self, *timeout: float) -> list[tuple[int, int]]:
            nonlocal polls
            polls += 1
            return self.poller.poll(*timeout)

    monkeypatch.setattr(udev.select, "poll", CountingPoll)

    async def scenario() -> None:
        events: list[DeviceEvent] = []
        source = UdevSource(
            context_factory=lambda: FakeContext(sysfs),
            monitor_factory=lambda context: monitors.append(FakeMonitor()) or monitors[-1],
        )
        task = asyncio.create_task(source.run(events.append))
        try:
            await asyncio.wait_for(source.ready.wait(), 5)
            assert len(events) == 1
            events.clear()
            monitors[0].hang_up()
            await until(lambda: source.restarts == 1 and len(monitors) == 2, 5, "the monitor restarted")
            await until(lambda: monitors[1].started, 5, "the new monitor started")
            await asyncio.sleep(0.3)  # a spinning thread would poll thousands of times meanwhile
            assert polls <= 5, f"{polls} poll() calls: the monitor thread spins"
            assert source.restarts == 1 and len(monitors) == 2
            assert events == []  # the board stayed: not reported gone

            monitors[1].push(FakeDevice(events_key(sysfs, "1-1.1", "ttyACM0"), "tty", "remove"))
            await until(lambda: len(events) == 1, 5, "the removal seen by the new monitor")
            assert summary(events) == [("remove", "AAAA000000000001", "/dev/ttyACM0")]
        finally:
            await stop(task, source, monitors)

    with caplog.at_level(logging.INFO, logger="picofleet.discovery.usb"):
        asyncio.run(asyncio.wait_for(scenario(), 20))
    died = [record.getMessage() for record in caplog.records if "udev monitor died" in record.getMessage()]
    assert len(died) == 1 and "POLLHUP" in died[0], died


def events_key(sysfs: FakeSysfs, port: str, tty: str) -> str:
    return str(sysfs.usb / port / f"{port}:1.0" / "tty" / tty)


def test_unchanged_device_event_is_not_reported_again(tmp_path: Path) -> None:
    """A udev ``change`` event for a board already reported must not make it reopen its port."""
    sysfs = FakeSysfs(tmp_path / "sys")
    key = sysfs.plug_tty("1-1.1", "AAAA000000000001", "ttyACM0")
    monitors: list[FakeMonitor] = []

    async def scenario() -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        source = UdevSource(
            context_factory=lambda: FakeContext(sysfs),
            monitor_factory=lambda context: monitors.append(FakeMonitor()) or monitors[-1],
        )
        task = asyncio.create_task(source.run(events.append))
        await asyncio.wait_for(source.ready.wait(), 5)
        monitors[0].push(FakeDevice(key, "tty", "change"))
        monitors[0].push(FakeDevice(key, "tty", "remove"))
        await until(lambda: len(events) == 2, 5, "the removal")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for monitor in monitors:
            monitor.close()
        return events

    assert [event.action for event in asyncio.run(scenario())] == ["add", "remove"]


# -- without udev: auto falls back to the sysfs poller ----------------------------------------------


def test_auto_without_libudev_polls_sysfs_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_libudev() -> None:
        raise ImportError("libudev.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(udev.pyudev, "Context", no_libudev)
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.plug_tty("1-1.1", "AAAA000000000001", "ttyACM0")

    async def scenario() -> list[DeviceEvent]:
        (poller,) = usb_sources("auto", sysfs_root=str(sysfs.root))
        assert isinstance(poller, SysfsPoller)
        poller.interval = 0.02
        events: list[DeviceEvent] = []
        task = asyncio.create_task(poller.run(events.append))
        await until(lambda: len(events) == 1, 5, "the board present at start")
        sysfs.plug_bootloader("1-1.2", "BBBB000000000002", "sda")
        await until(lambda: len(events) == 2, 5, "the bootloader plugged in")
        sysfs.unplug("1-1.1")
        await until(lambda: len(events) == 3, 5, "the board unplugged")
        await asyncio.sleep(0.1)  # a few more scans: nothing more, and no more warnings
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return events

    with caplog.at_level(logging.INFO, logger="picofleet.discovery.usb"):
        events = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert summary(events) == [
        ("add", "AAAA000000000001", "/dev/ttyACM0"),
        ("add", "BBBB000000000002", "/dev/sda1"),  # the partition only, not the disk
        ("remove", "AAAA000000000001", "/dev/ttyACM0"),
    ]
    assert events[1].device.properties["ID_MODEL"] == "RP2"  # the SCSI model, as udev has it
    assert events[1].device.properties["ID_PATH"] == "usb-0:1.2:1.0-scsi-0:0:0:0"
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        "usb: no udev here (libudev cannot be loaded: libudev.so.1: cannot open shared object file: "
        "No such file or directory); polling sysfs every 1 s"
    ]


def test_auto_without_run_udev_polls_sysfs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udev, "_udev_properties_readable", lambda context: False)
    with caplog.at_level(logging.WARNING, logger="picofleet.discovery.usb"):
        (source,) = usb_sources("auto", run_udev=str(tmp_path / "no-run-udev"))
    assert isinstance(source, SysfsPoller)
    (warning,) = caplog.records
    assert warning.getMessage().startswith("usb: no udev here (")
    assert warning.getMessage().endswith("); polling sysfs every 1 s")


def test_usb_discovery_modes() -> None:
    assert usb_sources("off") == []
    assert isinstance(usb_sources("udev")[0], UdevSource)
    assert isinstance(usb_sources("sysfs")[0], SysfsPoller)


# -- hotplug through umockdev, across processes ------------------------------------------------------


class LineReader:
    """Lines of a child's stdout, read in a thread, waited for with deadlines."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
        if line is None:
            self.lines.put(None)
            raise AssertionError(f"the process ended while waiting for {what}")
        return line


class UmockdevBed:
    """tests/helpers/umockdev_bed.py: an umockdev testbed in /usr/bin/python3, driven over stdin."""

    def __init__(self, log: Path) -> None:
        self.stderr = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(ROOT / "tests/helpers/umockdev_bed.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.output = LineReader(self.process.stdout)
        self.directory = self.output.next(15, "the testbed's directory")
        assert os.path.isdir(self.directory), self.directory

    def command(self, line: str, timeout: float = 15) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.output.next(timeout, f"the testbed's answer to {line!r}")
        assert answer == "ok", f"{line!r}: {answer}"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)
        self.stderr.close()


class Listener:
    """tests/helpers/udev_probe.py --follow in the venv's python, inside the testbed."""

    def __init__(self, testbed: UmockdevBed) -> None:
        env = {
            **os.environ,
            "LD_PRELOAD": ":".join(filter(None, ["libumockdev-preload.so.0", os.environ.get("LD_PRELOAD")])),
            "UMOCKDEV_DIR": testbed.directory,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.udev_probe", "--follow"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.output = LineReader(self.process.stdout)
        self.events: list[dict[str, Any]] = []
        assert json.loads(self.output.next(15, "the listener to be ready")) == {"ready": True}

    def wait(self, count: int, timeout: float, what: str) -> list[dict[str, Any]]:
        """Wait for ``count`` more events; return them."""
        start = len(self.events)
        deadline = time.monotonic() + timeout
        while len(self.events) < start + count:
            line = self.output.next(max(0.0, deadline - time.monotonic()), what)
            self.events.append(json.loads(line))
        return self.events[start:]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def burst_description(count: int) -> str:
    """``count`` Picos (pico-sdk) on five 7-port hubs behind port 2 of a Pi 4."""
    root = "/devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb1/1-1/1-1.2"
    paragraphs = []
    for index in range(count):
        hub = f"1-1.2.{index // 7 + 1}"
        port = f"{hub}.{index % 7 + 1}"
        serial = f"E6614C77{index:08X}"
        tty = f"ttyACM{10 + index}"
        devnum = 20 + index
        path_id = f"{PI4_USB}-usb-0:{port[2:]}:1.0"
        paragraphs += [
            f"P: {root}/{hub}/{port}/{port}:1.0/tty/{tty}\nN: {tty}\nE: DEVNAME=/dev/{tty}\n"
            f"E: ID_BUS=usb\nE: ID_MODEL=Pico\nE: ID_MODEL_ID=000a\nE: ID_PATH={path_id}\n"
            f"E: ID_SERIAL_SHORT={serial}\nE: ID_USB_INTERFACE_NUM=00\nE: ID_VENDOR=Raspberry_Pi\n"
            f"E: ID_VENDOR_ID=2e8a\nE: MAJOR=166\nE: MINOR={10 + index}\nE: SUBSYSTEM=tty\n"
            f"A: dev=166:{10 + index}\n",
            f"P: {root}/{hub}/{port}/{port}:1.0\nE: DEVTYPE=usb_interface\nE: DRIVER=cdc_acm\n"
            "E: SUBSYSTEM=usb\nA: bInterfaceClass=02\nA: bInterfaceNumber=00\n",
            f"P: {root}/{hub}/{port}\nE: BUSNUM=001\nE: DEVNAME=/dev/bus/usb/001/{devnum:03d}\n"
            f"E: DEVNUM={devnum:03d}\nE: DEVTYPE=usb_device\nE: SUBSYSTEM=usb\nA: dev=189:{devnum - 1}\n"
            f"A: idProduct=000a\nA: idVendor=2e8a\nA: manufacturer=Raspberry Pi\nA: product=Pico\n"
            f"A: serial={serial}\n",
        ]
    return "\n".join(paragraphs)


def test_hotplug_reaches_the_udev_source_across_processes(tmp_path: Path) -> None:
    reason = _system_umockdev_gi()
    if reason:
        pytest.skip(reason)
    testbed = UmockdevBed(tmp_path / "testbed.log")
    listener: Listener | None = None
    try:
        listener = Listener(testbed)
        pico = BOARDS["pico-rp2040-pico-sdk.umockdev"]

        testbed.command(f"add {DATA / 'pico-rp2040-pico-sdk.umockdev'}")
        (added,) = listener.wait(1, 10, "the Pico's add event")
        assert added["action"] == "add"
        assert (added["sighting"]["serial"], added["sighting"]["devname"]) == (pico.serial, pico.devname)
        assert added["sighting"]["board_types"] == ["rp2040"]

        # the Pico reboots into its bootloader: its tty goes, its drive comes, on the same port
        usb_device = added["device"]["key"].split("/1-1.1:1.0/")[0]
        testbed.command(f"remove {usb_device}")
        (removed,) = listener.wait(1, 10, "the Pico's remove event")
        assert (removed["action"], removed["device"]["key"]) == ("remove", added["device"]["key"])
        testbed.command(f"add {DATA / 'rp2040-bootloader.umockdev'}")
        (boot,) = listener.wait(1, 10, "the bootloader drive's add event")
        assert boot["action"] == "add" and boot["sighting"]["mode"] == "bootloader"
        assert (boot["sighting"]["serial"], boot["sighting"]["devname"]) == ("", "/dev/sda1")
        assert boot["sighting"]["usb_port"] == added["sighting"]["usb_port"]

        # 32 boards plugged at once (a powered hub switched on): every one arrives
        burst = tmp_path / "burst.umockdev"
        burst.write_text(burst_description(32))
        started = time.monotonic()
        testbed.command(f"add {burst}", timeout=30)
        arrived = listener.wait(32, 15, "32 boards")
        elapsed = max(event["t"] for event in arrived) - started
        assert {event["action"] for event in arrived} == {"add"}
        serials = {event["sighting"]["serial"] for event in arrived}
        assert serials == {f"E6614C77{index:08X}" for index in range(32)}
        print(f"burst of 32 boards: all arrived {elapsed:.2f} s after the testbed started adding them")
        with pytest.raises(AssertionError):
            listener.wait(1, 0.3, "no more events")  # no duplicates
    finally:
        if listener is not None:
            listener.close()
        testbed.close()


# -- the whole gateway under umockdev-run --------------------------------------------------------------


def by_serial(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {device["LocalUUID"]: device for device in devices}


@needs_umockdev
def test_gateway_under_umockdev_lists_the_boards(tmp_path: Path) -> None:
    """The gateway finds the umockdev boards through udev; the same boards later in their bootloaders.

    umockdev backs each tty node with a pseudo-terminal nobody answers on (identify fails, the
    board is listed with FirmwareVersion null) and each disk with a plain file. A board and its
    bootloader sit on the same USB port, so they cannot be in one testbed: a second gateway
    run (same data) sees two of the boards in their bootloaders.
    """
    data = tmp_path / "data"
    env = {"PICOFLEET_USB_DISCOVERY": "auto"}

    def run_gateway(names: list[str]) -> GatewayProcess:
        wrapper = ["umockdev-run", *umockdev_args([DATA / name for name in names]), "--"]
        return GatewayProcess(data, "--simulate", "0", env=env, wrapper=wrapper).start()

    gateway = run_gateway(APPLICATIONS)
    try:
        devices = by_serial(
            gateway.wait_devices(
                lambda d: len(d) == 4 and all(x["Status"] == "Idle" for x in d), 20, "4 idle umockdev boards"
            )
        )
        assert "watching udev for hotplug" in gateway.output()
        for name in APPLICATIONS:
            board = BOARDS[name]
            device = devices[board.serial]
            assert device["BoardType"] in board.board_types, (name, device)
            assert (device["Port"], device["FirmwareVersion"]) == (board.devname, None)
        assert devices[BOARDS["pico2-ice-pico-ice-sdk.umockdev"].serial]["BoardType"] == "pico2-ice"
        identities = {serial: (d["ResinUUID"], d["Name"], d["BoardType"]) for serial, d in devices.items()}
    finally:
        assert gateway.stop() == 0, gateway.output()

    gateway = run_gateway(WITH_BOOTLOADERS)
    try:

        def settled(devices: list[dict[str, Any]]) -> bool:
            status = {d["LocalUUID"]: d["Status"] for d in devices}
            return status == {
                PICO_SERIAL: "Bootloader",
                PICO2_ICE_SERIAL: "Bootloader",
                BOARDS["pico2-rp2350-pico-sdk.umockdev"].serial: "Idle",
                BOARDS["micropython-rp2350.umockdev"].serial: "Idle",
            }

        devices = by_serial(gateway.wait_devices(settled, 20, "two boards in their bootloaders"))
        for serial, device in devices.items():
            assert (device["ResinUUID"], device["Name"], device["BoardType"]) == identities[serial]
        assert devices[PICO2_ICE_SERIAL]["BoardType"] == "pico2-ice"  # its record, not the rp2350 rule
        assert devices[PICO_SERIAL]["Port"] is None
    finally:
        assert gateway.stop() == 0, gateway.output()
