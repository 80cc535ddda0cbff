"""One reservation: a board held by a client for an evaluation kind until it expires."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from picofleet.firmware.pico2_ice import pulsecount
from picofleet.gateway.evaluation.clients import ReservationError
from picofleet.gateway.evaluation.jobs import check_args

KINDS = {"pulsecount": pulsecount.FIRMWARE}
"""Evaluation kinds, and the firmware (as ``identify`` names it) a board runs for each."""
PREPARING, READY = "preparing", "ready"


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


def check_kind_args(args: Any) -> dict[str, Any]:
    """The arguments of the (one) evaluation kind, ``pulsecount``'s (evaluation_jobs.check_args), or a 400."""
    try:
        return check_args(args, "args")
    except ValueError as error:
        raise ReservationError(400, str(error)) from None
