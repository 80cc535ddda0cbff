"""Reading a request, bounded: JSON bodies, uploads and numeric query parameters (else an
:class:`~.errors.ApiError`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request

from picofleet.common.http.errors import ApiError

MAX_JSON_BODY = 1024 * 1024
"""The largest JSON request body accepted by default (a 413 beyond)."""
MAX_INT_DIGITS = 4300
"""The most digits a JSON integer may have (Python's own default bound for ``int(str)``): a longer
one is refused as malformed JSON before any conversion, whatever the interpreter's setting."""

Number = TypeVar("Number", int, float)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    """A JSON integer, refused (``ValueError``, the reason) when it has more than MAX_INT_DIGITS digits."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"a number with {digits} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; ``ValueError`` when it is beyond a double's range."""
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
        raise ValueError(f"the number {shown} is out of range (not a finite double)")
    return value


async def json_body(request: Request, limit: int = MAX_JSON_BODY) -> Any:
    """The request's JSON body; 413 past ``limit`` bytes, 400 ``malformed JSON: ...`` when it is not JSON.

    Also refused as malformed: NaN and infinities, integers of more than MAX_INT_DIGITS digits and
    numbers beyond a double's range (they could not be stored or answered as standard JSON).
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"a JSON body may be at most {limit} bytes")
    try:
        return json.loads(
            body, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
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


def query_number(
    request: Request,
    name: str,
    default: str,
    convert: Callable[[str], Number],
    bounds: tuple[float, float],
    problem: str,
) -> Number:
    """A numeric query parameter within ``bounds`` (``default`` when absent), else a 400 ``problem``."""
    try:
        value = convert(request.query_params.get(name, default))
    except ValueError:
        raise ApiError(400, problem) from None
    if not bounds[0] <= value <= bounds[1]:
        raise ApiError(400, problem)
    return value
