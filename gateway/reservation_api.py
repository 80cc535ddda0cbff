"""The reservation endpoints of the gateway's API (docs/api.md, "Reservations"): filled by #6."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from .manager import DeviceManager


def reservation_routes(manager: DeviceManager) -> list[BaseRoute]:
    """The routes of reservations and the event websocket."""
    return []
