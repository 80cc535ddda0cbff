"""Reservations of boards by researchers (clients), with tokens and expiry (docs/api.md, "Reservations").

A *client* is a name plus a secret token (``rt_...``): the first reservation under a new name
mints the token and hands it out once; the store keeps only its SHA-256, and every later request
for that name must present it (a name alone never acts for another client: 403). One
:class:`Reservation` holds one board until it is ended or expires. Reservations and clients are
stored (TinyDB tables ``reservations`` and ``reservationClients``), so they survive a restart of
the gateway, also a ``kill -9`` (store writes are atomic).

The book only decides who holds which board and until when; the board's task (gateway/boards/board.py)
acts on it: it installs the evaluation firmware, shows ``Reserved`` and serves the evaluations.
Every change is published to the client's events (gateway/evaluation/events.py): ``reservation_ready``,
``reservation_ending`` (:data:`ENDING_NOTICE` before the end, or at once for a shorter
reservation) and ``reservation_ended`` (``reason``: ``ended``, ``expired``, ``failed`` with the
``error``, or ``deleted``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tinydb import TinyDB

from picofleet.common.http.errors import ApiError
from picofleet.firmware.pico2_ice import pulsecount
from picofleet.gateway.boards.record import Status
from picofleet.gateway.evaluation.events import EventBus
from picofleet.gateway.evaluation.jobs import check_args
from picofleet.gateway.models import APPLICATION, BoardError, BoardRef, EvaluationFirmware

if TYPE_CHECKING:
    from picofleet.gateway.boards.board import Board
    from picofleet.gateway.boards.manager import DeviceManager

log = logging.getLogger("picofleet.reservations")

KINDS = {"pulsecount": pulsecount.FIRMWARE}
"""Evaluation kinds, and the firmware (as ``identify`` names it) a board runs for each."""
ENDING_NOTICE = 300.0
"""Seconds before its end that a reservation announces ``reservation_ending``."""
EVALUATION_FIRMWARE_TIMEOUT = 10.0
"""Time limit of ``picofleet_evaluation_firmware`` (twice what the contract asks)."""
TOKEN_PREFIX = "rt_"
RESERVATIONS = "reservations"
CLIENTS = "reservationClients"
PREPARING, READY = "preparing", "ready"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
MAX_TIMER_SLEEP = 60.0
"""The expiry timer looks again at least this often (the wall clock may jump)."""


class ReservationError(ApiError):
    """A reservation request that cannot be done; ``status`` is the HTTP status to answer."""


@dataclass
class Reservation:
    """One board held by one client until ``expires_at`` (epoch seconds)."""

    serial: str
    name: str
    kind: str
    args: dict[str, Any]
    created_at: float
    expires_at: float
    state: str = PREPARING
    warned: bool = field(default=False, compare=False)  # reservation_ending was published

    @property
    def firmware(self) -> str:
        """The firmware name the board must report to serve this reservation."""
        return KINDS[self.kind]

    def public(self) -> dict[str, Any]:
        """The reservation as the API shows and the store keeps it."""
        return {
            "serial": self.serial,
            "name": self.name,
            "kind": self.kind,
            "args": dict(self.args),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state,
        }

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> Reservation:
        """A reservation read back from the store (its board is not ready before it is seen)."""
        return cls(
            serial=str(doc["serial"]),
            name=str(doc["name"]),
            kind=str(doc["kind"]),
            args=dict(doc.get("args") or {}),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
        )


def token_digest(token: str) -> str:
    """What the store keeps of a token (tokens are random: a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: Any) -> str:
    """A client name, or a 400 saying what a name may be."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ReservationError(
            400,
            "name must be 1 to 64 letters, digits or . _ @ + -, starting with a letter or digit, "
            f"not {name!r}",
        )
    return name


def check_kind_args(args: Any) -> dict[str, Any]:
    """The arguments of the (one) evaluation kind, ``pulsecount``'s (evaluation_jobs.check_args), or a 400."""
    try:
        return check_args(args, "args")
    except ValueError as error:
        raise ReservationError(400, str(error)) from None


