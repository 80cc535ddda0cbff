"""The clients of reservations (researchers): a name plus a secret token, of which only a hash is kept.

The first reservation under a new name mints the token (``rt_...``) and hands it out once; the
store keeps only its SHA-256, and every later request for that name must present it (a name alone
never acts for another client: 403).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from picofleet.common.http.errors import ApiError

TOKEN_PREFIX = "rt_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class ReservationError(ApiError):
    """A reservation request that cannot be done; ``status`` is the HTTP status to answer."""


def token_digest(token: str) -> str:
    """What the store keeps of a token (tokens are random: a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def mint_token() -> str:
    """A new client's token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: Any) -> str:
    """A client name, or a 400 saying what a name may be."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ReservationError(
            400,
            "name must be 1 to 64 letters, digits or . _ @ + -, starting with a letter or digit, "
            f"not {name!r}",
        )
    return name


class Clients:
    """The known clients: each name's token digest, and back."""

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}  # name -> token digest
        self._names: dict[str, str] = {}  # token digest -> name

    def __contains__(self, name: object) -> bool:
        return name in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def remember(self, name: str, digest: str) -> None:
        """Client ``name`` has the token of this digest."""
        self._digests[name] = digest
        self._names[digest] = name

    def client_of(self, token: str | None) -> str | None:
        """The name of the client whose token this is, or ``None``."""
        if not token:
            return None
        return self._names.get(token_digest(token))

    def check_token(self, name: str, token: str | None) -> None:
        """Raise a 403 unless ``token`` is client ``name``'s."""
        digest = self._digests.get(name)
        if digest is None:
            raise ReservationError(403, f"no client is named {name!r}: reserve boards first")
        if not token or not hmac.compare_digest(digest, token_digest(token)):
            raise ReservationError(403, f"the name {name!r} belongs to another client")
