"""What the evaluation scheduler asks of the boards, of their device manager and of the reservation book.

Stated as Protocols so that the scheduler (scheduler.py, queues.py) depends on no more of the boards
than it uses: gateway/boards/board.py's Board, gateway/boards/manager.py's DeviceManager and
gateway/evaluation/reservations.py's ReservationBook implement them; tests/test_evaluations.py
passes fakes. ``BoardKeeper`` is generic in the board type its boards have (``B``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.evaluation.events import EventBus

T = TypeVar("T")


class ServedBoard(Protocol):
    """What the scheduler uses of a board it runs evaluations on."""

    @property
    def serial(self) -> str:
        """The board's LocalUUID."""
        ...

    @property
    def label(self) -> str:
        """How log lines name the board."""
        ...

    @property
    def port(self) -> Any:
        """The board's open serial port (the pulse-count firmware's), or ``None``."""
        ...

    @property
    def wake(self) -> asyncio.Event:
        """Set when the board's task has something else to do: serving returns between units."""
        ...

    @property
    def sightings(self) -> Mapping[str, object]:
        """What discovery sees of the board, by mode (empty: offline)."""
        ...

    @property
    def broken(self) -> bool:
        """Whether the board is Broken."""
        ...

    @property
    def evaluation_ready(self) -> bool:
        """Whether the board runs the evaluation firmware for its reservation with its port open."""
        ...

    @property
    def record(self) -> Mapping[str, Any]:
        """The board's record (``StatusReason``)."""
        ...

    async def update(self, **fields: Any) -> None:
        """Change record fields (Status Evaluating)."""
        ...

    async def close_port(self) -> None:
        """Close the board's port (it failed)."""
        ...


B = TypeVar("B", bound=ServedBoard)


class BoardKeeper(Protocol[B]):
    """What the scheduler asks of the device manager."""

    @property
    def config(self) -> GatewayConfig:
        """The gateway's settings (``data``, ``assets_max_bytes``: where bitstreams are kept)."""
        ...

    @property
    def boards(self) -> Mapping[str, B]:
        """Every board, by LocalUUID."""
        ...

    def find(self, uuid: str) -> B | None:
        """A provisioned board by LocalUUID or ResinUUID."""
        ...

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking board I/O in the board I/O thread pool."""
        ...

    def updating(self) -> AbstractAsyncContextManager[None]:
        """Hold the platform's update lock while a board evaluates."""
        ...

    async def request_restart(self, board: B) -> None:
        """Restart a board that stopped answering."""
        ...


class ReservationView(Protocol):
    """What the scheduler reads of one reservation."""

    @property
    def serial(self) -> str:
        """The reserved board."""
        ...

    @property
    def name(self) -> str:
        """The client holding it."""
        ...

    @property
    def args(self) -> Mapping[str, Any]:
        """The evaluation arguments given at reserve time."""
        ...


class ReservationLookup(Protocol):
    """What the scheduler asks of the reservation book."""

    @property
    def events(self) -> EventBus:
        """The clients' events (``evaluation_result``)."""
        ...

    def of(self, serial: str) -> ReservationView | None:
        """The reservation of board ``serial``, if it is reserved."""
        ...

    def of_client(self, name: str) -> Sequence[ReservationView]:
        """The reservations of client ``name``, oldest first."""
        ...
