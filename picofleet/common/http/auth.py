"""The bearer token of a request: ``Authorization: Bearer <token>`` (admin token, gateway key,
researcher token: what it proves is the route's business)."""

from __future__ import annotations

from starlette.datastructures import Headers


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
