"""Real USB boards discovered with pyudev, and the choice between udev and sysfs polling.

:class:`UdevSource` (the discovery source named ``usb``):

1. opens a udev netlink monitor for the ``tty`` and ``block`` subsystems, with a large receive
   buffer (a burst of 32 boards plugged at once must not overflow it),
2. enumerates the tty and block devices already present (``Context.list_devices``) and reports
   them, then
3. reads the monitor in a thread and hands every change to the event loop with
   ``loop.call_soon_threadsafe``; the loop is never blocked.

The monitor is opened before the enumeration so that nothing plugged in between is lost (a
device seen twice is reported once). The monitor thread is supervised here: when it dies
(POLLERR, ENOBUFS after an overflow, POLLHUP, any exception) a new monitor is opened, the devices
are enumerated again and only the difference is reported (boards that stayed do not flap Offline),
with one log line saying what happened. Opening or enumerating that fails is retried here (0.5 s,
doubling up to 5 s) with the reported devices kept: no board is reported gone unless it vanished.

Which devices are reported and how their properties are completed from sysfs when udev's are
missing: :mod:`picofleet.gateway.discovery.sysfs_poll`, shared with the sysfs poller.

:func:`usb_sources` implements the ``usb_discovery`` setting: ``udev``, ``sysfs``, ``off``, or
``auto``: udev when it is usable (libudev loads, a netlink monitor can be opened, and /run/udev
exists or udev properties can be read), else one warning and the sysfs poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import pyudev

from picofleet.gateway.discovery.sysfs_poll import (
    POLL_INTERVAL,
    SUBSYSTEMS,
    SYSFS_ROOT,
    DeviceSet,
    SysfsPoller,
    describe,
    through_usb,
)
from picofleet.gateway.models import DiscoverySource, Emit, UsbDevice

log = logging.getLogger("picofleet.discovery.usb")

RECEIVE_BUFFER = 128 * 1024 * 1024
"""Bytes asked for the netlink socket's receive buffer (udevd asks the same)."""
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Seconds before reopening a monitor that died, by the number of deaths in a row."""
HEALTHY_RUN = 60.0
"""A monitor that ran this long resets the restart delay."""
REOPEN_FIRST_DELAY = 0.5
REOPEN_MAX_DELAY = 5.0
"""Seconds before retrying a monitor that cannot be opened or enumerated: doubling, at most this."""
MONITOR_DEATH = select.POLLERR | select.POLLHUP | select.POLLNVAL
"""poll() flags on the netlink socket that mean the monitor died."""
BATCH = 256
"""Most changes handed to the event loop in one call."""
RUN_UDEV = "/run/udev"

Change = tuple[str, str, UsbDevice | None]
"""``("add", key, device)`` or ``("remove", key, None)``, as the monitor thread hands them over."""


class UdevDevice(Protocol):
    """What the source reads of a :class:`pyudev.Device` (tests pass fakes)."""

    @property
    def sys_path(self) -> str:
        """The device's sysfs path."""

    @property
    def subsystem(self) -> str | None:
        """``tty``, ``block``, ..."""

    @property
    def action(self) -> str | None:
        """The monitor event's action (``add``, ``remove``, ``change``, ``move``); ``None`` when listed."""

    @property
    def device_path(self) -> str:
        """The sysfs path without the sysfs mount point (``/devices/...``)."""

    @property
    def properties(self) -> Mapping[str, str]:
        """udev's properties of the device."""


class UdevContext(Protocol):
    """What the source uses of a :class:`pyudev.Context`."""

    def list_devices(self, subsystem: str) -> Iterable[UdevDevice]:
        """The devices of ``subsystem`` present now."""


class UdevMonitor(Protocol):
    """What the source uses of a :class:`pyudev.Monitor` (opened by :meth:`pyudev.Monitor.from_netlink`)."""

    def filter_by(self, subsystem: str) -> None:
        """Receive only the events of ``subsystem``."""

    def set_receive_buffer_size(self, size: int) -> None:
        """Enlarge the netlink socket's receive buffer (``SO_RCVBUFFORCE``)."""

    def start(self) -> None:
        """Start receiving events."""

    def fileno(self) -> int:
        """The netlink socket, to poll."""

    def poll(self, timeout: float | None = None) -> UdevDevice | None:
        """The next event's device, ``None`` when there is none within ``timeout``."""


def enumerate_devices(context: UdevContext) -> dict[str, UsbDevice]:
    """The reported tty and block devices present now (``context`` is a :class:`pyudev.Context`), by key.

    Blocking (libudev and sysfs reads): run it in a thread.
    """
    found: dict[str, UsbDevice] = {}
    for subsystem in SUBSYSTEMS:
        for device in context.list_devices(subsystem=subsystem):
            usb_device = _describe(device, subsystem)
            if usb_device is not None:
                found[usb_device.key] = usb_device
    return found


