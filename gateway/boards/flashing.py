"""Flashing a board through its UF2 bootloader, the same way for every board type.

Steps, each with a timeout and a reason when it fails: check the image's families against the
board type; ask the firmware to enter the bootloader (``picofleet_enter_bootloader``); wait for
the bootloader drive of *this* board (same serial) to appear; check INFO_UF2.TXT's Board-ID;
write the UF2 (``picofleet_write_uf2``) with progress; wait for the board to come back with its
application firmware; identify it and check the version the image promised. A failed attempt
is retried ENM_UPDATE_RETRIES times with exponential back-off; after the last one the board is
Broken with the reason.

A board whose bootloader drive comes back after the write did not boot the image (a bootrom
refuses an image it cannot boot and stays in BOOTSEL): that attempt fails at once and is not
retried (:class:`BackInBootloader`).

**Rollback** (docs/states.md): a release (a job with a commit, not the evaluation firmware) that was
written but did not come back running (:class:`ImageNotRunning`, after its retries) is recorded
in ``FailedRelease`` and the board is flashed back to ``RunningImage`` — the last image the gateway
flashed that booted, kept in the asset cache (``DeviceManager.referenced_assets``) — and ends
Idle on its previous commit. Without a ``RunningImage`` (or with its asset gone) the board is
Broken and the reason says there was nothing to return to. A flash that boots sets
``RunningImage``, and a release that boots clears ``FailedRelease``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from picofleet.firmware.asset_cache import AssetCache, AssetError
from picofleet.firmware.formats import uf2
from picofleet.gateway import bootloader_drive
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.record import Status
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.metrics import GatewayMetrics
from picofleet.gateway.models import APPLICATION, BOOTLOADER, BoardError, BoardRef, BoardType, Sighting

log = logging.getLogger("picofleet.board")
T = TypeVar("T")

PRESENCE_TIMEOUT = 10.0
BOOTLOADER_TIMEOUT = 10.0
BOOT_TIMEOUT = 15.0
INFO_TIMEOUT = 10.0
RETRY_BASE_DELAY = 0.5


class ImageNotRunning(BoardError):
    """The image was written but the board did not come back running it (within BOOT_TIMEOUT, with
    the version it promised): what a release's rollback answers."""

    retried = True
    """Whether another attempt may help (it may: a write cut short, a slow boot)."""


class BackInBootloader(ImageNotRunning):
    """The bootloader drive came back after the write: the bootrom did not boot the image (not
    retried: the same image would not boot either)."""

    retried = False


class FlashingHost(Protocol):
    """What flashing asks of the owner of the boards (gateway/boards/manager.py's DeviceManager)."""

    @property
    def config(self) -> GatewayConfig:
        """The gateway's settings (``update_retries``)."""
        ...

    @property
    def board_types(self) -> Mapping[str, BoardType]:
        """The known board types, by name."""
        ...

    @property
    def assets(self) -> AssetCache:
        """The asset cache: where a rollback finds the image the board ran before."""
        ...

    def updating(self) -> AbstractAsyncContextManager[None]:
        """Hold the platform's update lock while the board is flashed."""
        ...

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking drive I/O in the board I/O thread pool."""
        ...

    @property
    def metrics(self) -> GatewayMetrics:
        """The gateway's event metrics: flashes started and finished, their durations."""
        ...


class FlashTarget(Protocol):
    """What flashing asks of the board it flashes (gateway/boards/board.py's Board, the caller)."""

    @property
    def manager(self) -> FlashingHost:
        """The board's owner."""
        ...

    @property
    def label(self) -> str:
        """How log lines name the board."""
        ...

    @property
    def record(self) -> Mapping[str, Any]:
        """The board's record (``BoardType``, ``FirmwareVersion``, ``Commit``)."""
        ...

    @property
    def sightings(self) -> Mapping[str, Sighting]:
        """What discovery sees of the board now, by mode."""
        ...

    @property
    def port(self) -> Any:
        """The board's open serial port, or ``None``."""
        ...

    @property
    def bootloader_arrivals(self) -> int:
        """How many times a bootloader drive of the board appeared (one that was not there before)."""
        ...

    def ref(self, sighting: Sighting | None = None) -> BoardRef:
        """The :class:`BoardRef` hooks receive."""
        ...

    async def update(self, **fields: Any) -> None:
        """Change record fields."""
        ...

    def set_progress(self, done: int, total: int) -> None:
        """Show the flash's live progress."""
        ...

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after presence changes; ``False`` on timeout."""
        ...

    async def call(self, hook: str, **kwargs: Any) -> Any:
        """Call a blocking plugin hook for the board."""
        ...

    async def open_and_identify(self, app: Sighting) -> bool:
        """Open the application port and identify the firmware; ``False`` if it cannot be opened."""
        ...

    async def close_port(self) -> None:
        """Close the board's port if it is open."""
        ...


