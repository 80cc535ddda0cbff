"""The device manager: every board's record and task, pause/run, and the requests of the API.

Boards are keyed by their USB serial (LocalUUID). A sighting of an unknown serial creates a
board that is identified, provisioned (ResinUUID, Name), stored and only then listed; a known
serial gets its old record back. The gateway's target status (Running/Paused) is stored; the
current status turns Paused only once no board task holds a port or is mid-operation.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from picofleet.common.changes import ChangeHub
from picofleet.common.store import Store
from picofleet.firmware.asset_cache import AssetCache, AssetError
from picofleet.firmware.formats import uf2
from picofleet.gateway.boards.board import BlinkOutcome, Board
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.names import board_name
from picofleet.gateway.boards.owner import NoReservations, Reservations, ReservedBoardServer
from picofleet.gateway.boards.record import PORT_IDENTITY, loaded_form, new_record, stored_form
from picofleet.gateway.boards.shared_lock import SharedUpdateLock
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.hookspecs import HOOK_TIME_LIMITS, UF2_WRITE_RATE
from picofleet.gateway.metrics import GatewayMetrics
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardError, BoardType, Sighting
from picofleet.gateway.plugin_manager import Plugins

log = logging.getLogger("picofleet.manager")
T = TypeVar("T")

HOOK_TIMEOUTS = {name: 2 * limit for name, limit in HOOK_TIME_LIMITS.items()}
"""Time limits of the board hooks: twice what the contract (hookspecs.HOOK_TIME_LIMITS) asks, for slow
boards; picofleet_write_uf2 has the image's size at MIN_WRITE_RATE on top."""
MIN_WRITE_RATE = UF2_WRITE_RATE // 2
"""Bytes per second a bootloader drive is allowed to be as slow as (USB full speed is ~1 MB/s)."""
BLINK_WAIT = HOOK_TIMEOUTS["picofleet_blink"] + 5.0
"""Seconds ``blink`` waits for the outcome: the hook's time limit and a few seconds for the board's
task to finish the step it is in."""

RUNNING = "Running"
PAUSED = "Paused"
TARGET_STATUS_KEY = "targetStatus"
DEVICES = "devices"


class KeepFpgaImage(enum.Enum):
    """:meth:`DeviceManager.set_target`'s default ``fpga``: leave ``TargetFpgaImage`` as it is."""

    KEEP = "keep"


class FlashRefused(BoardError):
    """A flash the board must not take now: it is reserved, or (for the fleet's flashes) in local
    mode (the API answers 409)."""