def _describe(device: UdevDevice, subsystem: str | None = None) -> UsbDevice | None:
    sys_path = str(device.sys_path)
    subsystem = subsystem or device.subsystem or ""
    if subsystem not in SUBSYSTEMS or not through_usb(sys_path):
        return None  # skipped before its properties are read
    return describe(sys_path, subsystem, {str(k): str(v) for k, v in device.properties.items()})


def _open_netlink_monitor(context: UdevContext) -> UdevMonitor:
    monitor: UdevMonitor = pyudev.Monitor.from_netlink(context)
    return monitor


class UdevSource:
    """A :class:`~picofleet.gateway.models.DiscoverySource` backed by udev (see the module docstring).

    ``context_factory`` and ``monitor_factory`` default to :class:`pyudev.Context` and
    :meth:`pyudev.Monitor.from_netlink`; tests pass fakes. ``ready`` is set once the first
    enumeration was reported; ``restarts`` counts the monitors that died and were replaced.
    """

    name = "usb"

    def __init__(
        self,
        context_factory: Callable[[], UdevContext] | None = None,
        monitor_factory: Callable[[UdevContext], UdevMonitor] | None = None,
    ) -> None:
        self._context_factory = context_factory or pyudev.Context
        self._monitor_factory = monitor_factory or _open_netlink_monitor
        self.ready = asyncio.Event()
        self.restarts = 0
        self._stopping: list[Callable[[], None]] = []

    def _open_monitor(self, context: UdevContext) -> UdevMonitor:
        monitor = self._monitor_factory(context)
        for subsystem in SUBSYSTEMS:
            monitor.filter_by(subsystem)
        try:
            monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        except Exception as error:  # best effort: SO_RCVBUFFORCE needs CAP_NET_ADMIN
            log.debug("usb: cannot enlarge the udev monitor's receive buffer: %s", error)
        monitor.start()
        return monitor

    async def run(self, emit: Emit) -> None:
        """Enumerate, then follow the monitor; reopen it and report the difference when it dies."""
        loop = asyncio.get_running_loop()
        reported = DeviceSet(emit)
        context = await asyncio.to_thread(self._context_factory)
        failures = 0
        reopen_failures = 0
        died: str | None = None
        while True:
            try:
                monitor = await asyncio.to_thread(self._open_monitor, context)
                current = await asyncio.to_thread(enumerate_devices, context)
            except Exception as error:
                # kept here, not raised to the supervisor: that would report every board gone
                delay = min(REOPEN_FIRST_DELAY * 2**reopen_failures, REOPEN_MAX_DELAY)
                reopen_failures += 1
                log.log(
                    logging.WARNING if reopen_failures == 1 else logging.DEBUG,
                    "usb: cannot open the udev monitor or enumerate the devices (%s: %s); "
                    "retrying in %g s, the %d devices reported stay reported",
                    type(error).__name__,
                    error,
                    delay,
                    len(reported.devices),
                )
                await asyncio.sleep(delay)
                continue
            reopen_failures = 0
            added, removed = reported.update(current)
            if died is None:
                log.info("usb: %d USB tty/block devices present; watching udev for hotplug", len(current))
            else:
                log.warning(
                    "usb: the udev monitor died (%s); opened a new one and enumerated again: "
                    "%d added, %d removed, %d unchanged",
                    died,
                    added,
                    removed,
                    len(current) - added,
                )
            self.ready.set()
            started = loop.time()
            try:
                died = await self._follow(monitor, reported)
            except Exception as error:  # the monitor thread could not be started
                died = f"{type(error).__name__}: {error}"
            self.restarts += 1
            if loop.time() - started > HEALTHY_RUN:
                failures = 0
            await asyncio.sleep(RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)])
            failures += 1

    async def _follow(self, monitor: UdevMonitor, reported: DeviceSet) -> str:
        """Read ``monitor`` in a thread until it dies; return why."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[str] = loop.create_future()
        wake_read, wake_write = os.pipe()

        def apply(changes: list[Change]) -> None:
            for _action, key, device in changes:
                if device is not None:
                    reported.add(device)
                else:
                    reported.remove(key)

        def done(reason: str) -> None:
            if not finished.done():
                finished.set_result(reason)

        def stop() -> None:
            with contextlib.suppress(OSError):
                os.write(wake_write, b"x")

        try:
            thread = threading.Thread(
                target=self._receive,
                args=(monitor, wake_read, loop, apply, done),
                name="udev-monitor",
                daemon=True,
            )
            thread.start()
        except BaseException:
            os.close(wake_read)
            os.close(wake_write)
            raise
        self._stopping.append(stop)
        try:
            return await finished
        finally:
            stop()
            self._stopping.remove(stop)
            await asyncio.to_thread(thread.join, 5.0)
            os.close(wake_read)
            os.close(wake_write)

    def _receive(
        self,
        monitor: UdevMonitor,
        wake: int,
        loop: asyncio.AbstractEventLoop,
        apply: Callable[[list[Change]], None],
        done: Callable[[str], None],
    ) -> None:
        """The monitor thread: wait for the socket, drain it, hand changes to the loop."""
        reason = "the monitor thread stopped"
        try:
            fd = monitor.fileno()
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(wake, select.POLLIN)
            while True:
                ready = dict(poller.poll())
                if wake in ready:
                    return
                if ready.get(fd, 0) & MONITOR_DEATH:
                    raise _death(fd, ready[fd])  # reading on would spin: POLLHUP leaves nothing to read
                changes: list[Change] = []
                while len(changes) < BATCH:
                    device = monitor.poll(timeout=0)
                    if device is None:
                        break
                    changes.extend(self._changes(device))
                if changes:
                    loop.call_soon_threadsafe(apply, changes)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(done, reason)

    @staticmethod
    def _changes(device: UdevDevice) -> list[Change]:
        """What one udev event means for the reported set (runs in the monitor thread)."""
        key = str(device.sys_path)
        action = device.action
        if action == "remove":
            return [("remove", key, None)]
        changes: list[Change] = []
        old = device.properties.get("DEVPATH_OLD") if action == "move" else None
        if old and key.endswith(device.device_path):
            changes.append(("remove", key[: len(key) - len(device.device_path)] + old, None))  # renamed
        usb_device = _describe(device)
        if usb_device is not None:
            changes.append(("add", key, usb_device))
        elif action == "change":
            changes.append(("remove", key, None))  # no longer one of ours (a disk that lost its filesystem)
        return changes

    async def close(self) -> None:
        """Stop a monitor thread that is still running (``run`` normally stops it when cancelled)."""
        for stop in list(self._stopping):
            stop()


def _death(fd: int, flags: int) -> OSError:
    """Why the monitor's socket ``fd`` died, given its poll() ``flags``: its pending error if any."""
    names = "|".join(name for name in ("POLLERR", "POLLHUP", "POLLNVAL") if flags & getattr(select, name))
    code = 0
    if not flags & select.POLLNVAL:
        with contextlib.suppress(OSError):
            copy = os.dup(fd)
            try:
                sock = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)  # not a socket: nothing took it over
                raise
            with sock:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # ENOBUFS after an overflow
    if code:
        return OSError(code, f"{os.strerror(code)} ({names})")
    return OSError(f"the netlink socket reported {names}")


