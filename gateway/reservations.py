"""Reservations of boards by researchers (clients), with tokens and expiry: filled by #6."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manager import DeviceManager


class ReservationBook:
    """Every reservation of this gateway's boards (``manager.reservations``)."""

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager

    async def start(self) -> None:
        """Load the stored reservations (after the boards were loaded)."""

    async def stop(self) -> None:
        """Stop the expiry timers."""
