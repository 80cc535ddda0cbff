"""The evaluation scheduler: bitstreams evaluated on reserved boards: filled by #6."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .board import Board
    from .manager import DeviceManager


class EvaluationScheduler:
    """Queued evaluation work and the boards doing it (``manager.evaluations``)."""

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager

    async def serve(self, board: Board) -> None:
        """Run queued work on a reserved, ready board until none is left or ``board.wake`` is set."""

    async def stop(self) -> None:
        """Fail what is still queued (the gateway stops)."""
