"""Signing in to a page: signed session cookies, a throttle on wrong secrets, and the CSRF rule.

**Session cookies.** After a correct secret on a login form (the fleet's admin token, a gateway's
API key) the browser gets a cookie naming the subject and the time it was issued, signed with
itsdangerous (HMAC-SHA1 over a key derived from the service's own secret — the field's library for
this; Starlette's own sessions use it). The cookie is ``HttpOnly`` (no script can read it),
``SameSite=Strict`` (no other site's page can make the browser send it), ``Path=/``, ``Secure``
when the page was served over https, and expires after ``max_age_s``. It holds no secret: the
secret never reaches the page, a URL or a log. Rotating the service's secret changes the signing
key, so every session ends with it. Nothing is stored server-side, so every replica or worker of
a service checks the same cookie.

**Throttle.** :class:`LoginThrottle` counts wrong secrets per client address in a sliding window;
past the limit the form answers 429 with the seconds to wait, so the secret cannot be guessed at
network speed. Memory is bounded (at most ``max_clients`` addresses are tracked).

**CSRF.** A request authenticated by the cookie that changes something (POST, PUT, PATCH, DELETE)
must also carry the :data:`CSRF_HEADER` header. The pages' ``fetch()`` calls always send it; a form
or image on another site cannot set a custom header, and a cross-site ``fetch()`` that tries is
stopped by the browser's CORS preflight (the services answer no CORS). ``SameSite=Strict`` already
keeps the cookie off cross-site requests; the header is the second lock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict, deque
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

__all__ = ["CSRF_HEADER", "LoginThrottle", "SessionCookies", "needs_csrf_header"]

CSRF_HEADER = "X-Picofleet-Request"
"""The header a cookie-authenticated request that changes something must carry (any value)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def needs_csrf_header(connection: HTTPConnection) -> bool:
    """Whether a cookie-authenticated request lacks the CSRF header its method requires."""
    method = connection.scope.get("method", "GET")
    return method not in SAFE_METHODS and CSRF_HEADER.lower() not in connection.headers


class SessionCookies:
    """Issue, check and clear a service's signed session cookie (see the module docstring)."""

    def __init__(
        self,
        secret: bytes,
        *,
        cookie: str = "picofleet_session",
        max_age_s: int = 8 * 3600,
        path: str = "/",
        salt: str = "picofleet-session",
    ) -> None:
        self.cookie = cookie
        self.max_age_s = max_age_s
        self.path = path
        self._serializer = URLSafeTimedSerializer(secret, salt=salt)

    @classmethod
    def derived(cls, secret: str, purpose: bytes, **options: Any) -> SessionCookies:
        """Session cookies signed with HMAC-SHA256(``secret``, ``purpose``): a service's own secret
        (the admin token, an API key) is never the signing key itself, and a new secret ends every
        session signed under the old one."""
        return cls(hmac.new(secret.encode(), purpose, hashlib.sha256).digest(), **options)

    def issue(self, connection: HTTPConnection, response: Response, subject: str) -> None:
        """Set a new session for ``subject`` on ``response`` (``Secure`` when ``connection`` came
        over https)."""
        response.set_cookie(
            self.cookie,
            self._serializer.dumps({"sub": subject}),
            max_age=self.max_age_s,
            path=self.path,
            secure=connection.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def subject(self, connection: HTTPConnection) -> str | None:
        """The signed-in subject of ``connection``'s cookie; ``None`` when it has none, or one
        that is tampered with, signed with another secret, or older than ``max_age_s``."""
        session = self._session(connection)
        return session[0] if session is not None else None

    def remaining_s(self, connection: HTTPConnection) -> float | None:
        """Seconds until ``connection``'s session expires (from then on :meth:`subject` refuses
        its cookie), or ``None`` when it has no valid session. What a long response authenticated
        by the cookie (a live event stream) uses to end with the session."""
        session = self._session(connection)
        if session is None:
            return None
        # itsdangerous counts whole seconds and refuses an age *over* max_age: the cookie is
        # refused from signed + max_age + 1 on
        return max(0.0, session[1] + self.max_age_s + 1 - time.time())

    def _session(self, connection: HTTPConnection) -> tuple[str, float] | None:
        """The subject of ``connection``'s valid cookie and when it was signed (Unix time)."""
        value = connection.cookies.get(self.cookie)
        if not value:
            return None
        try:
            data, signed = self._serializer.loads(value, max_age=self.max_age_s, return_timestamp=True)
        except BadSignature:  # SignatureExpired is one too
            return None
        subject = data.get("sub") if isinstance(data, dict) else None
        return (subject, signed.timestamp()) if isinstance(subject, str) else None

    def clear(self, response: Response) -> None:
        """End the session: the browser drops the cookie."""
        response.delete_cookie(self.cookie, path=self.path, httponly=True, samesite="strict")


class LoginThrottle:
    """Wrong secrets per client address: at most ``failures`` within ``window_s`` seconds."""

    def __init__(self, failures: int = 5, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failed: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failed.get(client)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failed[client]
        return times

    def check(self, client: str) -> float | None:
        """Seconds ``client`` must wait before trying again, or ``None`` when it may try now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.failures:
            return None
        return max(0.0, self.window_s - (now - times[0]))

    def failed(self, client: str) -> None:
        """``client`` presented a wrong secret."""
        now = time.monotonic()
        times = self._recent(client, now)
        self._failed[client] = times
        self._failed.move_to_end(client)
        times.append(now)
        while len(times) > self.failures:
            times.popleft()
        while len(self._failed) > self.max_clients:
            self._failed.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """``client`` signed in: its earlier failures are forgotten."""
        self._failed.pop(client, None)
