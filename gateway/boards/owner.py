"""What a board's task asks of the device manager that owns it and of the layers above the boards.

The board layer (gateway/boards/) imports nothing of gateway/evaluation/ or gateway/http/: what it
needs of them is stated here as Protocols, and gateway/service.py hands the implementations in
(``DeviceManager.serve_reservations``). The Protocols are generic in the board type (``BoardT``,
gateway/boards/board.py's Board) so that this module needs no import of it.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from picofleet.common.changes import ChangeHub
from picofleet.gateway.boards.flashing import FlashingHost

BoardT = TypeVar("BoardT", contravariant=True)


class Reservations(Protocol):
    """What the board layer asks of the reservation book (gateway/evaluation/reservations.py).

    The board's task tells the book how a reserved board fares; the manager asks it which flash a
    board may take.
    """

    def of(self, serial: str) -> object | None:
        """The reservation of board ``serial``, ``None`` when it is not reserved."""
        ...

    def flash_refusal(self, serial: str) -> str | None:
        """Why board ``serial`` must take no flash but its evaluation firmware, or ``None``."""
        ...

    async def set_ready(self, serial: str, ready: bool) -> None:
        """Whether the reserved board serves its reservation now."""
        ...

    async def board_failed(self, serial: str, reason: str) -> None:
        """The reserved board failed (it is Broken): its reservation ends."""
        ...

    async def board_deleted(self, serial: str) -> None:
        """The reserved board is being deleted: its reservation ends."""
        ...


class ReservedBoardServer(Protocol[BoardT]):
    """What serves a reserved board (gateway/evaluation/reserved_board.py)."""

    async def serve(self, board: BoardT) -> None:
        """A reserved board with its port open: install its evaluation firmware, or serve its
        client's evaluations until there are none or ``board.wake`` is set."""
        ...


class NoReservations:
    """A gateway without reservations (the device manager alone, as in tests of boards and flashing)."""

    def of(self, serial: str) -> None:
        """Never reserved."""
        return None

    def flash_refusal(self, serial: str) -> None:
        """Every flash is taken."""
        return None

    async def set_ready(self, serial: str, ready: bool) -> None:
        """Nothing to tell."""

    async def board_failed(self, serial: str, reason: str) -> None:
        """Nothing to end."""

    async def board_deleted(self, serial: str) -> None:
        """Nothing to end."""

    async def serve(self, board: object) -> None:
        """Never called: no board is reserved."""


class BoardOwner(FlashingHost, Protocol[BoardT]):
    """What a board's task asks of the device manager that owns it (gateway/boards/manager.py)."""

    @property
    def reservations(self) -> Reservations:
        """The reservation book."""
        ...

    @property
    def reserved_boards(self) -> ReservedBoardServer[BoardT]:
        """What serves the reserved boards."""
        ...

    @property
    def paused(self) -> bool:
        """Whether the gateway's target status is Paused."""
        ...

    @property
    def changes(self) -> ChangeHub[str]:
        """Where a board publishes that its record changed (``"device:<LocalUUID>"``)."""
        ...

    async def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Run a blocking plugin hook within its time limit."""
        ...

    async def persist(self, record: dict[str, Any]) -> None:
        """Store a board's record durably."""
        ...

    async def provision(self, board: BoardT, board_type: str) -> None:
        """Give a new board its identity and store it."""
        ...

    async def forget(self, board: BoardT) -> None:
        """Delete the board's record."""
        ...

    def wake_later(self, board: BoardT, delay: float) -> None:
        """Wake the board's task after ``delay`` seconds."""
        ...

    def request_reapply(self, reason: str) -> None:
        """Ask the fleet sync to apply the stored target again (a board drifted, left local mode...)."""
        ...

    async def collect_assets(self) -> None:
        """Garbage-collect the asset cache."""
        ...
