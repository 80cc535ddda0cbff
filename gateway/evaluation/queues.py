"""The evaluation work of one gateway: evaluations, their units queued per board and per client, results.

Mode ``each`` pins a unit to every listed board; mode ``any`` leaves one unit per bitstream in a
queue of its client's, for whichever of the listed boards (default: the client's) is free. A
board's serving loop (gateway/evaluation/scheduler.py) claims its units here, preferring
bitstreams the board already holds, and gives back those it could not finish.

Every unit ends exactly once (:meth:`EvaluationQueues.finish`): a result, or an error saying why;
a late answer from a board given up is dropped. While work is queued, a watch fails the units
pinned to a board once its reservation ended, or once it stayed offline or Broken for
:data:`LOST_GRACE` s, and ``any`` units once none of the boards they may run on is left; it wakes
ready boards that have work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic

from picofleet.common.changes import ChangeHub
from picofleet.gateway.evaluation.bitstream_store import BitstreamStore
from picofleet.gateway.evaluation.board_session import BoardSession, preference
from picofleet.gateway.evaluation.interfaces import B, BoardKeeper, ReservationLookup
from picofleet.gateway.evaluation.jobs import Evaluation, EvaluationRefused, Unit
from picofleet.gateway.metrics import GatewayMetrics

log = logging.getLogger("picofleet.evaluations")

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


class EvaluationQueues(Generic[B]):
    """Queued evaluation work, the units claimed by boards, and their results."""

    def __init__(
        self,
        manager: BoardKeeper[B],
        reservations: ReservationLookup,
        metrics: GatewayMetrics | None = None,
        changes: ChangeHub[str] | None = None,
    ) -> None:
        self.manager = manager
        self.reservations = reservations
        self.metrics = metrics or GatewayMetrics()
        """Where evaluations and their results are counted (the device manager's, in the gateway)."""
        self.changes: ChangeHub[str] = changes if changes is not None else ChangeHub()
        """Where ``"evaluations"`` is published when one is queued or gets a result (the device
        manager's ``changes``, in the gateway: the event stream shows the progress)."""
        config = manager.config
        self.bitstreams = BitstreamStore(
            config.data / "bitstreams", config.assets_max_bytes, self.referenced_bitstreams
        )
        self.evaluations: dict[str, Evaluation] = {}
        self.lost_grace = LOST_GRACE
        self.serving: set[str] = set()
        """Boards whose task is in the serving loop (new work does not need to wake them)."""
        self.upcoming: dict[str, Unit] = {}
        """serial -> the unit claimed to run next on that board."""
        self.stopped = False
        self._pinned: dict[str, deque[Unit]] = {}
        self._any: dict[tuple[str, frozenset[str] | None], deque[Unit]] = {}  # by (name, unit.boards)
        self._unusable_since: dict[str, float] = {}
        self._watch: asyncio.Task[None] | None = None

    # -- what the reservations say (gateway/evaluation/reservations.py) --------------------------
    def client_of(self, board: B) -> str | None:
        """The name of the client that holds ``board``, ``None`` when it is not reserved."""
        reservation = self.reservations.of(board.serial)
        return reservation.name if reservation is not None else None

    def _local_serial(self, uuid: str) -> str:
        """A board's LocalUUID, given it or its ResinUUID (as reservations accept both)."""
        board = self.manager.find(uuid)
        return board.serial if board is not None else uuid

    def reserved_serials(self, name: str) -> list[str]:
        """The serials ``name`` holds, in the order they were reserved."""
        return [reservation.serial for reservation in self.reservations.of_client(name)]

    # -- submitting ---------------------------------------------------------------------------
    def submit(
        self,
        name: str,
        bitstreams: Sequence[tuple[str, str | None]],
        mode: str,
        serials: list[str] | None = None,
        args: dict[str, int] | None = None,
    ) -> Evaluation:
        """Queue an evaluation of ``bitstreams`` (``(sha256, label)``) for client ``name``.

        The bitstreams must be stored (the API checks: BitstreamStore.missing). Raises
        :class:`EvaluationRefused`: 409 when ``name`` holds no board, 404 for a serial it does not
        hold, 413 for too many units.
        """
        if self.stopped:
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
        self.changes.publish("evaluations")
        log.info(
            "evaluation %s of %s: %d bitstream(s), mode %s, %d unit(s)",
            evaluation.id,
            name,
            len(bitstreams),
            mode,
            len(evaluation.units),
        )
        self.metrics.evaluations_submitted.inc()
        for serial in woken:
            self._wake(serial)
        self.watch()
        return evaluation

    def cancel(self, evaluation: Evaluation, reason: str) -> None:
        """End the units of ``evaluation`` not started yet with ``reason``: queued ones, and those
        claimed to run next on a board. Units counting finish as usual."""
        for serial in [serial for serial, unit in self.upcoming.items() if unit.evaluation is evaluation]:
            self.fail(self.upcoming.pop(serial), reason)
        for unit in evaluation.units:
            if not unit.done and unit.running_on is None:
                self._dequeue(unit)
                self.fail(unit, reason)

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
        if board is not None and serial not in self.serving:
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

    # -- queues -------------------------------------------------------------------------------
    def has_work(self, board: B) -> bool:
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

    def claim(self, board: B, session: BoardSession) -> Unit | None:
        """Take the board's next unit off its queue, preferring a bitstream the board holds."""
        name = self.client_of(board)
        pinned = self._pinned.get(board.serial)
        while pinned and pinned[0].evaluation.name != name:  # left from an ended reservation
            self.fail(pinned.popleft(), f"the reservation of board {board.serial} ended")
        for queue in (pinned, *(self._any_queues(name, board.serial) if name else ())):
            if not queue:
                continue
            head = [queue[index] for index in range(min(len(queue), PREFER_LOADED))]
            chosen = max(head, key=lambda unit: preference(session, unit))  # the first of the best
            queue.remove(chosen)
            chosen.running_on = board.serial
            chosen.attempts += 1
            self.changes.publish("evaluations")
            return chosen
        return None

    def requeue(self, unit: Unit) -> None:
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
        self.watch()

    def requeue_untried(self, unit: Unit) -> None:
        """Put back a unit claimed but not run (the claim does not count as an attempt)."""
        unit.attempts -= 1
        self.requeue(unit)

    def _dequeue(self, unit: Unit) -> None:
        if unit.serial:
            queue = self._pinned.get(unit.serial)
        else:
            queue = self._any.get((unit.evaluation.name, unit.boards))
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(unit)

    def give_up(self, unit: Unit, board: B, reason: str, *, retry_pinned: bool = False) -> None:
        """The unit's board failed it (stuck or lost): try it again (mode any; or ``retry_pinned``)
        unless it was tried :data:`MAX_ATTEMPTS` times, else fail it with ``reason``."""
        if unit.done or unit.running_on != board.serial:
            return
        if (unit.serial is None or retry_pinned) and unit.attempts < MAX_ATTEMPTS:
            log.info("%s: unit %s goes back to the queue (%s)", board.label, unit.sha256[:12], reason)
            self.requeue(unit)
        else:
            self.finish(unit, board.serial, error=reason)

    # -- results ------------------------------------------------------------------------------
    def finish(
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
        self.changes.publish("evaluations")
        self.metrics.bitstream_results.labels("counted" if error is None else "failed").inc()
        try:
            self.reservations.events.publish(evaluation.name, {"event": "evaluation_result", **result})
        except Exception:
            log.exception("publishing an evaluation result failed")
        if evaluation.done:
            self.metrics.evaluations_completed.inc()
            log.info(
                "evaluation %s done: %d result(s), %d failed",
                evaluation.id,
                len(evaluation.results),
                evaluation.failed,
            )
        return True

    def fail(self, unit: Unit, reason: str) -> None:
        """Fail a unit that is not running anywhere."""
        unit.running_on = None
        self.finish(unit, None, error=reason)

    # -- lost boards --------------------------------------------------------------------------
    def _unusable(self, board: B | None, name: str) -> tuple[bool, str] | None:
        """Why ``board`` cannot serve ``name`` now: ``(for good, reason)``; ``None`` if it can."""
        if board is None:
            return True, "the board was deleted"
        if self.client_of(board) != name:
            return True, f"the reservation of board {board.serial} ended"
        if not board.sightings:
            return False, f"board {board.serial} is offline"
        if board.broken:
            return False, f"board {board.serial} is Broken: {board.record.get('StatusReason')}"
        return None

    def check_queues(self) -> None:
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
                    self.fail(unit, why)
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
                    self.fail(queue.popleft(), reason)
            for serial in usable:
                board = self.manager.boards.get(serial)
                if board is not None:
                    self._nudge(board)
        for serial, board in self.manager.boards.items():
            if board.sightings and not board.broken:
                self._unusable_since.pop(serial, None)

    def _too_long(self, serial: str, now: float) -> bool:
        since = self._unusable_since.setdefault(serial, now)
        return now - since >= self.lost_grace

    def _nudge(self, board: B) -> None:
        """Safety net: a ready board with work that is not serving is woken."""
        if board.serial not in self.serving and board.evaluation_ready:
            board.wake.set()

    def watch(self) -> None:
        """Run the watch over the queues (:meth:`check_queues` every WATCH_INTERVAL) while work is queued."""
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watching(), name="evaluations-watch")

    def _busy(self) -> bool:
        return any(self._pinned.values()) or any(self._any.values()) or bool(self.serving)

    async def _watching(self) -> None:
        try:
            while self._busy() and not self.stopped:
                await asyncio.sleep(WATCH_INTERVAL)
                try:
                    self.check_queues()
                except Exception:
                    log.exception("checking the evaluation queues failed")
        finally:
            # times of boards seen unusable hold while watched: the next watch grants a full grace
            self._unusable_since.clear()

    # -- the end -----------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Fail what is still queued (the gateway stops)."""
        self.stopped = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for evaluation in list(self.evaluations.values()):
            for unit in evaluation.units:
                if not unit.done:
                    unit.running_on = None
                    self.finish(unit, None, error="the gateway stopped")
        self._pinned.clear()
        self._any.clear()
