"""Request fields several of the gateway's route modules read (reservations, evaluations)."""

from __future__ import annotations

from typing import Any

from picofleet.common.http.errors import ApiError


def serials_field(value: Any) -> list[str] | None:
    """A request's ``serials``: absent/null, or a non-empty list of distinct strings (else a 400)."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
        or len(set(value)) != len(value)
    ):
        raise ApiError(400, "serials must be a non-empty list of distinct board serials")
    return value
