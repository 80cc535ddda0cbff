"""One board: its record, what discovery sees of it, and the task that drives it.

Each board has one asyncio task running :meth:`Board.run`, an explicit state machine
(docs/states.md). The task is the only code that touches the board: it calls the plugin hooks
in worker threads (never on the event loop), one at a time. Everything else (the API, the
device manager) only changes what the board *should* do — a pending flash, a restart flag, the
gateway's pause — and wakes the task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.flashing import flash_board
from picofleet.gateway.boards.owner import BoardOwner
from picofleet.gateway.boards.record import LIVE_FIELDS, Status, public_form
from picofleet.gateway.boards.settings import TargetMemo, bring_to_target, identity_fields
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardError, BoardIdentity, BoardRef, Sighting

log = logging.getLogger("picofleet.board")

BLINK_SECONDS = 3.0
RESTART_TIMEOUT = 10.0
REOPEN_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
FAILURE_RETRY = 5.0
RESET_GRACE = 1.0
"""Seconds a board's port has to go away after a reset before it counts as a soft reset."""


@dataclass(frozen=True)
class BlinkOutcome:
    """What became of a request to blink a board (``PUT /v1/devices/{uuid}/identify``).

    ``kind``: ``"blinked"``; ``"unsupported"`` (every plugin's ``picofleet_blink`` returned
    ``None``: its firmware cannot blink); ``"failed"`` (the hook raised or timed out, or the
    firmware did not acknowledge); ``"gone"`` (the board stopped running its firmware, was
    forgotten or the gateway stopped before it blinked); ``"timeout"`` (the board's task did not get
    to it in time, see ``DeviceManager.blink``). ``reason`` says it in words.
    """

    kind: str
    reason: str = ""

    @property
    def blinked(self) -> bool:
        """Whether the board blinks."""
        return self.kind == "blinked"