def check_families(families: frozenset[int], board_type: BoardType) -> None:
    """Raise BoardError unless the board type's bootloader accepts every family of the image."""
    refused = sorted(family for family in families if family not in board_type.uf2_families)
    if refused or not families:
        accepted = ", ".join(uf2.family_name(family) for family in board_type.uf2_families)
        got = ", ".join(uf2.family_name(family) for family in sorted(families)) or "none"
        raise BoardError(f"UF2 family {got} cannot run on a {board_type.name} (accepted: {accepted})")


def check_image(parsed: uf2.UF2Image, board_type: BoardType) -> None:
    """Raise BoardError (the reason, naming the block) unless the board type's bootrom would keep
    ``parsed`` in its flash: families it accepts (:func:`check_families`), every block inside the
    family's flash range (``uf2.FLASH_RANGES``: a block for SRAM would run once and be lost at the
    next reset) and 256-byte payloads (the RP2 bootroms ignore other blocks)."""
    check_families(parsed.families, board_type)
    outside = uf2.outside_flash(parsed)
    if outside is not None:
        raise BoardError(f"{outside}: a {board_type.name} would not keep it across a reset")
    if not parsed.all_payloads_256:
        raise BoardError("the RP2 bootroms only accept UF2 blocks with 256-byte payloads")


def check_bootloader_info(drive: str, board_type: BoardType) -> None:
    """Check the drive's INFO_UF2.TXT names the chip we expect; blocking I/O, run it in a thread.

    ``drive`` is a directory (a mounted or virtual drive) or a block device (or an image file
    standing in for one), whose FAT is read without mounting it (gateway/bootloader_drive.py).
    A raw drive that passes is marked as checked: the built-in ``picofleet_write_uf2`` writes a
    block device only after such a check, and checks again right before writing.
    """
    info = bootloader_drive.read_info_uf2(drive)
    board_ids = bootloader_drive.board_ids(info)
    expected = board_type.bootloader_board_id
    if board_ids != [expected]:
        found = board_ids[0] if board_ids else "no Board-ID"
        raise BoardError(f"its bootloader says {found!r}, a {board_type.name} bootloader says {expected!r}")
    if not os.path.isdir(drive):
        bootloader_drive.mark_checked(drive, expected)


def is_release(job: FlashJob) -> bool:
    """Whether a failed ``job`` is rolled back: it carries a commit and is not the evaluation firmware."""
    return job.commit is not None and not job.evaluation