def _udev_properties_readable(context: UdevContext) -> bool:
    """Does any USB tty or block device carry a property only udev sets?"""
    for subsystem in SUBSYSTEMS:
        for device in context.list_devices(subsystem=subsystem):
            if through_usb(str(device.sys_path)) and device.properties.get("ID_VENDOR_ID"):
                return True
    return False


def udev_unusable_reason(run_udev: str = RUN_UDEV) -> str | None:
    """Why udev cannot be used here, or ``None`` when it can (see :func:`usb_sources`)."""
    try:
        context = pyudev.Context()
    except Exception as error:  # ImportError-like failures of ctypes come as OSError
        return f"libudev cannot be loaded: {error}"
    try:
        monitor = _open_netlink_monitor(context)
        monitor.start()
    except Exception as error:
        return f"cannot open a udev netlink monitor: {error}"
    del monitor
    if os.path.isdir(run_udev):
        return None
    try:
        if _udev_properties_readable(context):
            return None
    except Exception as error:
        return f"{run_udev} does not exist and udev's database cannot be read: {error}"
    return f"{run_udev} does not exist: udevd does not run here and the host's {run_udev} is not mounted"


def usb_sources(
    mode: str, *, run_udev: str = RUN_UDEV, sysfs_root: str = SYSFS_ROOT
) -> list[DiscoverySource]:
    """The USB discovery source for the ``usb_discovery`` setting.

    ``off``: none; ``udev``: :class:`UdevSource` (it fails, and is retried, if udev does not
    work); ``sysfs``: :class:`~picofleet.gateway.discovery.sysfs_poll.SysfsPoller`; ``auto``: udev if
    :func:`udev_unusable_reason` finds nothing against it, else the poller, saying so once at
    WARNING.
    """
    if mode == "off":
        return []
    if mode == "udev":
        return [UdevSource()]
    if mode == "sysfs":
        log.info("usb: polling sysfs every %g s (usb_discovery is sysfs)", POLL_INTERVAL)
        return [SysfsPoller(sysfs_root)]
    reason = udev_unusable_reason(run_udev)
    if reason is None:
        return [UdevSource()]
    log.warning("usb: no udev here (%s); polling sysfs every %g s", reason, POLL_INTERVAL)
    return [SysfsPoller(sysfs_root)]
