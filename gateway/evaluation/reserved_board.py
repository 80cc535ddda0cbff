"""A reserved board: installing its evaluation firmware, then serving its client's evaluations.

A board's task (gateway/boards/board.py) calls :meth:`ReservedBoards.serve` while its board is
reserved and its port is open (``manager.reserved_boards``, a Protocol of gateway/boards/owner.py).
A board not yet running the reservation's firmware gets it: its UF2 is flashed, then its files
are copied, each stage once per reservation (each makes the board's Commit null, so the fleet
sync re-applies the target once the board is released). A board running it shows ``Reserved``,
tells the book it is ready and runs its evaluations (gateway/evaluation/scheduler.py).
"""

from __future__ import annotations

import asyncio
import logging

from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.manager import DeviceManager, FlashRefused
from picofleet.gateway.boards.record import Status
from picofleet.gateway.evaluation.evaluation_firmware import evaluation_firmware, evaluation_job
from picofleet.gateway.evaluation.reservations import Reservation, ReservationBook
from picofleet.gateway.evaluation.scheduler import EvaluationScheduler
from picofleet.gateway.models import BoardError

log = logging.getLogger("picofleet.board")

FLASHED, INSTALLED = "flashed", "installed"


class ReservedBoards:
    """Prepares and serves the reserved boards of one gateway (``manager.reserved_boards``)."""

    def __init__(
        self, manager: DeviceManager, book: ReservationBook, scheduler: EvaluationScheduler[Board]
    ) -> None:
        self.manager = manager
        self.book = book
        self.scheduler = scheduler
        self._prepared: dict[str, tuple[tuple[str, float], str]] = {}  # serial -> (reservation, stage done)

    async def serve(self, board: Board) -> None:
        """A reserved board with its port open: prepare it, or serve its client's evaluations."""
        reservation = self.book.of(board.serial)
        if reservation is None:
            return  # it ended since the board's task looked: the end woke the task, which looks again
        running = str(board.record.get("FirmwareVersion") or "")
        if running != reservation.firmware and not running.startswith(f"{reservation.firmware} "):
            await self.prepare(board, reservation, running)
            return
        await self.show_reserved(board, reservation)
        board.evaluation_ready = True
        await self.book.set_ready(board.serial, True)
        await self.scheduler.serve(board)
        if self.book.of(board.serial) is reservation:
            await self.show_reserved(board, reservation)  # the scheduler may have shown Evaluating

    @staticmethod
    async def show_reserved(board: Board, reservation: Reservation) -> None:
        """Status Reserved, naming the client."""
        reason = f"reserved by {reservation.name} for {reservation.kind} evaluations"
        if board.record["Status"] != Status.RESERVED.value or board.record.get("StatusReason") != reason:
            await board.update(Status=Status.RESERVED.value, StatusReason=reason)

    async def prepare(self, board: Board, reservation: Reservation, running: str) -> None:
        """Install the evaluation firmware: flash its UF2, then copy its files (each makes Commit null).

        Each stage is done once per reservation; a board that still does not run the firmware
        afterwards fails (and its reservation ends with the reason).
        """
        key = (reservation.name, reservation.created_at)
        prepared = self._prepared.get(board.serial)
        done = prepared[1] if prepared is not None and prepared[0] == key else None
        firmware = await evaluation_firmware(self.manager, board.ref(board.port_sighting), reservation.kind)
        if firmware is None:
            raise BoardError(
                f"no plugin provides {reservation.kind} evaluation firmware for a {board.record['BoardType']}"
            )
        reserved = f"reserved by {reservation.name} for {reservation.kind} evaluations"
        if firmware.uf2 is not None and done is None:
            job = await asyncio.to_thread(evaluation_job, firmware.uf2)
            if self.book.of(board.serial) is not reservation:
                return  # it ended meanwhile: the board keeps its fleet firmware
            self._prepared[board.serial] = (key, FLASHED)
            log.info("%s: %s: flashing the UF2 of %s", board.label, reserved, firmware.name)
            # the fleet's firmware is gone: a null Commit makes the sync re-apply the target later
            await board.update(Commit=None, StatusReason=f"{reserved}: installing {firmware.name}")
            try:
                await self.manager.request_flash(board, job)
            except FlashRefused:  # the reservation ended meanwhile: Commit is null, so the sync
                self.manager.request_reapply(f"{board.label} was released")  # re-applies the target
            return
        if firmware.files and done != INSTALLED:
            if self.book.of(board.serial) is not reservation:
                return  # it ended meanwhile: the board keeps its fleet firmware
            self._prepared[board.serial] = (key, INSTALLED)
            log.info("%s: %s: copying the files of %s", board.label, reserved, firmware.name)
            # they replace the fleet's firmware too: a null Commit makes the sync re-apply the target
            await board.update(
                Commit=None,
                Status=Status.INSTALLING.value,
                StatusReason=f"{reserved}: copying {', '.join(firmware.files)}",
            )
            copied = await board.call(
                "picofleet_install_files",
                board=board.ref(),
                port=board.port,
                files=firmware.files,
            )
            if copied is None:
                raise BoardError("no plugin can copy files onto this board (picofleet_install_files)")
            await board.wait_for_reset()
            board.wake.set()  # reopened and identified again
            return
        raise BoardError(
            f"the evaluation firmware did not start: the board runs "
            f"{running or 'a firmware that does not say'}, not {reservation.firmware}"
        )
