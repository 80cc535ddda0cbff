"""Standard reason phrases on the status line (``HTTP/1.1 200 OK``), as edge-node-manager sent.

Hypercorn's HTTP/1.1 writer builds ``h11.Response`` events without a reason, so the status line
reads ``HTTP/1.1 200``. HTTP clients ignore the phrase, but people compare ``curl -i`` output
with ENM's README; :func:`install` makes h11 fill in the standard phrase when none is given.
"""

from __future__ import annotations

import inspect
from http import HTTPStatus
from typing import Any

import h11

_installed = False


def install() -> None:
    """Make ``h11.Response`` default its reason to the standard phrase of its status code."""
    global _installed
    original = h11.Response.__init__
    if _installed or "reason" not in inspect.signature(original).parameters:
        return  # already done, or an h11 whose Response changed: leave it alone

    def init_with_reason(self: h11.Response, *args: Any, reason: bytes | str = b"", **kwargs: Any) -> None:
        if not reason:
            try:
                reason = HTTPStatus(kwargs["status_code"]).phrase.encode()
            except (KeyError, ValueError):
                reason = b""
        original(self, *args, reason=reason, **kwargs)

    h11.Response.__init__ = init_with_reason  # type: ignore[method-assign, assignment]
    _installed = True
