"""What every route module of the gateway's API shares: JSON errors and JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_JSON_BODY = 1024 * 1024
"""The largest JSON request body accepted (a 413 beyond)."""


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    """The JSON error answer ``{"error": message}`` every route gives."""
    return JSONResponse({"error": message}, status_code=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_body(request: Request) -> Any:
    """The request's JSON body; 413 past MAX_JSON_BODY, 400 when it is not JSON."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise ApiError(413, f"a JSON body may be at most {MAX_JSON_BODY} bytes")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


async def read_upload(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with a 413 naming ``what`` as soon as it is larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"{what} of {declared} bytes is larger than the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"{what} is larger than the limit of {limit} bytes")
    return bytes(body)


def json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a 400 naming ``what``."""
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return value


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


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