async def evaluation_firmware(
    manager: DeviceManager, board: BoardRef, kind: str
) -> EvaluationFirmware | None:
    """Ask the plugins which firmware ``board`` needs for ``kind`` (``None``: it cannot run it).

    Raises BoardError when a plugin fails or is slower than EVALUATION_FIRMWARE_TIMEOUT.
    """
    hook = functools.partial(
        manager.plugins.hook.picofleet_evaluation_firmware,
        board=board,
        kind=kind,
        config=manager.config,
    )
    try:
        async with asyncio.timeout(EVALUATION_FIRMWARE_TIMEOUT):
            firmware = await manager.run_blocking(hook)
    except BoardError:
        raise
    except TimeoutError:
        raise BoardError(
            f"picofleet_evaluation_firmware did not return within {EVALUATION_FIRMWARE_TIMEOUT:g} s"
        ) from None
    except Exception as error:
        log.exception("hook picofleet_evaluation_firmware raised")
        raise BoardError(
            f"picofleet_evaluation_firmware failed in a plugin: {type(error).__name__}: {error}"
        ) from None
    if firmware is not None and not isinstance(firmware, EvaluationFirmware):
        raise BoardError(f"a plugin's picofleet_evaluation_firmware returned {firmware!r}")
    return firmware


class ReservationBook:
    """Every reservation of this gateway's boards (``manager.reservations``).

    Changes are serialised by one lock and stored before they show; the event loop only.
    """

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager
        self.events = EventBus()
        self.released = asyncio.Event()
        """Set whenever a board was released (the fleet sync then re-applies its target)."""
        self._reservations: dict[str, Reservation] = {}
        self._claimed: set[str] = set()  # boards the reserve under way took (not stored yet)
        self._clients: dict[str, str] = {}  # name -> token digest
        self._names_by_digest: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the stored clients and reservations (after the boards), then run the expiry timer."""
        for client in await self.manager.store.all(CLIENTS):
            self._remember_client(str(client["name"]), str(client["token_sha256"]))
        gone = []
        for doc in await self.manager.store.all(RESERVATIONS):
            reservation = Reservation.from_stored(doc)
            if reservation.serial in self.manager.boards and reservation.kind in KINDS:
                self._reservations[reservation.serial] = reservation
            else:
                gone.append(reservation)
        if gone:
            await self._remove_stored([reservation.serial for reservation in gone])
        log.info("%d reservation(s) of %d client(s)", len(self._reservations), len(self._clients))
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
        if not token:
            return None
        return self._names_by_digest.get(token_digest(token))

    def check_token(self, name: str, token: str | None) -> None:
        """Raise a 403 unless ``token`` is client ``name``'s."""
        digest = self._clients.get(name)
        if digest is None:
            raise ReservationError(403, f"no client is named {name!r}: reserve boards first")
        if not token or not hmac.compare_digest(digest, token_digest(token)):
            raise ReservationError(403, f"the name {name!r} belongs to another client")

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
            if name in self._clients:
                self.check_token(name, token)
            else:
                minted = TOKEN_PREFIX + secrets.token_urlsafe(32)
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
                await self._store(made, client)
                if minted:
                    self._remember_client(name, token_digest(minted))
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
                    self.released.set()  # a fleet flash refused while they were claimed: apply it now
            self._wake([reservation.serial for reservation in made])
            self._changed.set()
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
            await self._store(changed)
            self._changed.set()
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
            try:
                await self._store([reservation])
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
        await self._remove_stored([reservation.serial for reservation in reservations])
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
        self.released.set()
        self._changed.set()

    def _wake(self, serials: Iterable[str]) -> None:
        for serial in serials:
            board = self.manager.boards.get(serial)
            if board is not None:
                board.wake.set()

    def _label(self, serial: str) -> str:
        board = self.manager.boards.get(serial)
        return board.label if board is not None else serial

    def _remember_client(self, name: str, digest: str) -> None:
        self._clients[name] = digest
        self._names_by_digest[digest] = name

    async def _store(self, reservations: list[Reservation], client: dict[str, Any] | None = None) -> None:
        """Write reservations (and a new client) in one atomic store transaction."""
        docs = [reservation.public() for reservation in reservations]
        if not docs and client is None:
            return

        def job(db: TinyDB) -> None:
            table = db.table(RESERVATIONS)
            for doc in docs:
                table.remove(lambda stored, serial=doc["serial"]: stored.get("serial") == serial)
                table.insert(doc)
            if client is not None:
                db.table(CLIENTS).insert(client)

        await self.manager.store.transact(job)

    async def _remove_stored(self, serials: list[str]) -> None:
        wanted = set(serials)

        def job(db: TinyDB) -> None:
            db.table(RESERVATIONS).remove(lambda stored: stored.get("serial") in wanted)

        await self.manager.store.transact(job)

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