def now_iso() -> str:
    """The time now, UTC, as ``FailedRelease.time`` shows it (``2026-01-31T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def flash_board(board: FlashTarget, job: FlashJob) -> None:
    """Flash ``job`` onto ``board`` with retries; a release that does not run is rolled back.

    Raises BoardError after the last failed attempt (or when the rollback could not be done: the
    reason says why); returns normally once the board runs the image, or runs its previous image
    again after a rollback (``FailedRelease`` then says what failed). Counted in
    ``board.manager.metrics`` (a flash the gateway's stop cancels is neither finished nor failed).
    """
    metrics = board.manager.metrics
    board_type = str(board.record.get("BoardType") or "unknown")
    metrics.flashes_started.labels(board_type).inc()
    started = time.monotonic()
    outcome = "failed"
    try:
        async with board.manager.updating():
            try:
                await _flash_with_retries(board, job)
                outcome = "succeeded"
            except ImageNotRunning as error:
                if not is_release(job):
                    raise
                await _roll_back(board, job, error)
                outcome = "rolled_back"
    except asyncio.CancelledError:
        outcome = ""
        raise
    finally:
        if outcome:
            metrics.flash_finished(board_type, outcome, time.monotonic() - started)


async def _roll_back(board: FlashTarget, job: FlashJob, error: ImageNotRunning) -> None:
    """Record the failed release and flash the board back to its ``RunningImage``."""
    assert job.commit is not None
    failed: dict[str, Any] = {"commit": job.commit, "reason": str(error), "time": now_iso()}
    if job.retry:
        failed["retry"] = job.retry
    running = board.record.get("RunningImage")
    sha256 = str(running.get("sha256") or "") if isinstance(running, dict) else ""
    if not sha256 or sha256 == job.sha256:
        await board.update(FailedRelease=failed)
        raise BoardError(
            f"{error}; there was no earlier image to return to"
            " (the gateway never flashed it an image that booted)"
            if not sha256
            else f"{error}; the image it ran before is this one: nothing to return to"
        )
    assert isinstance(running, dict)
    try:
        back = await board.manager.run_blocking(FlashJob.from_stored, board.manager.assets, running)
    except (AssetError, uf2.UF2Error) as missing:
        await board.update(FailedRelease=failed)
        raise BoardError(
            f"{error}; its previous image {sha256[:12]} cannot be read from the asset cache: {missing}"
        ) from None
    previous = running.get("commit") or (f"version {running['version']}" if running.get("version") else None)
    previous = previous or f"image {sha256[:12]}"
    log.warning(
        "%s: release %s did not run (%s); flashing it back to %s", board.label, job.commit, error, previous
    )
    await board.update(
        FailedRelease=failed, StatusReason=f"release {job.commit} did not run; returning to {previous}"
    )
    try:
        await _flash_with_retries(
            board, back, rollback=f"rolled back to {previous}: release {job.commit} did not run: {error}"
        )
    except BoardError as again:
        raise BoardError(f"{error}; flashing it back to {previous} failed too: {again}") from None
    log.info("%s: rolled back to %s", board.label, previous)


async def _flash_with_retries(board: FlashTarget, job: FlashJob, *, rollback: str | None = None) -> None:
    attempts = 1 + board.manager.config.update_retries
    for attempt in range(1, attempts + 1):
        try:
            await _flash_once(board, job, rollback=rollback)
            return
        except BoardError as error:
            retried = getattr(error, "retried", True)
            if attempt == attempts or not retried:
                final = f"flash failed after {attempt} attempt(s): {error}"
                raise (
                    type(error)(final) if isinstance(error, ImageNotRunning) else BoardError(final)
                ) from None
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            log.warning(
                "%s: flash attempt %d of %d failed (%s); retrying in %g s",
                board.label,
                attempt,
                attempts,
                error,
                delay,
            )
            await board.update(StatusReason=f"attempt {attempt} failed: {error}")
            await asyncio.sleep(delay)


async def _flash_once(board: FlashTarget, job: FlashJob, *, rollback: str | None = None) -> None:
    """One attempt at flashing ``job``; ``rollback`` (a flash back to the previous image) is the
    StatusReason shown in the same update that shows the board Idle again, so no one sees it Idle
    on the old commit without saying why."""
    board_type = board.manager.board_types[str(board.record["BoardType"])]
    check_families(job.families, board_type)
    if not board.sightings and not await board.wait_for(lambda: bool(board.sightings), PRESENCE_TIMEOUT):
        raise BoardError(f"the board is not plugged in (waited {PRESENCE_TIMEOUT:g} s)")

    if BOOTLOADER not in board.sightings:
        app = board.sightings[APPLICATION]
        await board.update(Status=Status.INSTALLING.value)
        if board.port is None and not await board.open_and_identify(app):
            raise BoardError("cannot open its serial port to ask for the bootloader")
        await board.call("picofleet_enter_bootloader", board=board.ref(app), port=board.port)
        await board.close_port()
        if not await board.wait_for(lambda: BOOTLOADER in board.sightings, BOOTLOADER_TIMEOUT):
            raise BoardError(f"did not enter its UF2 bootloader within {BOOTLOADER_TIMEOUT:g} s")

    bootloader = board.sightings[BOOTLOADER]
    arrivals = board.bootloader_arrivals
    try:
        async with asyncio.timeout(INFO_TIMEOUT):  # a USB drive can stall
            await board.manager.run_blocking(check_bootloader_info, bootloader.devname, board_type)
    except TimeoutError:
        raise BoardError(
            f"reading INFO_UF2.TXT on {bootloader.devname} took longer than {INFO_TIMEOUT:g} s"
        ) from None
    await board.update(Status=Status.FLASHING.value)
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(board.set_progress, done, total)

    await board.call(
        "picofleet_write_uf2",
        board=board.ref(bootloader),
        drive=bootloader.devname,
        uf2=job.uf2,
        progress=progress,
    )
    await board.update(Status=Status.STARTING.value)

    def settled() -> bool:
        app_back = APPLICATION in board.sightings and BOOTLOADER not in board.sightings
        return app_back or board.bootloader_arrivals > arrivals

    if not await board.wait_for(settled, BOOT_TIMEOUT):
        raise ImageNotRunning(f"did not come back with its new firmware within {BOOT_TIMEOUT:g} s")
    if board.bootloader_arrivals > arrivals:
        raise BackInBootloader("came back in its UF2 bootloader: its bootrom did not boot the image")
    if not await _open_when_back(board):
        raise ImageNotRunning("came back with its new firmware but its serial port cannot be opened")
    running = board.record.get("FirmwareVersion") or "unknown firmware"
    if job.version is not None and not running.endswith(f" {job.version}"):
        raise ImageNotRunning(f"came back running {running}, expected version {job.version}")
    done: dict[str, Any] = {"Status": Status.IDLE.value, "Commit": job.commit}
    if rollback is not None:
        done["StatusReason"] = rollback
    if not job.evaluation:
        done["RunningImage"] = {"sha256": job.sha256, "commit": job.commit, "version": job.version}
    failed = board.record.get("FailedRelease")
    if (
        not rollback
        and job.commit is not None
        and job.commit in (board.record.get("TargetCommit"), (failed or {}).get("commit"))
    ):
        # the board's target (a new release, a retry) runs: nothing failed any more. Another commit
        # (the previous one, flashed back by a rollback resumed after a restart) leaves it recorded.
        done["FailedRelease"] = None
    await board.update(**done)


async def _open_when_back(board: FlashTarget) -> bool:
    """Open the port of the board back from its bootloader, retrying a passing failure (a
    ModemManager probing the new port, udev still applying permissions) until BOOT_TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
    while True:
        app = board.sightings.get(APPLICATION)
        if app is not None and await board.open_and_identify(app):
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.5)
