"""Running discovery sources and classifying what they report into sightings of boards.

Every plugin's :class:`DiscoverySource` runs in its own task, supervised: if one ends or
raises, its devices are reported gone, the failure is logged and it is restarted after a
back-off. Each ``add`` is matched against the USB rules of every board type
(:func:`classify`); devices no board type claims are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from picofleet.gateway.models import BoardType, DeviceEvent, DiscoverySource, Sighting, UsbDevice, UsbRule

log = logging.getLogger("picofleet.discovery")

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_RUN = 60.0


def classify(device: UsbDevice, board_types: Mapping[str, BoardType]) -> Sighting | None:
    """Return the sighting a device stands for, or ``None`` if no board type claims it.

    Among matching rules the highest priority wins; several board types at that priority make
    an ambiguous sighting (the firmware decides, see ``picofleet_identify``).
    """
    best: list[tuple[str, UsbRule]] = []
    matching: list[str] = []
    for name, board_type in board_types.items():
        for rule in board_type.usb_rules:
            if not rule.matches(device):
                continue
            if name not in matching:
                matching.append(name)
            if not best or rule.priority > best[0][1].priority:
                best = [(name, rule)]
            elif rule.priority == best[0][1].priority and name not in (n for n, _ in best):
                best.append((name, rule))
    if not best:
        return None
    rule = best[0][1]
    return Sighting(
        key=device.key,
        serial=device.board_serial if rule.unique_serial else "",
        mode=rule.mode,
        board_types=tuple(name for name, _ in best),
        firmware=rule.firmware,
        devname=device.devname,
        usb_path=device.usb_path,
        virtual=device.properties.get("PICOFLEET_VIRTUAL") == "1",
        usb_port=device.usb_port,
        matching_types=tuple(matching),
    )


class Discovery:
    """Runs the discovery sources and hands classified sightings to the device manager."""

    def __init__(
        self,
        sources: Iterable[DiscoverySource],
        board_types: Mapping[str, BoardType],
        on_present: Callable[[Sighting], None],
        on_gone: Callable[[str], None],
    ):
        self.sources = list(sources)
        self.board_types = board_types
        self.on_present = on_present
        self.on_gone = on_gone
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start one supervised task per source."""
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._supervise(source), name=f"discovery:{source.name}"))

    async def stop(self) -> None:
        """Cancel the sources' tasks and let each source release what it started."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self.sources:
            try:
                await source.close()
            except Exception:
                log.exception("discovery source %s did not close cleanly", source.name)

    async def _supervise(self, source: DiscoverySource) -> None:
        failures = 0
        while True:
            present: set[str] = set()

            def emit(event: DeviceEvent, present: set[str] = present) -> None:
                self._handle(event, present)

            started = asyncio.get_running_loop().time()
            try:
                await source.run(emit)
                log.warning("discovery source %s stopped; restarting it", source.name)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("discovery source %s failed (%s); restarting it", source.name, error)
            for key in present:
                self.on_gone(key)
            if asyncio.get_running_loop().time() - started > HEALTHY_RUN:
                failures = 0  # it ran well for a while: start the back-off afresh
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            failures += 1
            await asyncio.sleep(delay)

    def _handle(self, event: DeviceEvent, present: set[str]) -> None:
        device = event.device
        if event.action == "remove":
            if device.key in present:
                present.discard(device.key)
                self.on_gone(device.key)
            return
        sighting = classify(device, self.board_types)
        if sighting is None:
            log.debug(
                "ignoring %s %s (%s:%s): no board type claims it",
                device.subsystem,
                device.devname,
                device.vendor_id,
                device.model_id,
            )
            return
        present.add(device.key)
        self.on_present(sighting)
