"""Run picofleet's USB discovery once (or follow it) and print what it sees as JSON.

Meant to run under umockdev (``umockdev-run -d FILE -- python -m tests.helpers.udev_probe``, or
with ``LD_PRELOAD=libumockdev-preload.so.0`` and ``UMOCKDEV_DIR`` set), from the repository root.

``--source udev`` enumerates with pyudev (:func:`picofleet.gateway.discovery.udev.enumerate_devices`),
``--source sysfs`` scans sysfs without libudev (:func:`picofleet.gateway.discovery.sysfs_poll.scan`). Every
device is classified with the board types of the installed plugins; the output is one JSON list
of ``{"device": ..., "sighting": ... or null}``.

``--follow`` runs the discovery source instead and prints one JSON line per event
(``{"action", "key", "devname", "subsystem", "serial", "sighting", "t"}``), ``{"ready": true}``
once the first enumeration was reported, until stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from typing import Any

from picofleet.gateway.discovery.sightings import classify
from picofleet.gateway.discovery.sysfs_poll import SysfsPoller, scan
from picofleet.gateway.discovery.udev import UdevSource, enumerate_devices
from picofleet.gateway.models import DeviceEvent, UsbDevice
from picofleet.gateway.plugin_manager import load_plugins


def _record(device: UsbDevice, board_types: dict[str, Any]) -> dict[str, Any]:
    sighting = classify(device, board_types)
    return {
        "device": dataclasses.asdict(device),
        "sighting": dataclasses.asdict(sighting) if sighting else None,
    }


def probe_once(source: str) -> list[dict[str, Any]]:
    """Enumerate once with ``source`` (``udev`` or ``sysfs``) and classify every device."""
    board_types = load_plugins().board_types
    if source == "udev":
        import pyudev

        devices = enumerate_devices(pyudev.Context())
    else:
        devices = scan()
    return [_record(device, board_types) for _, device in sorted(devices.items())]


async def follow(source: str) -> None:
    """Print every event of the discovery source until stdin is closed."""
    board_types = load_plugins().board_types
    usb = UdevSource() if source == "udev" else SysfsPoller(interval=0.1)

    def emit(event: DeviceEvent) -> None:
        line = {"action": event.action, "t": time.monotonic(), **_record(event.device, board_types)}
        print(json.dumps(line), flush=True)

    task = asyncio.create_task(usb.run(emit))
    ready = asyncio.create_task(usb.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed: raise why
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await usb.close()


def main() -> None:
    """Command line: ``[--source udev|sysfs] [--follow]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("udev", "sysfs"), default="udev")
    parser.add_argument("--follow", action="store_true")
    args = parser.parse_args()
    if args.follow:
        asyncio.run(follow(args.source))
    else:
        print(json.dumps(probe_once(args.source), indent=1))


if __name__ == "__main__":
    main()
