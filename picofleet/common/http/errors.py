"""The one error of both services' HTTP routes: :class:`ApiError`, answered as ``{"error": message}``.

Routes and the helpers they call raise it; the exception handlers of :mod:`.handlers`, installed
by each service's ``create_app``, turn it into the JSON answer. Nothing returns "a value or an
error response".
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and ``headers``, if any)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error answer ``{"error": message}`` every route gives."""
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}) or None)
