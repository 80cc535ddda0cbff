"""The evaluation scheduler: bitstreams counted on reserved boards (``manager.evaluations``).

An evaluation (``POST /v1/evaluations``) is cut into *units*: one bitstream on one board.
Mode ``each`` pins a unit to every listed board; mode ``any`` leaves one unit per bitstream in
a queue of its client's, for whichever of the listed boards (default: the client's) is free.

Each reserved, ready board's task calls :meth:`EvaluationScheduler.serve` (gateway/boards/board.py),
which runs units one after the other over the board's open port (firmware/host/pulsecount.py):

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

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from picofleet.firmware.asset_cache import AssetError
from picofleet.firmware.host.protocol import FirmwareError, NoAnswer, PortLost
from picofleet.firmware.host.pulsecount import PulseCountBoard
from picofleet.gateway.boards.record import Status
from picofleet.gateway.evaluation.bitstream_store import BitstreamStore
from picofleet.gateway.evaluation.jobs import DEFAULT_ARGS, Evaluation, EvaluationRefused, Unit
from picofleet.gateway.models import APPLICATION, BoardError

if TYPE_CHECKING:
    from picofleet.gateway.boards.board import Board
    from picofleet.gateway.boards.manager import DeviceManager

log = logging.getLogger("picofleet.evaluations")

ANSWER_MARGIN = 30.0
"""Seconds a board may take beyond the window to answer (configure; a simulated circuit's run)."""
IDENTIFY_TIMEOUT = 5.0
LOAD_TIMEOUT = 10.0
LOAD_RATE = 20_000
"""Bytes per second the slowest board is allowed to take a bitstream at (plus LOAD_TIMEOUT)."""
WAIT_SLICE = 1.0
"""A result is waited for in slices this long, to notice a board that went away meanwhile."""
MAX_ATTEMPTS = 3
"""Tries of a unit on boards that got stuck or lost (mode ``any``; lost ports also ``each``)."""
LOST_GRACE = 5.0
"""Seconds a board may be offline or Broken before its pinned units fail."""
WATCH_INTERVAL = 0.5
PREFER_LOADED = 32
"""How far down a queue a board looks for a unit whose bitstream it already holds."""
KEEP_FINISHED = 200
"""Finished evaluations kept for ``GET /v1/evaluations/{id}`` (the newest)..."""
KEEP_RESULTS = 200_000
"""...as long as they hold at most this many results in all."""
MAX_UNITS = 100_000
"""The most units one evaluation may have (bitstreams x boards)."""


@dataclass
class BoardSession:
    """The scheduler's view of one open port of a board running the pulse-count firmware."""

    port: Any
    client: Any
    slots: int
    max_bitstream: int
    loaded: OrderedDict[str, None]
    """Bitstreams the board holds, least recently used first (mirrors the firmware's slots)."""
    programmed: str | None = None
    stuck: Exception | None = None
    """Set when sending the next bitstream got no answer: the board is given up after this unit."""

    def holds(self, sha: str) -> bool:
        """Whether the board holds bitstream ``sha``."""
        return sha in self.loaded

    def used(self, sha: str) -> None:
        """The board used ``sha`` (evaluated it)."""
        if sha in self.loaded:
            self.loaded.move_to_end(sha)

    def note_loaded(self, sha: str, keep: str | None) -> None:
        """The board took ``sha``; like the firmware, evict the LRU slot that is not ``keep``."""
        self.loaded.pop(sha, None)
        while len(self.loaded) >= max(self.slots, 1):
            victim = next((held for held in self.loaded if held != keep), None)
            if victim is None:
                break
            del self.loaded[victim]
        self.loaded[sha] = None


class BoardLost(Exception):
    """The board's port failed or the board went away mid-unit."""


class BoardStuck(Exception):
    """The board did not answer in time."""


class EvaluationScheduler:
    """Queued evaluation work and the boards doing it (``manager.evaluations``)."""

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager
        config = manager.config
        self.bitstreams = BitstreamStore(
            config.data / "bitstreams", config.assets_max_bytes, self.referenced_bitstreams
        )
        self.evaluations: dict[str, Evaluation] = {}
        self.connect: Callable[[Any, Callable[[str, str], None]], Any] = PulseCountBoard
        """Makes the firmware client of an open port (a fake in unit tests)."""
        self.answer_margin = ANSWER_MARGIN
        self.lost_grace = LOST_GRACE
        self._pinned: dict[str, deque[Unit]] = {}
        self._any: dict[tuple[str, frozenset[str] | None], deque[Unit]] = {}  # by (name, unit.boards)
        self._serving: set[str] = set()
        self._sessions: dict[str, BoardSession] = {}
        self._upcoming: dict[str, Unit] = {}  # serial -> the unit claimed to run next
        self._unusable_since: dict[str, float] = {}
        self._watch: asyncio.Task[None] | None = None
        self._stopped = False

    # -- what the reservations say (gateway/evaluation/reservations.py) --------------------------------------
    def client_of(self, board: Board) -> str | None:
        """The name of the client that holds ``board``, ``None`` when it is not reserved."""
        reservation = self.manager.reservations.of(board.serial)
        return reservation.name if reservation is not None else None

    def _local_serial(self, uuid: str) -> str:
        """A board's LocalUUID, given it or its ResinUUID (as reservations accept both)."""
        board = self.manager.find(uuid)
        return board.serial if board is not None else uuid

    def reserved_serials(self, name: str) -> list[str]:
        """The serials ``name`` holds, in the order they were reserved."""
        return [reservation.serial for reservation in self.manager.reservations.of_client(name)]

    # -- submitting ---------------------------------------------------------------------------------
    def submit(
        self,
        name: str,
        bitstreams: list[tuple[str, str | None]],
        mode: str,
        serials: list[str] | None = None,
        args: dict[str, int] | None = None,
    ) -> Evaluation:
        """Queue an evaluation of ``bitstreams`` (``(sha256, label)``) for client ``name``.

        The bitstreams must be stored (the API checks: BitstreamStore.missing). Raises
        :class:`EvaluationRefused`: 409 when ``name`` holds no board, 404 for a serial it does not
        hold, 413 for too many units.
        """
        if self._stopped:
            raise EvaluationRefused(503, "the gateway is stopping")
        held = self.reserved_serials(name)
        if serials is None:
            if not held:
                raise EvaluationRefused(409, f"{name!r} has no reserved board: reserve boards first")
            targets = held
        else:
            serials = [self._local_serial(serial) for serial in serials]
            foreign = [serial for serial in serials if serial not in held]
            if foreign:
                raise EvaluationRefused(404, f"not reserved by {name!r}: {', '.join(foreign)}")
            targets = list(dict.fromkeys(serials))
        count = len(bitstreams) * (len(targets) if mode == "each" else 1)
        if count > MAX_UNITS:
            raise EvaluationRefused(413, f"{count} evaluations in one request; at most {MAX_UNITS}")
        evaluation = Evaluation(name, mode, dict(args or {}))
        if mode == "each":
            for serial in targets:
                queue = self._pinned.setdefault(serial, deque())
                for sha, label in bitstreams:
                    unit = Unit(evaluation, sha, label, serial)
                    evaluation.units.append(unit)
                    queue.append(unit)
            woken = targets
        else:
            boards = frozenset(targets) if serials is not None else None
            queue = self._any.setdefault((name, boards), deque())
            for sha, label in bitstreams:
                unit = Unit(evaluation, sha, label, None, boards)
                evaluation.units.append(unit)
                queue.append(unit)
            woken = targets
        self.evaluations[evaluation.id] = evaluation
        self._forget_old()
        log.info(
            "evaluation %s of %s: %d bitstream(s), mode %s, %d unit(s)",
            evaluation.id,
            name,
            len(bitstreams),
            mode,
            len(evaluation.units),
        )
        for serial in woken:
            self._wake(serial)
        self._watch_queues()
        return evaluation

    def cancel(self, evaluation: Evaluation, reason: str) -> None:
        """End the units of ``evaluation`` not started yet with ``reason``: queued ones, and those
        claimed to run next on a board. Units counting finish as usual."""
        for serial in [serial for serial, unit in self._upcoming.items() if unit.evaluation is evaluation]:
            self._fail(self._upcoming.pop(serial), reason)
        for unit in evaluation.units:
            if not unit.done and unit.running_on is None:
                self._dequeue(unit)
                self._fail(unit, reason)

    def _forget_old(self) -> None:
        """Forget finished evaluations beyond the newest KEEP_FINISHED, or KEEP_RESULTS results."""
        kept = results = 0
        for key, evaluation in reversed(list(self.evaluations.items())):
            if evaluation.done:
                kept += 1
                results += len(evaluation.results)
                if kept > KEEP_FINISHED or results > KEEP_RESULTS:
                    del self.evaluations[key]

    def _wake(self, serial: str) -> None:
        board = self.manager.boards.get(serial)
        if board is not None and serial not in self._serving:
            board.wake.set()

    def referenced_bitstreams(self) -> set[str]:
        """Bitstreams of units not done yet (never collected from the store)."""
        return {
            unit.sha256
            for evaluation in self.evaluations.values()
            if not evaluation.done
            for unit in evaluation.units
            if not unit.done
        }

    # -- queues -----------------------------------------------------------------------------------
    def has_work(self, board: Board) -> bool:
        """Whether a unit is queued for ``board`` (pinned to it, or of its client's ``any`` ones)."""
        if self._pinned.get(board.serial):
            return True
        name = self.client_of(board)
        return name is not None and any(self._any_queues(name, board.serial))

    def _any_queues(self, name: str, serial: str) -> list[deque[Unit]]:
        """The queues of ``name``'s ``any`` units that may run on board ``serial``, oldest first."""
        return [
            queue
            for (owner, boards), queue in self._any.items()
            if owner == name and (boards is None or serial in boards)
        ]

    def _claim(self, board: Board, session: BoardSession) -> Unit | None:
        """Take the board's next unit off its queue, preferring a bitstream the board holds."""
        name = self.client_of(board)
        pinned = self._pinned.get(board.serial)
        while pinned and pinned[0].evaluation.name != name:  # left from an ended reservation
            self._fail(pinned.popleft(), f"the reservation of board {board.serial} ended")
        for queue in (pinned, *(self._any_queues(name, board.serial) if name else ())):
            if not queue:
                continue
            head = [queue[index] for index in range(min(len(queue), PREFER_LOADED))]
            chosen = max(head, key=lambda unit: _preference(session, unit))  # the first of the best
            queue.remove(chosen)
            chosen.running_on = board.serial
            chosen.attempts += 1
            return chosen
        return None

    def _requeue(self, unit: Unit) -> None:
        """Put an unfinished unit back at the head of its queue (it was not counted)."""
        unit.running_on = None
        if unit.done:
            return
        if unit.serial is not None:
            self._pinned.setdefault(unit.serial, deque()).appendleft(unit)
            self._wake(unit.serial)
        else:
            self._any.setdefault((unit.evaluation.name, unit.boards), deque()).appendleft(unit)
            boards = unit.boards if unit.boards is not None else self.reserved_serials(unit.evaluation.name)
            for serial in boards:
                self._wake(serial)
        self._watch_queues()

    def _dequeue(self, unit: Unit) -> None:
        if unit.serial:
            queue = self._pinned.get(unit.serial)
        else:
            queue = self._any.get((unit.evaluation.name, unit.boards))
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(unit)

    def _give_up(self, unit: Unit, board: Board, reason: str, *, retry_pinned: bool = False) -> None:
        """The unit's board failed it (stuck or lost): try it again (mode any; or ``retry_pinned``)
        unless it was tried :data:`MAX_ATTEMPTS` times, else fail it with ``reason``."""
        if unit.done or unit.running_on != board.serial:
            return
        if (unit.serial is None or retry_pinned) and unit.attempts < MAX_ATTEMPTS:
            log.info("%s: unit %s goes back to the queue (%s)", board.label, unit.sha256[:12], reason)
            self._requeue(unit)
        else:
            self._finish(unit, board.serial, error=reason)

    # -- results ----------------------------------------------------------------------------------
    def _finish(
        self, unit: Unit, serial: str | None, *, pulses: int | None = None, error: str | None = None
    ) -> bool:
        """Record the unit's one result; ``False`` (dropped) if it already has one or moved on."""
        if unit.done or unit.running_on != serial:
            return False
        unit.done, unit.running_on = True, None
        self.bitstreams.used(unit.sha256)  # kept an hour from now: the client may evaluate it again
        evaluation = unit.evaluation
        result: dict[str, Any] = {
            "evaluation": evaluation.id,
            "serial": serial if serial is not None else unit.serial,
            "sha256": unit.sha256,
            "label": unit.label,
        }
        if error is None:
            result["pulses"] = pulses
        else:
            result["error"] = error
        evaluation.add(result)
        try:
            self.manager.reservations.events.publish(
                evaluation.name, {"event": "evaluation_result", **result}
            )
        except Exception:
            log.exception("publishing an evaluation result failed")
        if evaluation.done:
            log.info(
                "evaluation %s done: %d result(s), %d failed",
                evaluation.id,
                len(evaluation.results),
                evaluation.failed,
            )
        return True

    def _fail(self, unit: Unit, reason: str) -> None:
        """Fail a unit that is not running anywhere."""
        unit.running_on = None
        self._finish(unit, None, error=reason)

    # -- serving a board ----------------------------------------------------------------------------
    async def serve(self, board: Board) -> None:
        """Run queued work on a reserved, ready board until none is left or ``board.wake`` is set."""
        if self._stopped or board.serial in self._serving or board.port is None:
            return
        if not self.has_work(board):
            return
        self._serving.add(board.serial)
        try:
            await board.update(
                Status=Status.EVALUATING.value, StatusReason=f"evaluating for {self.client_of(board)}"
            )
            async with self.manager.updating():
                await self._serve(board)
        finally:
            self._serving.discard(board.serial)

    async def _serve(self, board: Board) -> None:
        current: Unit | None = None
        try:
            try:
                session = await self._session(board)
            except FirmwareError as error:
                raise BoardError(f"the evaluation firmware does not answer: {_reason(error)}") from None
            current = self._claim(board, session)
            while current is not None:
                await self._run_unit(board, session, current)
                current = self._upcoming.pop(board.serial, None)
                if board.wake.is_set() or self._stopped:
                    return  # the finally puts the unit claimed next back
                current = current or self._claim(board, session)
            self._serving.discard(board.serial)  # before any await: new work now wakes the board
        except BoardStuck as error:
            self._sessions.pop(board.serial, None)
            reason = f"board {board.serial} did not answer: {error}; it is restarted"
            log.warning("%s: %s", board.label, reason)
            if current is not None:
                self._give_up(current, board, reason)
            current = None
            await self.manager.request_restart(board)
        except BoardLost as error:
            self._sessions.pop(board.serial, None)
            reason = f"board {board.serial} was lost: {error}"
            log.warning("%s: %s", board.label, reason)
            # not counted: back in the queue; pinned units fail if the board stays away (LOST_GRACE)
            if current is not None:
                self._give_up(current, board, reason, retry_pinned=True)
            current = None
            await board.close_port()
        except BaseException:
            self._sessions.pop(board.serial, None)
            raise
        finally:
            for unit in (current, self._upcoming.pop(board.serial, None)):
                if unit is not None and not unit.done and unit.running_on == board.serial:
                    self._requeue_untried(unit)

    async def _session(self, board: Board) -> BoardSession:
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

    def _args_for(self, unit: Unit, board: Board) -> dict[str, int]:
        """The unit's evaluation arguments: the request's, else the reservation's, else defaults."""
        reservation = self.manager.reservations.of(board.serial)  # its args were checked at reserve
        return {**DEFAULT_ARGS, **(reservation.args if reservation else {}), **unit.evaluation.args}

    async def _ensure_loaded(self, board: Board, session: BoardSession, unit: Unit, keep: str | None) -> None:
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

    async def _run_unit(self, board: Board, session: BoardSession, unit: Unit) -> None:
        """Count one unit on the board; while it counts, claim the next unit and send its bitstream.

        The unit ends with its count, or with the board's refusal (FirmwareError) or bad arguments
        as its error. BoardStuck / BoardLost go to the caller, which gives the unit up; a board
        that did not take the next bitstream is BoardStuck once this unit has its answer. The
        next unit is left in ``self._upcoming[serial]``.
        """
        await self._count_unit(board, session, unit)
        if session.stuck is not None:
            raise session.stuck

    async def _count_unit(self, board: Board, session: BoardSession, unit: Unit) -> None:
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
                self._finish(unit, board.serial, error=_reason(error))
                return
            session.programmed = unit.sha256
            pulses = answer.get("pulses")
            if isinstance(pulses, bool) or not isinstance(pulses, int):
                self._finish(unit, board.serial, error=f"the board answered without a pulse count: {answer}")
            else:
                self._finish(unit, board.serial, pulses=pulses)
            return

    async def _send_next(self, board: Board, session: BoardSession, counting: Unit) -> bool:
        """Claim the board's next unit (unless it must stop) and send its bitstream; whether it sent."""
        if board.serial not in self._upcoming:
            if board.wake.is_set() or self._stopped:
                return False
            claimed = self._claim(board, session)
            if claimed is None:
                return False
            self._upcoming[board.serial] = claimed
        upcoming = self._upcoming[board.serial]
        if session.holds(upcoming.sha256):
            return False
        try:
            await self._ensure_loaded(board, session, upcoming, counting.sha256)
        except FirmwareError as error:  # tried again before it runs: a real refusal shows then
            log.info("%s: sending the next bitstream failed: %s", board.label, _reason(error))
        except BoardStuck as error:  # the counting unit's answer may be in: it is collected first
            log.warning("%s: sending the next bitstream got no answer: %s", board.label, error)
            session.stuck = error
        return True

    def _requeue_untried(self, unit: Unit) -> None:
        unit.attempts -= 1
        self._requeue(unit)

    async def _refresh(self, session: BoardSession) -> None:
        status = await self._blocking(lambda: session.client.status(timeout=IDENTIFY_TIMEOUT))
        session.loaded = OrderedDict.fromkeys(status.get("loaded") or [])
        session.programmed = status.get("programmed")

    async def _wait(
        self, board: Board, session: BoardSession, request: int, deadline: float
    ) -> dict[str, Any]:
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

    # -- lost boards -------------------------------------------------------------------------------
    def _unusable(self, board: Board | None, name: str) -> tuple[bool, str] | None:
        """Why ``board`` cannot serve ``name`` now: ``(for good, reason)``; ``None`` if it can."""
        if board is None:
            return True, "the board was deleted"
        if self.client_of(board) != name:
            return True, f"the reservation of board {board.serial} ended"
        if not board.sightings:
            return False, f"board {board.serial} is offline"
        if getattr(board, "broken", False):
            return False, f"board {board.serial} is Broken: {board.record.get('StatusReason')}"
        return None

    def _check_queues(self) -> None:
        """Fail queued units whose boards are gone; wake ready boards that have work.

        Each board is judged once per pass (per client), not once per unit.
        """
        now = time.monotonic()
        lost: dict[tuple[str, str], str | None] = {}

        def lost_for(serial: str, name: str) -> str | None:
            """Why units of ``name`` on board ``serial`` fail now, ``None`` while they can wait."""
            if (serial, name) not in lost:
                verdict = self._unusable(self.manager.boards.get(serial), name)
                failing = verdict is not None and (verdict[0] or self._too_long(serial, now))
                lost[serial, name] = verdict[1] if verdict is not None and failing else None
            return lost[serial, name]

        for serial, queue in list(self._pinned.items()):
            if not queue:
                del self._pinned[serial]
                continue
            failing = [(unit, why) for unit in queue if (why := lost_for(serial, unit.evaluation.name))]
            if failing:
                gone = {unit for unit, _ in failing}
                kept = [unit for unit in queue if unit not in gone]
                queue.clear()
                queue.extend(kept)
                for unit, why in failing:
                    self._fail(unit, why)
            board = self.manager.boards.get(serial)
            if board is not None and queue:
                self._nudge(board)
        for key, queue in list(self._any.items()):
            if not queue:
                del self._any[key]
                continue
            name, boards = key
            usable, reasons = [], []
            for serial in sorted(boards) if boards is not None else self.reserved_serials(name):
                why = lost_for(serial, name)
                if why is None:
                    usable.append(serial)
                else:
                    reasons.append(why)
            if not usable:
                left = f"no board reserved by {name!r}" if boards is None else "none of the boards asked for"
                reason = f"{left} is left" + (f" ({'; '.join(reasons)})" if reasons else "")
                while queue:
                    self._fail(queue.popleft(), reason)
            for serial in usable:
                board = self.manager.boards.get(serial)
                if board is not None:
                    self._nudge(board)
        for serial, board in self.manager.boards.items():
            if board.sightings and not getattr(board, "broken", False):
                self._unusable_since.pop(serial, None)

    def _too_long(self, serial: str, now: float) -> bool:
        since = self._unusable_since.setdefault(serial, now)
        return now - since >= self.lost_grace

    def _nudge(self, board: Board) -> None:
        """Safety net: a ready board with work that is not serving is woken."""
        if board.serial not in self._serving and getattr(board, "evaluation_ready", False):
            board.wake.set()

    def _watch_queues(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watching(), name="evaluations-watch")

    def _busy(self) -> bool:
        return any(self._pinned.values()) or any(self._any.values()) or bool(self._serving)

    async def _watching(self) -> None:
        try:
            while self._busy() and not self._stopped:
                await asyncio.sleep(WATCH_INTERVAL)
                try:
                    self._check_queues()
                except Exception:
                    log.exception("checking the evaluation queues failed")
        finally:
            # times of boards seen unusable hold while watched: the next watch grants a full grace
            self._unusable_since.clear()

    # -- the end -----------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Fail what is still queued (the gateway stops)."""
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for evaluation in list(self.evaluations.values()):
            for unit in evaluation.units:
                if not unit.done:
                    unit.running_on = None
                    self._finish(unit, None, error="the gateway stopped")
        self._pinned.clear()
        self._any.clear()


def _preference(session: BoardSession, unit: Unit) -> int:
    """2: the board is configured with the unit's bitstream, 1: it holds it, 0: it must be sent."""
    if unit.sha256 == session.programmed:
        return 2
    return 1 if session.holds(unit.sha256) else 0


def _reason(error: Exception) -> str:
    """A board's refusal without the client's ``board answered:`` prefix."""
    text = str(error)
    return text.removeprefix("board answered: ")
