"""Reservations of boards by researchers (clients), with tokens and expiry (docs/api.md, "Reservations").

A *client* is a name plus a secret token (gateway/evaluation/clients.py). One
:class:`Reservation` holds one board until it is ended or expires. Reservations and clients are
stored (gateway/evaluation/reservation_store.py), so they survive a restart of
the gateway, also a ``kill -9`` (store writes are atomic).

The book only decides who holds which board and until when; the board's task (gateway/boards/board.py)
acts on it through gateway/evaluation/reserved_board.py: it installs the evaluation firmware, shows
``Reserved`` and serves the evaluations. The board layer sees the book as the ``Reservations``
Protocol of gateway/boards/owner.py.
Every change is published to the client's events (gateway/evaluation/events.py): ``reservation_ready``,
``reservation_ending`` (:data:`ENDING_NOTICE` before the end, or at once for a shorter
reservation) and ``reservation_ended`` (``reason``: ``ended``, ``expired``, ``failed`` with the
``error``, or ``deleted``). Every change of the book (made, extended, ready, ended) also publishes
``"reservations"`` on the device manager's change signal (``manager.changes``: the gateway's
event stream, gateway/http/events.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.boards.record import Status
from picofleet.gateway.evaluation.clients import (
    Clients,
    ReservationError,
    check_name,
    mint_token,
    token_digest,
)
from picofleet.gateway.evaluation.evaluation_firmware import evaluation_firmware
from picofleet.gateway.evaluation.events import EventBus
from picofleet.gateway.evaluation.reservation import KINDS, PREPARING, READY, Reservation, check_kind_args
from picofleet.gateway.evaluation.reservation_store import RESERVATIONS, ReservationStore
from picofleet.gateway.models import APPLICATION, BoardError

__all__ = ["KINDS", "RESERVATIONS", "Reservation", "ReservationBook", "ReservationError", "check_name"]

log = logging.getLogger("picofleet.reservations")

ENDING_NOTICE = 300.0
"""Seconds before its end that a reservation announces ``reservation_ending``."""
MAX_TIMER_SLEEP = 60.0
"""The expiry timer looks again at least this often (the wall clock may jump)."""


class ReservationBook:
    """Every reservation of this gateway's boards (``manager.reservations``, gateway/service.py wires it).

    Changes are serialised by one lock and stored before they show; the event loop only.
    """

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager
        self.events = EventBus()
        self._reservations: dict[str, Reservation] = {}
        self._claimed: set[str] = set()  # boards the reserve under way took (not stored yet)
        self.clients = Clients()
        self.stored = ReservationStore(manager.store)
        self.gateway_id = ""
        """The id the clients' tokens are valid under (``GET /v1/gateway``); read by :meth:`start`."""
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the gateway's id, the stored clients and reservations (after the boards), then run
        the expiry timer."""
        self.gateway_id = await self.stored.gateway_id()
        for name, digest in await self.stored.clients():
            self.clients.remember(name, digest)
        gone = []
        for reservation in await self.stored.reservations():
            if reservation.serial in self.manager.boards and reservation.kind in KINDS:
                self._reservations[reservation.serial] = reservation
            else:
                gone.append(reservation)
        if gone:
            await self.stored.remove([reservation.serial for reservation in gone])
        log.info("%d reservation(s) of %d client(s)", len(self._reservations), len(self.clients))
        self._timer = asyncio.create_task(self._expire_forever(), name="reservation-expiry")

    async def stop(self) -> None:
        """Stop the expiry timer and end every event subscription."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        self.events.close()

    # -- reading --------------------------------------------------------------------------------
    def of(self, serial: str) -> Reservation | None:
        """The reservation of the board ``serial``, if it is reserved."""
        return self._reservations.get(serial)

    def of_client(self, name: str) -> list[Reservation]:
        """The reservations of client ``name``, oldest first."""
        return sorted(
            (r for r in self._reservations.values() if r.name == name), key=lambda r: (r.created_at, r.serial)
        )

    def all(self) -> list[Reservation]:
        """Every reservation, by client, oldest first."""
        return sorted(self._reservations.values(), key=lambda r: (r.name, r.created_at, r.serial))

    def flash_refusal(self, serial: str) -> str | None:
        """Why board ``serial`` must take no flash but its evaluation firmware, or ``None``."""
        reservation = self._reservations.get(serial)
        if reservation is not None:
            return f"the board is reserved by {reservation.name!r}; it is flashed once released"
        if serial in self._claimed:
            return "the board is being reserved; it is flashed once released"
        return None

    def client_of(self, token: str | None) -> str | None:
        """The name of the client whose token this is, or ``None``."""
        return self.clients.client_of(token)

    def check_token(self, name: str, token: str | None) -> None:
        """Raise a 403 unless ``token`` is client ``name``'s."""
        self.clients.check_token(name, token)

    # -- changes --------------------------------------------------------------------------------
    async def reserve(
        self,
        name: str,
        token: str | None,
        kind: str,
        *,
        count: int | None = None,
        serials: list[str] | None = None,
        args: dict[str, Any] | None = None,
        seconds: float | None = None,
    ) -> tuple[str, list[Reservation]]:
        """Reserve ``count`` free boards, or the boards ``serials``, for ``seconds``.

        ``serials`` are LocalUUIDs or ResinUUIDs. Returns the client's token (minted for a new
        name) and the new reservations. Raises ReservationError: 400 for a bad value (also a board
        named twice), 403 for a name that is another client's, 404 for an unknown serial, 409 when
        not enough boards are free (reserved, not running their firmware, Broken, being flashed).
        """
        check_name(name)
        if kind not in KINDS:
            raise ReservationError(400, f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        args = check_kind_args(args)
        duration = self._duration(seconds)
        async with self._lock:
            minted = None
            if name in self.clients:
                self.check_token(name, token)
            else:
                minted = mint_token()
            try:
                if serials is not None:
                    boards = await self._named_boards(serials, kind, name)
                else:
                    boards = await self._free_boards(count or 1, kind)
                now = time.time()
                made = [Reservation(b.serial, name, kind, args, now, now + duration) for b in boards]
                client = (
                    {"name": name, "token_sha256": token_digest(minted), "created_at": now}
                    if minted
                    else None
                )
                await self.stored.write(made, client)
                if minted:
                    self.clients.remember(name, token_digest(minted))
                for reservation in made:
                    self._reservations[reservation.serial] = reservation
                    log.info(
                        "%s: reserved by %s for %s (%g s)",
                        self._label(reservation.serial),
                        name,
                        kind,
                        duration,
                    )
            finally:
                unreserved = [serial for serial in self._claimed if serial not in self._reservations]
                self._claimed.clear()  # the lock is held: every claim is this request's
                if unreserved:
                    # a fleet flash refused while they were claimed: apply it now
                    self.manager.request_reapply("a reservation that was not made freed its boards")
            self._wake([reservation.serial for reservation in made])
            self._changed.set()
            self.manager.changes.publish("reservations")
        return minted or str(token), made

    async def extend(
        self, name: str, token: str | None, serials: list[str] | None = None, seconds: float | None = None
    ) -> list[Reservation]:
        """Let the reservations (default: all) of ``name`` end ``seconds`` from now (never earlier)."""
        duration = self._duration(seconds)
        async with self._lock:
            self.check_token(name, token)
            targets = self._held(name, serials)
            expires_at = time.time() + duration
            changed = [r for r in targets if r.expires_at < expires_at]
            for reservation in changed:
                reservation.expires_at = expires_at
                reservation.warned = False
            await self.stored.write(changed)
            self._changed.set()
            self.manager.changes.publish("reservations")
        return targets

    async def end(self, name: str, token: str | None, serials: list[str] | None = None) -> list[Reservation]:
        """End the reservations (default: all) of ``name``; their boards go back to the fleet."""
        async with self._lock:
            self.check_token(name, token)
            targets = self._held(name, serials)
            await self._finish(targets, "ended")
        return targets

    async def board_failed(self, serial: str, reason: str) -> None:
        """A reserved board failed (it is Broken): its reservation ends, reason ``failed``."""
        async with self._lock:
            reservation = self._reservations.get(serial)
            if reservation is not None:
                await self._finish([reservation], "failed", error=reason)

    async def board_deleted(self, serial: str) -> None:
        """A reserved board is being deleted (ENM DELETE): its reservation ends, reason ``deleted``."""
        async with self._lock:
            reservation = self._reservations.get(serial)
            if reservation is not None:
                await self._finish([reservation], "deleted")

    async def set_ready(self, serial: str, ready: bool) -> None:
        """The board task says whether the board serves its reservation now.

        The first time it is ready (and again after it was not), ``reservation_ready`` is published.
        The state is written under the lock, so it never lands after the removal of a reservation
        that ended meanwhile (which would bring it back at the next start).
        """
        state = READY if ready else PREPARING
        reservation = self._reservations.get(serial)
        if reservation is None or reservation.state == state:
            return  # nothing to change: no need to wait for the lock
        async with self._lock:
            reservation = self._reservations.get(serial)
            if reservation is None or reservation.state == state:
                return
            reservation.state = state
            self.manager.changes.publish("reservations")
            try:
                await self.stored.write([reservation])
            except Exception as error:  # the state is live information: a failed write costs nothing
                log.warning("%s: could not store its reservation's state: %s", self._label(serial), error)
        if ready:
            log.info("%s: ready for %s's evaluations", self._label(serial), reservation.name)
            self.events.publish(
                reservation.name,
                {"event": "reservation_ready", "serial": serial, "expires_at": reservation.expires_at},
            )

    # -- helpers --------------------------------------------------------------------------------
    def _duration(self, seconds: float | None) -> float:
        config = self.manager.config
        if seconds is None:
            return float(config.reservation_seconds)
        limit = config.reservation_max_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= limit:
            raise ReservationError(
                400,
                f"seconds must be a number > 0 and at most {limit} (reservation_max_seconds), "
                f"not {seconds!r}",
            )
        return float(seconds)

    def _normalised(self, serials: list[str]) -> list[str]:
        """``serials`` (LocalUUIDs or ResinUUIDs) as LocalUUIDs; a 400 for a board named twice."""
        normalised = []
        for serial in serials:
            board = self.manager.find(serial)
            normalised.append(board.serial if board is not None else serial)
        twice = [serial for serial, times in Counter(normalised).items() if times > 1]
        if twice:
            raise ReservationError(
                400, f"serials name board {twice[0]} more than once (by its LocalUUID and its ResinUUID)"
            )
        return normalised

    def _held(self, name: str, serials: list[str] | None) -> list[Reservation]:
        if serials is None:
            return self.of_client(name)
        held = []
        for serial in self._normalised(serials):
            reservation = self._reservations.get(serial)
            if reservation is None or reservation.name != name:
                raise ReservationError(404, f"board {serial} is not reserved by {name}")
            held.append(reservation)
        return held

    def _eligible(self, board: Board) -> str | None:
        """Why ``board`` cannot be reserved now, or ``None`` when it can."""
        if board.serial in self._reservations or board.serial in self._claimed:
            return "is already reserved"
        if APPLICATION not in board.sightings or board.delete_requested:
            return f"is not running its firmware ({board.record['Status']})"
        if board.broken or board.record["Status"] == Status.BROKEN.value:
            return f"is Broken ({board.record.get('StatusReason')})"
        pending = board.pending_flash
        if board.flash_requests or (pending is not None and not pending.evaluation):
            return "is being flashed (a flash is queued or under way): reserve it once it is done"
        return None

    async def _claim(self, board: Board, kind: str) -> str | None:
        """Take ``board`` for the reserve under way, or say why it cannot be reserved.

        Checked again once the plugin answered (a flash may have been queued meanwhile); with no
        await between that check and the claim, no other flash can be queued for it from then
        on (``flash_refusal``), nor can it be taken twice.
        """
        why = self._eligible(board) or await self._capable(board, kind) or self._eligible(board)
        if why is None:
            self._claimed.add(board.serial)
        return why

    async def _capable(self, board: Board, kind: str) -> str | None:
        """Why ``board`` cannot run ``kind``, or ``None`` when it can."""
        try:
            firmware = await evaluation_firmware(self.manager, board.ref(), kind)
        except BoardError as error:
            return f"cannot get its evaluation firmware: {error}"
        if firmware is None:
            return f"is a {board.record['BoardType']}, which cannot run {kind} evaluations"
        return None

    async def _named_boards(self, serials: list[str], kind: str, name: str) -> list[Board]:
        boards = []
        for serial in self._normalised(serials):
            board = self.manager.find(serial)
            if board is None:
                raise ReservationError(404, f"no board with serial {serial!r}")
            held = self._reservations.get(board.serial)
            if held is not None and held.name == name:
                raise ReservationError(
                    409, f"board {board.serial} is already reserved by you (extend it instead)"
                )
            why = await self._claim(board, kind)
            if why is not None:
                raise ReservationError(409, f"board {board.serial} {why}")
            boards.append(board)
        return boards

    async def _free_boards(self, count: int, kind: str) -> list[Board]:
        firmware = KINDS[kind]
        listed = self.manager.listed()

        def preference(board: Board) -> int:  # boards that need no flash first, then idle ones
            running = str(board.record.get("FirmwareVersion") or "")
            return (
                0 if running.startswith(firmware) else 1 if board.record["Status"] == Status.IDLE.value else 2
            )

        chosen: list[Board] = []
        for board in sorted((b for b in listed if self._eligible(b) is None), key=preference):
            if await self._claim(board, kind) is None:
                chosen.append(board)
                if len(chosen) == count:
                    return chosen
        reserved = sum(1 for b in listed if b.serial in self._reservations)
        raise ReservationError(
            409,
            f"only {len(chosen)} board(s) are free to run {kind} evaluations, {count} asked for "
            f"({len(listed)} board(s) on this gateway, {reserved} reserved)",
        )

    async def _finish(self, reservations: list[Reservation], reason: str, error: str | None = None) -> None:
        """End reservations (the lock is held): stored first, then released and announced."""
        if not reservations:
            return
        await self.stored.remove([reservation.serial for reservation in reservations])
        for reservation in reservations:
            if self._reservations.get(reservation.serial) is reservation:
                del self._reservations[reservation.serial]
            event = {"event": "reservation_ended", "serial": reservation.serial, "reason": reason}
            if error is not None:
                event["error"] = error
            log.info(
                "%s: reservation of %s ended (%s%s)",
                self._label(reservation.serial),
                reservation.name,
                reason,
                f": {error}" if error else "",
            )
            self.events.publish(reservation.name, event)
        self._wake([reservation.serial for reservation in reservations])
        self.manager.request_reapply("reservations ended")  # released boards get their fleet firmware
        self._changed.set()
        self.manager.changes.publish("reservations")

    def _wake(self, serials: Iterable[str]) -> None:
        for serial in serials:
            board = self.manager.boards.get(serial)
            if board is not None:
                board.wake.set()

    def _label(self, serial: str) -> str:
        board = self.manager.boards.get(serial)
        return board.label if board is not None else serial

    # -- expiry ---------------------------------------------------------------------------------
    async def _expire_forever(self) -> None:
        """End reservations at their expiry, announcing each ENDING_NOTICE before."""
        while True:
            self._changed.clear()
            try:
                await self._expire_due()
            except Exception as error:  # a store failure: try again soon, never stop the timer
                log.error("could not end expired reservations (retrying): %s", error)
                await asyncio.sleep(1.0)
                continue
            now = time.time()
            deadlines = [r.expires_at for r in self._reservations.values()]
            deadlines += [r.expires_at - ENDING_NOTICE for r in self._reservations.values() if not r.warned]
            delay = min([MAX_TIMER_SLEEP, *(deadline - now for deadline in deadlines)])
            try:
                async with asyncio.timeout(max(delay, 0.0)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _expire_due(self) -> None:
        async with self._lock:
            now = time.time()
            due = [r for r in self._reservations.values() if r.expires_at <= now]
            await self._finish(due, "expired")
            for reservation in self._reservations.values():
                if not reservation.warned and reservation.expires_at - now <= ENDING_NOTICE:
                    reservation.warned = True
                    self.events.publish(
                        reservation.name,
                        {
                            "event": "reservation_ending",
                            "serial": reservation.serial,
                            "expires_at": reservation.expires_at,
                            "seconds_left": max(0.0, round(reservation.expires_at - now, 3)),
                        },
                    )