class Board:
    """A board known to the gateway (provisioned or being provisioned)."""

    def __init__(self, manager: BoardOwner[Board], record: dict[str, Any], *, provisioned: bool):
        self.manager = manager
        self.record = record
        self.provisioned = provisioned
        self.sightings: dict[str, Sighting] = {}
        self.port: serial.Serial | None = None
        self.port_sighting: Sighting | None = None  # the node the open port belongs to
        self.usb_port = str(record.get("UsbPort") or "")  # the USB port it was last seen on
        self.busy = False  # in the middle of a flash or restart
        self.hooks_running = 0
        self.broken = False  # stays Broken until replugged or asked to do something new
        self.wake = asyncio.Event()
        self.presence = asyncio.Event()  # set on every change of sightings; only the task waits on it
        self.update_lock = asyncio.Lock()
        self.pending_flash: FlashJob | None = None
        self.flash_requests = 0  # flashes being queued (manager.request_flash), not pending yet
        self.pending_blink = False
        self.blink_waiters: list[asyncio.Future[BlinkOutcome]] = []  # told the outcome of the next blink
        self.delete_requested = False
        self.forgotten = False
        self.open_failures = 0
        self.task: asyncio.Task[None] | None = None
        self.evaluation_ready = False  # reserved, running the evaluation firmware, port open
        self.bootloader_arrivals = 0  # bootloader drives that appeared (flashing: the image did not boot)
        self.target_memo = TargetMemo()  # settings/FPGA attempts not to repeat (gateway/boards/settings.py)

    # -- identity -------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        """The board's USB serial, its LocalUUID."""
        return str(self.record["LocalUUID"])

    @property
    def label(self) -> str:
        """How log lines name the board: ``name (serial)``."""
        return f"{self.record.get('Name') or 'new board'} ({self.serial})"

    def public(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return public_form(self.record)

    def ref(self, sighting: Sighting | None = None) -> BoardRef:
        """The :class:`BoardRef` hooks receive, for the sighting given or the current one."""
        sighting = sighting or self.sightings.get(APPLICATION) or self.sightings.get(BOOTLOADER)
        mode = sighting.mode if sighting else APPLICATION
        return BoardRef(
            serial=self.serial,
            board_type=str(self.record["BoardType"]),
            mode=mode,
            firmware=sighting.firmware if sighting else "unknown",
            port=sighting.devname if sighting and mode == APPLICATION else None,
            drive=sighting.devname if sighting and mode == BOOTLOADER else None,
            usb_path=sighting.usb_path if sighting else "",
            virtual=sighting.virtual if sighting else False,
        )

    @property
    def holding(self) -> bool:
        """Whether the task holds the board's port, runs one of its hooks or is mid-operation."""
        return self.port is not None or self.busy or self.hooks_running > 0

    # -- what discovery tells us ------------------------------------------------------------
    def seen(self, sighting: Sighting) -> None:
        """Discovery sees a node of the board (its application port or its bootloader drive)."""
        previous = self.sightings.get(sighting.mode)
        if sighting.mode == BOOTLOADER and (previous is None or previous.key != sighting.key):
            self.bootloader_arrivals += 1
        self.sightings[sighting.mode] = sighting
        self.usb_port = sighting.usb_port or self.usb_port
        self._presence_changed()

    def gone(self, key: str) -> bool:
        """The node ``key`` went away; whether it was one of this board's."""
        for mode, sighting in list(self.sightings.items()):
            if sighting.key == key:
                del self.sightings[mode]
                self._presence_changed()
                return True
        return False

    def _presence_changed(self) -> None:
        self.wake.set()
        self.presence.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checking at each presence change; ``False`` on timeout.

        Only the board's own task waits, and sightings change on the event loop, so clearing the
        event right before checking cannot miss a change.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.presence.clear()
                    if predicate():
                        return True
                    await self.presence.wait()
        except TimeoutError:
            return False

    # -- changing the record ----------------------------------------------------------------
    async def update(self, **fields: Any) -> None:
        """Change record fields; stored fields are on disk before anyone can read them.

        Updates of one board are serialised, so concurrent ones (the API and the board task)
        never undo each other; a forgotten board is not written back.
        """
        async with self.update_lock:
            if self.forgotten:
                return
            changed = {key: value for key, value in fields.items() if self.record.get(key) != value}
            if not changed:
                return
            if (
                "Status" in changed
                and changed["Status"] != Status.BROKEN.value
                and "StatusReason" not in fields
            ):
                changed["StatusReason"] = None
            if self.provisioned and not changed.keys() <= LIVE_FIELDS:
                await self.manager.persist({**self.record, **changed})
            self.record = {**self.record, **changed}
        self.changed()
        if "Status" in changed:
            reason = self.record.get("StatusReason")
            log.info("%s: %s%s", self.label, changed["Status"], f" ({reason})" if reason else "")

    def set_progress(self, done: int, total: int) -> None:
        """Live flash progress (not stored); safe to call on the event loop only."""
        percent = round(100 * done / total, 1) if total else 100.0
        self.record = {**self.record, "Progress": {"done": done, "total": total, "percent": percent}}
        self.changed()

    def clear_progress(self) -> None:
        """No operation in progress any more (``Progress`` null; not stored); the event loop only."""
        if self.record.get("Progress") is not None:
            self.record = {**self.record, "Progress": None}
            self.changed()

    def changed(self) -> None:
        """Tell live watchers (``manager.changes``) that this board's record changed."""
        self.manager.changes.publish(f"device:{self.serial}")

    # -- the task ---------------------------------------------------------------------------
    async def run(self) -> None:
        """The board's state machine: reconcile, then sleep until something changes."""
        try:
            while not self.forgotten:
                self.wake.clear()
                try:
                    await self.reconcile()
                except Exception as error:  # BoardError, or a bug: neither may end the board's task
                    await self.failed(error)
                if not self.forgotten:
                    await self.wake.wait()
        finally:
            self.settle_blink(BlinkOutcome("gone", "the board was forgotten or the gateway stopped"))
            await self.close_port()

    async def failed(self, error: Exception) -> None:
        """An operation failed: release the port, show Broken with the reason, never raise."""
        if isinstance(error, BoardError):
            reason = str(error)
        else:
            log.exception("%s: internal error", self.label)
            reason = f"internal error: {type(error).__name__}: {error}"
            self.manager.wake_later(self, FAILURE_RETRY)
        self.broken = True
        self.evaluation_ready = False
        if self.pending_blink:  # a Broken board blinks nothing: say why now, not after the wait
            self.pending_blink = False
            self.settle_blink(BlinkOutcome("failed", reason))
        try:
            await self.close_port()
            await self.update(Status=Status.BROKEN.value, StatusReason=reason, Progress=None)
            if self.manager.reservations.of(self.serial) is not None:
                await self.manager.reservations.board_failed(self.serial, reason)
        except Exception:
            log.exception("%s: could not record the failure (%s)", self.label, reason)
            self.manager.wake_later(self, FAILURE_RETRY)

    async def reconcile(self) -> None:
        """Bring the board one step closer to what it should be (docs/states.md).

        A reserved board that is ready serves its evaluations from here (``manager.reserved_boards``,
        until there is no work for it or ``wake`` is set); the reservation book learns whether it is
        ready.
        """
        self.evaluation_ready = False
        await self.reconcile_step()
        if not self.evaluation_ready:
            await self.manager.reservations.set_ready(self.serial, False)

    async def reconcile_step(self) -> None:
        """One step of :meth:`reconcile`."""
        reserved = self.manager.reservations.of(self.serial) is not None
        if self.delete_requested:
            if reserved:
                await self.manager.reservations.board_deleted(self.serial)
            await self.close_port()
            await self.manager.forget(self)
            return
        app = self.sightings.get(APPLICATION)
        bootloader = self.sightings.get(BOOTLOADER)
        if app is None and self.pending_blink:
            self.pending_blink = False  # only a running firmware blinks; the request is stale
            self.settle_blink(BlinkOutcome("gone", "it stopped running its firmware before it blinked"))
        if app is None and bootloader is None:
            self.broken = False  # unplugged: whatever was wrong, it starts afresh when plugged back
            await self.close_port()
            await self.update(Status=Status.OFFLINE.value, Port=None, Progress=None)
            return
        if self.manager.paused:
            await self.close_port()
            await self.present_while_paused(bootloader=app is None)
            return
        if self.pending_flash is not None:
            await self.flash()
            return
        if self.broken:
            return  # Broken until it is replugged or asked to flash or restart
        if app is None:
            await self.close_port()
            await self.correct_board_type(bootloader)
            if not self.provisioned:
                await self.manager.provision(self, str(self.record["BoardType"]))
            await self.update(
                Status=Status.BOOTLOADER.value,
                Port=None,
                UsbPort=bootloader.usb_port
                if bootloader and bootloader.usb_port
                else self.record.get("UsbPort"),
                StatusReason="in its UF2 bootloader, waiting for firmware",
            )
            return
        if self.port is not None and self.port_sighting is not app:
            await self.close_port()  # the board re-enumerated under a new node
        if self.port is None and not await self.open_and_identify(app):
            return
        if self.record.get("RestartFlag"):
            await self.restart()
            return
        if self.pending_blink:
            await self.blink()
        if reserved:
            await self.manager.reserved_boards.serve(self)
        else:
            await bring_to_target(self)  # settings and FPGA image (gateway/boards/settings.py), then Idle

    async def wait_for_reset(self) -> None:
        """Close the port of a board that was just reset, and wait until it is back.

        A hard reset takes the port away and brings a new one (waited for up to RESTART_TIMEOUT);
        after a soft reset the same port stays.
        """
        app = self.port_sighting
        await self.close_port()
        self.busy = True
        try:
            went = await self.wait_for(lambda: self.sightings.get(APPLICATION) is not app, RESET_GRACE)
            if went and not await self.wait_for(lambda: APPLICATION in self.sightings, RESTART_TIMEOUT):
                raise BoardError(f"did not come back within {RESTART_TIMEOUT:g} s of its reset")
        finally:
            self.busy = False

    async def correct_board_type(self, bootloader: Sighting | None) -> None:
        """The bootrom tells the chip for sure: a board whose USB identity was ambiguous (MicroPython
        is 2e8a:0005 on both chips) and guessed wrong takes the type its bootloader shows."""
        if bootloader is None or not bootloader.matching_types:
            return
        if self.record["BoardType"] not in bootloader.matching_types:
            log.warning(
                "%s: its bootloader is a %s's, not a %s's: corrected",
                self.label,
                bootloader.board_types[0],
                self.record["BoardType"],
            )
            await self.update(BoardType=bootloader.board_types[0])

    async def present_while_paused(self, *, bootloader: bool) -> None:
        """Show a board that is plugged in while the gateway is paused, without touching it.

        A new board is provisioned from its USB identity alone (identify waits for Running).
        """
        if not self.provisioned:
            await self.manager.provision(self, str(self.record["BoardType"]))
        if self.record["Status"] in (Status.OFFLINE.value, Status.STARTING.value):
            status = Status.BOOTLOADER if bootloader else Status.IDLE
            await self.update(Status=status.value, StatusReason="the gateway is paused")

    async def call(self, hook: str, **kwargs: Any) -> Any:
        """Call a blocking plugin hook in a worker thread (counted: a running hook holds the board)."""
        self.hooks_running += 1
        try:
            return await self.manager.call_hook(hook, **kwargs)
        finally:
            self.hooks_running -= 1

    async def open_and_identify(self, app: Sighting) -> bool:
        """Open the application port, ask the firmware who it is, and provision a new board."""
        if self.provisioned:
            await self.update(Status=Status.STARTING.value)
        ref = self.ref(app)
        try:
            port = await self.call("picofleet_open_port", board=ref)
        except BoardError as error:
            self.open_failures += 1
            delay = REOPEN_BACKOFF[min(self.open_failures, len(REOPEN_BACKOFF)) - 1]
            await self.update(StatusReason=f"{error}; retrying in {delay:g} s")
            self.manager.wake_later(self, delay)
            return False
        self.open_failures = 0
        self.port, self.port_sighting = port, app
        identity: BoardIdentity | None = None
        try:
            identity = await self.call("picofleet_identify", board=ref, port=port)
        except BoardError as error:
            log.warning("%s: identify failed: %s", self.label, error)
        if identity is not None and not isinstance(identity, BoardIdentity):
            log.warning("%s: a plugin's identify returned %r, not a BoardIdentity", self.label, identity)
            identity = None
        board_type = str(self.record["BoardType"])
        if identity is not None and identity.board_type in self.manager.board_types:
            board_type = identity.board_type
        version = f"{identity.firmware} {identity.version}" if identity else None
        if not self.provisioned:
            await self.manager.provision(self, board_type)
        if version != self.record.get("FirmwareVersion"):  # in the board's log at the fleet too
            log.info("%s: runs %s", self.label, version or "a firmware that does not identify itself")
        drifted = self.drifted(identity)
        if drifted:
            log.warning(
                "%s: runs version %s, not %s as last flashed (Commit %s): flashed behind the gateway's"
                " back; Commit cleared",
                self.label,
                identity.version if identity else None,
                (self.record.get("RunningImage") or {}).get("version"),
                self.record.get("Commit"),
            )
        await self.update(
            BoardType=board_type,
            FirmwareVersion=version,
            Port=app.devname,
            UsbPort=app.usb_port or None,
            **identity_fields(self, identity),  # Environment, Config, FpgaImage: what the board holds
            **({"Commit": None} if drifted else {}),
        )
        if drifted:
            self.manager.request_reapply(f"{self.label} drifted")
        return True

    def drifted(self, identity: BoardIdentity | None) -> bool:
        """Whether a board that identified as ``identity`` runs another version than the last image
        the gateway flashed onto it (``RunningImage``): it was flashed behind the gateway's back, its
        ``Commit`` no longer says what it runs — it is cleared (in the same update as the version,
        so the API never shows the old commit beside the new version) and the fleet sync is asked
        to apply the target again.

        Not while the gateway flashes it (the version changes then) nor for a reserved board (its
        evaluation firmware); a firmware that does not identify itself is not taken for drift.
        """
        running = self.record.get("RunningImage")
        expected = running.get("version") if isinstance(running, dict) else None
        return not (
            identity is None
            or expected is None
            or identity.version == expected
            or self.busy
            or self.record.get("Commit") is None
            or self.manager.reservations.of(self.serial) is not None
        )

    async def close_port(self) -> None:
        """Close the port if the gateway holds it; it counts as held until the close returned."""
        port = self.port
        if port is not None:
            try:
                await self.call("picofleet_close_port", board=self.ref(self.port_sighting), port=port)
            except BoardError as error:
                log.warning("%s: closing its port failed: %s", self.label, error)
            finally:
                self.port, self.port_sighting = None, None
        if self.record.get("Port") is not None:
            await self.update(Port=None)

    async def restart(self) -> None:
        """Reboot into the application firmware and wait for it to come back (ENM restart hook)."""
        app = self.sightings[APPLICATION]
        await self.update(Status=Status.STOPPING.value)
        self.busy = True
        try:
            done = await self.call("picofleet_restart", board=self.ref(app), port=self.port)
            await self.close_port()
            if done is None:
                await self.update(
                    RestartFlag=False,
                    Status=Status.IDLE.value,
                    StatusReason="its firmware cannot be restarted remotely",
                )
                return
            came_back = await self.wait_for(
                lambda: (now := self.sightings.get(APPLICATION)) is not None and now is not app,
                RESTART_TIMEOUT,
            )
            await self.update(RestartFlag=False)
            if not came_back:
                raise BoardError(f"did not come back within {RESTART_TIMEOUT:g} s of a restart")
        finally:
            self.busy = False

    def settle_blink(self, outcome: BlinkOutcome) -> None:
        """Tell everyone waiting for the pending blink its outcome (a waiter that gave up is skipped)."""
        waiters, self.blink_waiters = self.blink_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(outcome)

    async def blink(self) -> None:
        """Blink the LED so that a person finds the board (the identify endpoint); its waiters learn
        the outcome. A hook that fails leaves the board Broken with the reason, as any failed step."""
        self.pending_blink = False
        try:
            done = await self.call("picofleet_blink", board=self.ref(), port=self.port, seconds=BLINK_SECONDS)
        except BoardError as error:
            self.settle_blink(BlinkOutcome("failed", str(error)))
            raise
        except BaseException:
            self.settle_blink(BlinkOutcome("gone", "the gateway stopped before the board blinked"))
            raise
        if done is None:
            log.warning("%s: its firmware cannot blink", self.label)
            running = self.record.get("FirmwareVersion") or "a firmware that does not identify itself"
            self.settle_blink(BlinkOutcome("unsupported", f"its firmware cannot blink (it runs {running})"))
        elif not done:
            self.settle_blink(BlinkOutcome("failed", "its firmware did not acknowledge the blink"))
        else:
            self.settle_blink(BlinkOutcome("blinked"))

    async def flash(self) -> None:
        """Flash the pending image (gateway/boards/flashing.py); a job queued meanwhile stays pending."""
        job = self.pending_flash
        assert job is not None
        self.busy = True
        self.broken = False
        try:
            await flash_board(self, job)
        except asyncio.CancelledError:
            raise  # the gateway stops: the flash stays pending (PendingFlash) and resumes at the next start
        except BoardError:
            await self.finish_job(job)
            raise
        else:
            await self.finish_job(job)
        finally:
            self.busy = False
            self.clear_progress()

    async def finish_job(self, job: FlashJob) -> None:
        """The job is done (or failed for good): drop it, unless a newer job replaced it meanwhile."""
        async with self.update_lock:
            if self.pending_flash is not job:
                return  # a newer job was queued (and stored) while this one ran
            self.pending_flash = None
            if self.provisioned and not self.forgotten:
                await self.manager.persist({**self.record, "PendingFlash": None})
            self.record = {**self.record, "PendingFlash": None}
        self.changed()
        await self.manager.collect_assets()
