"""The evaluation scheduler: bitstreams counted on reserved boards.

An evaluation (``POST /v1/evaluations``) is cut into *units*: one bitstream on one board.
Mode ``each`` pins a unit to every listed board; mode ``any`` leaves one unit per bitstream in
a queue of its client's, for whichever of the listed boards (default: the client's) is free
(the queues, the results and the watch over lost boards: gateway/evaluation/queues.py).

Each reserved, ready board's task calls :meth:`EvaluationScheduler.serve` (through
gateway/evaluation/reserved_board.py), which runs units one after the other over the board's
open port (firmware/host/pulsecount.py):

* it takes the board's pinned units first, then its client's ``any`` units, preferring
  bitstreams the board already holds;
* while one unit counts, the next unit's bitstream is sent (``load``), so a board spends its
  time configuring and counting, not waiting for transfers; a bitstream the board holds is never
  sent again (the scheduler mirrors the board's slots, refreshed from ``status`` after a
  (re)connect);
* it returns between units once ``board.wake`` is set (pause, unplug, reservation end...), or
  when nothing is left for the board; new work wakes a board that is not serving.

Every unit ends exactly once: a result, or an error saying why; a late answer from a board given
up is dropped. A board that stops answering (no answer by window + transfer +
:data:`ANSWER_MARGIN`) is restarted, and its unit goes back to the queue (mode ``any``) or fails
(mode ``each``). A board whose port fails puts its unit back (it was not counted); the units
pinned to a board fail once its reservation ended, or once it stayed offline or Broken for
:data:`LOST_GRACE` s; ``any`` units fail when none of the boards they may run on is left. Boards
hold the update lock (``manager.updating()``) while they run evaluations.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic

from picofleet.common.changes import ChangeHub
from picofleet.firmware.asset_cache import AssetError
from picofleet.firmware.host.errors import FirmwareError, NoAnswer, PortLost
from picofleet.firmware.host.pulsecount import PulseCountBoard
from picofleet.gateway.boards.record import Status
from picofleet.gateway.evaluation.bitstream_store import BitstreamStore
from picofleet.gateway.evaluation.board_session import BoardLost, BoardSession, BoardStuck, refusal
from picofleet.gateway.evaluation.interfaces import B, BoardKeeper, ReservationLookup
from picofleet.gateway.evaluation.jobs import DEFAULT_ARGS, Evaluation, EvaluationRefused, Unit
from picofleet.gateway.evaluation.queues import EvaluationQueues
from picofleet.gateway.metrics import GatewayMetrics
from picofleet.gateway.models import APPLICATION, BoardError

__all__ = ["EvaluationRefused", "EvaluationScheduler"]

log = logging.getLogger("picofleet.evaluations")

ANSWER_MARGIN = 30.0
"""Seconds a board may take beyond the window to answer (configure; a simulated circuit's run)."""
IDENTIFY_TIMEOUT = 5.0
LOAD_TIMEOUT = 10.0
LOAD_RATE = 20_000
"""Bytes per second the slowest board is allowed to take a bitstream at (plus LOAD_TIMEOUT)."""
WAIT_SLICE = 1.0
"""A result is waited for in slices this long, to notice a board that went away meanwhile."""


class EvaluationScheduler(Generic[B]):
    """Queued evaluation work (``queues``) and the boards doing it.

    ``manager`` is the device manager and ``reservations`` the reservation book, as far as the
    Protocols of gateway/evaluation/interfaces.py say; ``changes`` is where ``"evaluations"`` is
    published when an evaluation is queued or makes progress (the device manager's ``changes``).
    """

    def __init__(
        self,
        manager: BoardKeeper[B],
        reservations: ReservationLookup,
        metrics: GatewayMetrics | None = None,
        changes: ChangeHub[str] | None = None,
    ) -> None:
        self.manager = manager
        self.queues: EvaluationQueues[B] = EvaluationQueues(manager, reservations, metrics, changes)
        self.connect: Callable[[Any, Callable[[str, str], None]], Any] = PulseCountBoard
        """Makes the firmware client of an open port (a fake in unit tests)."""
        self.answer_margin = ANSWER_MARGIN
        self._sessions: dict[str, BoardSession] = {}

    @property
    def bitstreams(self) -> BitstreamStore:
        """The uploaded bitstreams (gateway/evaluation/bitstream_store.py)."""
        return self.queues.bitstreams

    @property
    def evaluations(self) -> dict[str, Evaluation]:
        """The evaluations by id: running ones, and the newest finished ones."""
        return self.queues.evaluations

    @property
    def changes(self) -> ChangeHub[str]:
        """Where ``"evaluations"`` is published (see the class docstring)."""
        return self.queues.changes

    def submit(
        self,
        name: str,
        bitstreams: Sequence[tuple[str, str | None]],
        mode: str,
        serials: list[str] | None = None,
        args: dict[str, int] | None = None,
    ) -> Evaluation:
        """Queue an evaluation (:meth:`EvaluationQueues.submit`; raises :class:`EvaluationRefused`)."""
        return self.queues.submit(name, bitstreams, mode, serials, args)

    def cancel(self, evaluation: Evaluation, reason: str) -> None:
        """End the units of ``evaluation`` not started yet with ``reason``."""
        self.queues.cancel(evaluation, reason)

    async def stop(self) -> None:
        """Fail what is still queued (the gateway stops)."""
        await self.queues.stop()

    # -- serving a board ----------------------------------------------------------------------------
    async def serve(self, board: B) -> None:
        """Run queued work on a reserved, ready board until none is left or ``board.wake`` is set."""
        if self.queues.stopped or board.serial in self.queues.serving or board.port is None:
            return
        if not self.queues.has_work(board):
            return
        self.queues.serving.add(board.serial)
        try:
            await board.update(
                Status=Status.EVALUATING.value, StatusReason=f"evaluating for {self.queues.client_of(board)}"
            )
            async with self.manager.updating():
                await self._serve(board)
        finally:
            self.queues.serving.discard(board.serial)

    async def _serve(self, board: B) -> None:
        current: Unit | None = None
        try:
            try:
                session = await self._session(board)
            except FirmwareError as error:
                raise BoardError(f"the evaluation firmware does not answer: {refusal(error)}") from None
            current = self.queues.claim(board, session)
            while current is not None:
                await self._run_unit(board, session, current)
                current = self.queues.upcoming.pop(board.serial, None)
                if board.wake.is_set() or self.queues.stopped:
                    return  # the finally puts the unit claimed next back
                current = current or self.queues.claim(board, session)
            self.queues.serving.discard(board.serial)  # before any await: new work now wakes the board
        except BoardStuck as error:
            self._sessions.pop(board.serial, None)
            reason = f"board {board.serial} did not answer: {error}; it is restarted"
            log.warning("%s: %s", board.label, reason)
            if current is not None:
                self.queues.give_up(current, board, reason)
            current = None
            await self.manager.request_restart(board)
        except BoardLost as error:
            self._sessions.pop(board.serial, None)
            reason = f"board {board.serial} was lost: {error}"
            log.warning("%s: %s", board.label, reason)
            # not counted: back in the queue; pinned units fail if the board stays away (LOST_GRACE)
            if current is not None:
                self.queues.give_up(current, board, reason, retry_pinned=True)
            current = None
            await board.close_port()
        except FirmwareError as error:  # refused outside a unit (re-reading its slots): the board fails
            self._sessions.pop(board.serial, None)
            raise BoardError(str(error)) from error
        except BaseException:
            self._sessions.pop(board.serial, None)
            raise
        finally:
            for unit in (current, self.queues.upcoming.pop(board.serial, None)):
                if unit is not None and not unit.done and unit.running_on == board.serial:
                    self.queues.requeue_untried(unit)

    async def _session(self, board: B) -> BoardSession:
        """The session of the board's open port; a new port is identified and its slots read."""
        session = self._sessions.get(board.serial)
        if session is not None and session.port is board.port:
            return session
        port = board.port

        def on_log(level: str, text: str) -> None:
            log.info("%s: board log (%s): %s", board.label, level, text)

        def open_session() -> BoardSession:
            client = self.connect(port, on_log)
            identity = client.identify(timeout=IDENTIFY_TIMEOUT)
            status = client.status(timeout=IDENTIFY_TIMEOUT)
            return BoardSession(
                port=port,
                client=client,
                slots=int(identity.get("slots") or 1),
                max_bitstream=int(identity.get("max_bitstream") or 0),
                loaded=OrderedDict.fromkeys(status.get("loaded") or []),
                programmed=status.get("programmed"),
            )

        session = await self._blocking(open_session)
        self._sessions[board.serial] = session
        log.info(
            "%s: evaluation session (%d slot(s), holding %d bitstream(s))",
            board.label,
            session.slots,
            len(session.loaded),
        )
        return session

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking firmware call; its NoAnswer is BoardStuck, its PortLost BoardLost."""
        try:
            return await self.manager.run_blocking(function, *args)
        except PortLost as error:
            raise BoardLost(str(error)) from None
        except NoAnswer as error:
            raise BoardStuck(str(error)) from None

    def _args_for(self, unit: Unit, board: B) -> dict[str, int]:
        """The unit's evaluation arguments: the request's, else the reservation's, else defaults."""
        reservation = self.queues.reservations.of(board.serial)  # its args were checked at reserve
        return {**DEFAULT_ARGS, **(reservation.args if reservation else {}), **unit.evaluation.args}

    async def _ensure_loaded(self, board: B, session: BoardSession, unit: Unit, keep: str | None) -> None:
        """Send the unit's bitstream unless the board holds it; FirmwareError when it refuses it."""
        if session.holds(unit.sha256):
            return
        try:
            data = await self.bitstreams.get(unit.sha256)
        except (AssetError, OSError) as error:
            raise FirmwareError(f"the gateway lost the bitstream: {error}") from None
        if session.max_bitstream and len(data) > session.max_bitstream:
            raise FirmwareError(
                f"the bitstream is {len(data)} bytes; the board holds at most {session.max_bitstream}"
            )
        timeout = LOAD_TIMEOUT + len(data) / LOAD_RATE
        await self._blocking(lambda: session.client.load(unit.sha256, data, timeout=timeout))
        session.note_loaded(unit.sha256, keep)

    async def _run_unit(self, board: B, session: BoardSession, unit: Unit) -> None:
        """Count one unit on the board; while it counts, claim the next unit and send its bitstream.

        The unit ends with its count, or with the board's refusal (FirmwareError) or bad arguments
        as its error. BoardStuck / BoardLost go to the caller, which gives the unit up; a board
        that did not take the next bitstream is BoardStuck once this unit has its answer. The
        next unit is left in ``self.queues.upcoming[serial]``.
        """
        await self._count_unit(board, session, unit)
        if session.stuck is not None:
            raise session.stuck

    async def _count_unit(self, board: B, session: BoardSession, unit: Unit) -> None:
        """:meth:`_run_unit` but for a board that got stuck taking the next bitstream."""
        args = self._args_for(unit, board)
        for attempt in (1, 2):
            try:
                await self._ensure_loaded(board, session, unit, None)
                start = functools.partial(
                    session.client.start_evaluate, unit.sha256, args["clock_hz"], args["window_ms"]
                )
                request = await self._blocking(start)
                session.used(unit.sha256)
                deadline = time.monotonic() + args["window_ms"] / 1000 + self.answer_margin
                if await self._send_next(board, session, unit):
                    deadline = max(deadline, time.monotonic() + WAIT_SLICE)
                answer = await self._wait(board, session, request, deadline)
            except FirmwareError as error:
                session.programmed = None
                if attempt == 1 and "is not loaded" in str(error):  # our mirror of its slots was wrong
                    await self._refresh(session)
                    continue
                self.queues.finish(unit, board.serial, error=refusal(error))
                return
            session.programmed = unit.sha256
            pulses = answer.get("pulses")
            if isinstance(pulses, bool) or not isinstance(pulses, int):
                self.queues.finish(
                    unit, board.serial, error=f"the board answered without a pulse count: {answer}"
                )
            else:
                self.queues.finish(unit, board.serial, pulses=pulses)
            return

    async def _send_next(self, board: B, session: BoardSession, counting: Unit) -> bool:
        """Claim the board's next unit (unless it must stop) and send its bitstream; whether it sent."""
        if board.serial not in self.queues.upcoming:
            if board.wake.is_set() or self.queues.stopped:
                return False
            claimed = self.queues.claim(board, session)
            if claimed is None:
                return False
            self.queues.upcoming[board.serial] = claimed
        upcoming = self.queues.upcoming[board.serial]
        if session.holds(upcoming.sha256):
            return False
        try:
            await self._ensure_loaded(board, session, upcoming, counting.sha256)
        except FirmwareError as error:  # tried again before it runs: a real refusal shows then
            log.info("%s: sending the next bitstream failed: %s", board.label, refusal(error))
        except BoardStuck as error:  # the counting unit's answer may be in: it is collected first
            log.warning("%s: sending the next bitstream got no answer: %s", board.label, error)
            session.stuck = error
        return True

    async def _refresh(self, session: BoardSession) -> None:
        status = await self._blocking(lambda: session.client.status(timeout=IDENTIFY_TIMEOUT))
        session.loaded = OrderedDict.fromkeys(status.get("loaded") or [])
        session.programmed = status.get("programmed")

    async def _wait(self, board: B, session: BoardSession, request: int, deadline: float) -> dict[str, Any]:
        """The answer to ``request``, waited for in slices so that a board that went away is noticed."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoardStuck(f"no result within {self.answer_margin:g} s after the window")
            try:
                wait = functools.partial(session.client.wait, request, timeout=min(WAIT_SLICE, remaining))
                return await self.manager.run_blocking(wait)
            except NoAnswer:
                if APPLICATION not in board.sightings:
                    raise BoardLost("it was unplugged") from None
            except PortLost as error:
                raise BoardLost(str(error)) from None