class DeviceManager:
    """Owns the boards of one gateway."""

    def __init__(self, config: GatewayConfig, store: Store, plugins: Plugins):
        self.config = config
        self.store = store
        self.plugins = plugins
        self.board_types: dict[str, BoardType] = plugins.board_types
        self.assets = AssetCache(config.assets_directory, config.assets_max_bytes)
        self.metrics = GatewayMetrics()
        """The gateway's event metrics (gateway/metrics.py), served by ``GET /metrics``."""
        self.boards: dict[str, Board] = {}
        self.target_status = RUNNING
        self.changes: ChangeHub[str] = ChangeHub()
        """What changed, for live watchers (the event stream, the fleet reporter): ``"device:<LocalUUID>"``
        (a board's record: status, progress, firmware, port...), ``"devices"`` (a board listed or
        forgotten), ``"status"`` (pause/run), ``"reservations"`` and ``"evaluations"``."""
        self._keys: dict[str, str] = {}  # sighting key -> serial
        self._executor = ThreadPoolExecutor(max_workers=128, thread_name_prefix="board-io")
        self._timers: set[asyncio.TimerHandle] = set()
        self._update_lock = SharedUpdateLock(self.call_hook, config)
        self._names: set[str] = set()
        self._storing: set[str] = set()  # images stored for flashes being queued right now
        self._background: set[asyncio.Task[None]] = set()
        self.reservations: Reservations = NoReservations()
        """The reservation book (gateway/evaluation/reservations.py), once :meth:`serve_reservations`."""
        self.reserved_boards: ReservedBoardServer[Board] = NoReservations()
        """What serves reserved boards (gateway/evaluation/reserved_board.py)."""
        self.application_uuid: Any = None
        """What every board's ``ApplicationUUID`` says (:meth:`set_application_uuid`): the fleet's
        name once provisioned into a fleet, the dependent app's appId under balena, else ``None``."""
        self.reapply = asyncio.Event()
        """Set when boards need the stored target applied again — a reservation ended, a board left
        local mode or drifted (:meth:`request_reapply`); the fleet sync waits on it."""

    def serve_reservations(
        self, reservations: Reservations, reserved_boards: ReservedBoardServer[Board]
    ) -> None:
        """Hand in the reservation book and what serves reserved boards (gateway/service.py wires
        them before :meth:`start`; without them no board is ever reserved)."""
        self.reservations = reservations
        self.reserved_boards = reserved_boards

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the stored boards (all Offline until seen) and the stored target status."""
        self.target_status = await self.store.get_value(TARGET_STATUS_KEY, RUNNING)
        for stored in await self.store.all(DEVICES):
            record = loaded_form(stored)
            if record["LocalUUID"]:
                self._names.add(record["Name"])
                board = Board(self, record, provisioned=True)
                board.delete_requested = bool(record["DeleteFlag"])  # acknowledged before a crash
                self._add_board(board)
                if record["PendingFlash"]:
                    await self._resume_flash(board)
        log.info("%d known board(s); gateway target status %s", len(self.boards), self.target_status)
        await self.collect_assets()

    async def stop(self) -> None:
        """Stop every board task; each closes its port on the way out (after the reservations stopped)."""
        for timer in self._timers:
            timer.cancel()
        tasks = [board.task for board in self.boards.values() if board.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _add_board(self, board: Board) -> None:
        self.boards[board.serial] = board
        board.task = asyncio.create_task(board.run(), name=f"board:{board.serial}")

    # -- discovery ------------------------------------------------------------------------------
    def on_present(self, sighting: Sighting) -> None:
        """A board node appeared (or was enumerated).

        A node belongs to the board of the same serial. A bootloader drive whose serial names no
        board — or names none at all, as the RP2040 bootrom's does — belongs to the board being
        flashed on the same USB port, or else to the one board last seen on that port.
        """
        board = self.boards.get(sighting.serial) if sighting.serial else None
        if board is None and sighting.mode == BOOTLOADER:
            board = self._on_port(sighting)
        if board is None:
            serial = sighting.serial or f"{PORT_IDENTITY}{sighting.usb_port}"
            board = Board(self, new_record(serial, sighting.board_types[0]), provisioned=False)
            self._add_board(board)
        if sighting.mode == APPLICATION:
            self._forget_port_placeholder(sighting, board)
        if sighting.usb_port:
            self._release_port(sighting.usb_port, board)
        self._keys[sighting.key] = board.serial
        board.seen(sighting)

    def _on_port(self, sighting: Sighting) -> Board | None:
        if not sighting.usb_port:
            return None
        types = sighting.matching_types or sighting.board_types
        on_port = [
            b
            for b in self.boards.values()
            if b.usb_port == sighting.usb_port and b.record["BoardType"] in types
        ]
        # a board being flashed there (its tty's remove may come after the drive's add)
        busy = [b for b in on_port if b.busy and BOOTLOADER not in b.sightings]
        absent = [b for b in on_port if not b.sightings]
        if len(busy) == 1:
            board = busy[0]
        elif not busy and not sighting.serial and len(absent) == 1:
            board = absent[0]
        else:
            return None  # nobody, or more than one candidate: never guess
        log.info(
            "%s: bootloader drive %s (serial %r) matched by its USB port %s",
            board.label,
            sighting.devname,
            sighting.serial,
            sighting.usb_port,
        )
        return board

    def _release_port(self, usb_port: str, owner: Board) -> None:
        """``owner`` is on ``usb_port`` now: no other board may still claim that port."""
        for other in self.boards.values():
            if other is not owner and other.usb_port == usb_port and not other.sightings:
                other.usb_port = ""
                if other.provisioned:
                    task = asyncio.get_running_loop().create_task(other.update(UsbPort=None))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    def _forget_port_placeholder(self, sighting: Sighting, board: Board) -> None:
        """A board known only by its port shows its real serial: the placeholder record goes."""
        placeholder = self.boards.get(f"{PORT_IDENTITY}{sighting.usb_port}")
        if placeholder is not None and placeholder is not board and not placeholder.sightings:
            log.info(
                "%s is %s: forgetting the record made from its bootloader", placeholder.label, board.label
            )
            placeholder.delete_requested = True
            placeholder.wake.set()

    def on_gone(self, key: str) -> None:
        """A board node went away."""
        serial = self._keys.pop(key, None)
        board = self.boards.get(serial) if serial else None
        if board is not None:
            board.gone(key)

    # -- records ------------------------------------------------------------------------------
    async def persist(self, record: dict[str, Any]) -> None:
        """Store one board's record durably."""
        await self.store.upsert(DEVICES, "LocalUUID", stored_form(record))

    async def provision(self, board: Board, board_type: str) -> None:
        """Give a new board its stable identity and store it; from now on it is listed."""
        record = {**board.record, "BoardType": board_type}
        if self.application_uuid is not None:
            record["ApplicationUUID"] = self.application_uuid
        record["Name"] = board_name(record["ResinUUID"], self._names)
        self._names.add(record["Name"])  # reserved before the write: boards provisioned together differ
        try:
            await self.persist(record)
        except BaseException:
            self._names.discard(record["Name"])
            raise
        board.record, board.provisioned = record, True
        self.changes.publish("devices")
        log.info(
            "provisioned %s %s as %s (%s)", board_type, board.serial, record["Name"], record["ResinUUID"]
        )

    async def forget(self, board: Board) -> None:
        """Delete a board's record (ENM DELETE hook); if it is still plugged in it starts anew."""
        async with board.update_lock:  # no update of the board in flight can write it back
            await self.store.remove(DEVICES, "LocalUUID", board.serial)
            board.forgotten = True
        self._names.discard(board.record.get("Name"))
        self.boards.pop(board.serial, None)
        self.changes.publish("devices")
        log.info("deleted %s", board.label)
        if board.sightings:
            fresh = Board(self, new_record(board.serial, str(board.record["BoardType"])), provisioned=False)
            self._add_board(fresh)
            for sighting in board.sightings.values():
                fresh.seen(sighting)

    async def set_application_uuid(self, value: Any) -> None:
        """Set ``ApplicationUUID`` on every board, and on the boards provisioned from now on."""
        self.application_uuid = value
        for board in self.listed():
            await board.update(ApplicationUUID=value)

    async def set_identity(self, board: Board, resin_uuid: str, name: str) -> None:
        """Give a board the ResinUUID and Name another party gave it (the balena supervisor, when
        it registers the board as a dependent device: supervisor_bridge/proxyvisor.py); stored."""
        old_name = board.record.get("Name")
        await board.update(ResinUUID=resin_uuid, Name=name)
        if board.record.get("Name") == name and old_name != name:
            self._names.discard(old_name)
            self._names.add(name)

    def listed(self) -> list[Board]:
        """Provisioned boards, in the order they were provisioned."""
        return [board for board in self.boards.values() if board.provisioned]

    def find(self, uuid: str) -> Board | None:
        """A provisioned board by LocalUUID or ResinUUID."""
        board = self.boards.get(uuid)
        if board is not None and board.provisioned:
            return board
        for board in self.listed():
            if board.record.get("ResinUUID") == uuid:
                return board
        return None

    # -- hooks --------------------------------------------------------------------------------
    async def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Run a (blocking) plugin hook in the board I/O thread pool, within its time limit.

        A hook past its limit is reported as a BoardError; its thread cannot be stopped and is
        left to finish on its own, the board is not waited for.
        """
        hook = getattr(self.plugins.hook, name)
        limit = HOOK_TIMEOUTS[name] + len(kwargs.get("uf2", b"")) / MIN_WRITE_RATE
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                return await loop.run_in_executor(self._executor, functools.partial(hook, **kwargs))
        except BoardError:
            raise
        except TimeoutError:
            raise BoardError(f"{name} did not return within {limit:g} s") from None
        except Exception as error:
            board = kwargs.get("board")
            log.exception("hook %s raised%s", name, f" for board {board.serial}" if board is not None else "")
            raise BoardError(f"{name} failed in a plugin: {type(error).__name__}: {error}") from None

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking function (board or drive I/O) in the board I/O pool, not the shared one."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, *args)
        )

    def wake_later(self, board: Board, delay: float) -> None:
        """Wake a board's task after ``delay`` seconds (back-off without blocking it)."""

        def fire() -> None:
            self._timers.discard(timer)
            board.wake.set()

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    # -- the update lock ------------------------------------------------------------------------
    def updating(self) -> AbstractAsyncContextManager[None]:
        """Hold the platform's update lock (``picofleet_update_lock``) while any board is flashed."""
        return self._update_lock.holding()

    # -- pause / run ----------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """Whether the gateway's target status is Paused."""
        return self.target_status == PAUSED

    @property
    def current_status(self) -> str:
        """Paused only when paused was asked for and no board task holds a port or is busy."""
        if self.paused and not any(board.holding for board in self.boards.values()):
            return PAUSED
        return RUNNING

    async def set_target_status(self, status: str) -> None:
        """Store the new target status, then let every board task act on it."""
        await self.store.set_value(TARGET_STATUS_KEY, status)
        self.target_status = status
        self.changes.publish("status")
        log.info("gateway target status %s", status)
        self._wake_all(self.boards.values())

    @staticmethod
    def _wake_all(boards: Iterable[Board]) -> None:
        for board in boards:
            board.wake.set()

    # -- requests from the API ------------------------------------------------------------------
    async def set_target(
        self,
        board: Board,
        commit: Any,
        environment: Any,
        config: Any,
        fpga: str | KeepFpgaImage | None = KeepFpgaImage.KEEP,
    ) -> None:
        """The ENM device hook (and the fleet's target): record the target commit, environment,
        config and FPGA image (its sha256, or ``None`` for none).

        The supervisor's hook (``PUT /v1/devices/{uuid}``) knows no FPGA images: it passes no
        ``fpga`` and leaves ``TargetFpgaImage`` as the fleet set it (else its PUT would have the
        board's FPGA image erased). Only the fleet sync sets it.
        """
        fields: dict[str, Any] = {
            "TargetCommit": commit,
            "TargetEnvironment": environment or {},
            "TargetConfig": config or {},
        }
        if not isinstance(fpga, KeepFpgaImage):
            fields["TargetFpgaImage"] = fpga
        await board.update(**fields)
        board.wake.set()  # its task brings settings and FPGA image there (gateway/boards/settings.py)

    def request_reapply(self, reason: str) -> None:
        """Ask the fleet sync (gateway/sync.py) to apply the stored target again, now; without a
        fleet nobody waits and nothing happens."""
        log.debug("the fleet's target is to be applied again: %s", reason)
        self.reapply.set()

    def follows_fleet(self, board: Board) -> bool:
        """Whether the board follows a fleet: the gateway runs with ``--fleet`` and the fleet gave
        the board a target commit (``TargetCommit`` not null)."""
        return self.config.fleet_url is not None and board.record.get("TargetCommit") is not None

    def local_mode_refusal(self, board: Board) -> str | None:
        """Why an operator's flash of ``board`` needs local mode (``?local_mode=true``), or ``None``:
        it follows a fleet and is not in local mode already."""
        if board.record.get("LocalMode") or not self.follows_fleet(board):
            return None
        return (
            f"device {board.serial} follows the fleet (target commit {board.record['TargetCommit']}):"
            " flash it in local mode (local_mode=true, picofleet flash --local-mode) to keep the fleet"
            " from flashing it back"
        )

    async def set_local_mode(self, board: Board, local_mode: bool) -> None:
        """Put the board in local mode (the fleet sync leaves it alone) or out of it: then the sync
        applies the stored target to it at once."""
        await board.update(LocalMode=local_mode)
        log.info("%s: local mode %s", board.label, "on" if local_mode else "off")
        if not local_mode:
            self.request_reapply(f"{board.label} left local mode")

    async def request_restart(self, board: Board) -> None:
        """Set the restart flag (stored); the board task restarts the board when it can."""
        await board.update(RestartFlag=True)
        board.broken = False  # a new request: try again
        board.wake.set()

    async def request_delete(self, board: Board) -> None:
        """Set the delete flag (stored); the board task closes the port and forgets the board."""
        await board.update(DeleteFlag=True)
        board.delete_requested = True
        board.wake.set()

    def request_blink(self, board: Board) -> asyncio.Future[BlinkOutcome]:
        """Ask the board task to blink the board's LED; the future is told the outcome (never an
        exception, so callers that do not wait may drop it)."""
        outcome: asyncio.Future[BlinkOutcome] = asyncio.get_running_loop().create_future()
        board.blink_waiters.append(outcome)
        board.pending_blink = True
        board.wake.set()
        return outcome

    async def blink(self, board: Board) -> BlinkOutcome:
        """Blink the board's LED and say how it went, waiting at most BLINK_WAIT seconds.

        Past the wait the request is withdrawn (if no one else waits for it) and the outcome is
        ``"timeout"``: the board's task was busy with another step the whole time.
        """
        outcome = self.request_blink(board)
        try:
            async with asyncio.timeout(BLINK_WAIT):
                return await outcome  # cancelled with this wait: settle_blink skips it
        except TimeoutError:
            if all(waiter.done() for waiter in board.blink_waiters):
                board.blink_waiters.clear()
                board.pending_blink = False
            return BlinkOutcome("timeout", f"the board did not get to blink within {BLINK_WAIT:g} s")

    async def request_flash(
        self, board: Board, job: FlashJob, *, local_mode: bool = False, from_fleet: bool = False
    ) -> None:
        """Queue a flash; a previous job not yet started is replaced.

        ``local_mode``: the operator's flash puts the board in local mode (stored with the job).
        ``from_fleet``: the fleet sync's flash, refused (:class:`FlashRefused`) for a board in local
        mode — checked with the job's storing, so an operator's flash in local mode is never
        replaced by the fleet's. An operator's flash without ``local_mode`` of a board that follows a
        fleet (:meth:`local_mode_refusal`) is refused there too: the fleet may have given the board
        its target while the upload was read.

        A reserved board (or one being reserved) only takes its evaluation firmware: any other
        job raises :class:`FlashRefused`. From that check on the board counts as being flashed
        (``flash_requests``), so a reservation cannot take it meanwhile (gateway/evaluation/reservations.py).
        The image goes into the asset cache and the job into the record first, so a flash cut
        short by a power loss is done again at the next start (the board waits in its bootloader).
        """
        if not job.evaluation:
            refusal = self.reservations.flash_refusal(board.serial)
            if refusal is not None:
                raise FlashRefused(refusal)
        elif self.reservations.of(board.serial) is None:
            raise FlashRefused("the reservation ended before its evaluation firmware was flashed")
        board.flash_requests += 1
        try:
            try:
                await asyncio.to_thread(self.assets.put, job.uf2, job.sha256)
            except OSError as error:
                raise BoardError(f"cannot store the image in the asset cache: {error.strerror}") from None
            self._storing.add(job.sha256)
            try:
                async with board.update_lock:
                    if from_fleet and board.record.get("LocalMode"):
                        raise FlashRefused(f"device {board.serial} is in local mode")
                    if not (from_fleet or local_mode or job.evaluation):
                        refusal = self.local_mode_refusal(board)
                        if refusal is not None:
                            raise FlashRefused(refusal)
                    fields: dict[str, Any] = {"PendingFlash": job.stored()}
                    if local_mode:
                        fields["LocalMode"] = True
                    if board.provisioned and not board.forgotten:
                        await self.persist({**board.record, **fields})
                    board.record = {**board.record, **fields}
                    board.pending_flash = job
                    board.changed()
            finally:
                self._storing.discard(job.sha256)
        finally:
            board.flash_requests -= 1
        board.wake.set()

    def referenced_assets(self) -> set[str]:
        """The assets some board still needs: its pending flash (stored or being queued), the
        image it runs (``RunningImage``: what a rollback returns to) and its target FPGA image."""
        referenced = set(self._storing)
        for board in self.boards.values():
            running = board.record.get("RunningImage")
            if isinstance(running, dict) and running.get("sha256"):
                referenced.add(str(running["sha256"]))
            if board.pending_flash is not None:
                referenced.add(board.pending_flash.sha256)
            if board.record.get("TargetFpgaImage"):
                referenced.add(str(board.record["TargetFpgaImage"]))  # its FPGA image, while targeted
            if isinstance(board.record.get("PendingFlash"), dict):
                referenced.add(str(board.record["PendingFlash"].get("sha256")))
        return referenced

    async def collect_assets(self) -> None:
        """Garbage-collect the asset cache (docs/assets.md), in a worker thread."""
        try:
            await asyncio.to_thread(self.assets.collect, self.referenced_assets())
        except OSError as error:
            log.warning("asset cache collection failed: %s", error)

    async def _resume_flash(self, board: Board) -> None:
        """At start: requeue the flash a board's record says was pending.

        A pending release that the record says failed (``FailedRelease``, same commit, no newer
        retry) was being rolled back when the gateway stopped: the rollback is resumed (its
        ``RunningImage``), not the release that did not run.
        """
        pending = board.record["PendingFlash"]
        failed, running = board.record.get("FailedRelease"), board.record.get("RunningImage")
        if (
            isinstance(pending, dict)
            and isinstance(failed, dict)
            and isinstance(running, dict)
            and running.get("sha256")
            and failed.get("commit") == pending.get("commit")
            and int(pending.get("retry") or 0) <= int(failed.get("retry") or 0)
        ):
            log.info(
                "%s: the gateway stopped while release %s was rolled back: flashing %s back",
                board.label,
                failed.get("commit"),
                running.get("commit") or running["sha256"][:12],
            )
            pending = {key: running.get(key) for key in ("sha256", "commit", "version")}
        try:
            board.pending_flash = await asyncio.to_thread(FlashJob.from_stored, self.assets, pending)
        except (AssetError, uf2.UF2Error) as error:
            log.error("%s: the flash pending before the restart cannot be resumed: %s", board.label, error)
            await board.update(PendingFlash=None, StatusReason=f"pending flash dropped: {error}")
            return
        log.info("%s: resuming the flash pending before the restart (%s)", board.label, pending.get("sha256"))
        board.wake.set()
