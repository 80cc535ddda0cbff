"""What the dashboard and the control panel serve alike: page rendering with their security
headers, the shared static files, and the sign-in form's check of a secret.

Every page is rendered by Jinja2 with autoescaping on and carries :data:`PAGE_HEADERS`: a
Content-Security-Policy that lets only the service's own scripts and styles run (no inline script
at all, so even markup that slipped into a page could not execute), no caching, no sniffing, no
referrer, no framing. :func:`check_sign_in` is the one login rule both forms follow: the secret is
read from the POST body (never a URL), compared in constant time, and wrong attempts are throttled
per client address (:class:`~.sessions.LoginThrottle`).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from picofleet.common.web.sessions import LoginThrottle

__all__ = [
    "CLIENT_HEADER",
    "PAGE_HEADERS",
    "Pages",
    "check_sign_in",
    "client_address",
    "common_static",
    "form_field",
    "redirect",
]

COMMON_STATIC = Path(__file__).parent / "static"
CLIENT_HEADER = "X-Picofleet-Client"
"""The client address a front worker adds to the requests it forwards (see :func:`client_address`)."""
MAX_FORM_BYTES = 8192
"""The largest sign-in form body read (a token or key is a few dozen characters)."""

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
"""Headers of every page: only this origin's own scripts and styles run, nothing frames it."""


class Pages:
    """A service's page templates (a folder of Jinja2 files, autoescaped)."""

    def __init__(self, folder: Path) -> None:
        self.templates = Environment(
            loader=FileSystemLoader(folder),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """``template`` rendered with ``context`` (autoescaped), with :data:`PAGE_HEADERS`."""
        page = self.templates.get_template(template).render(**context)
        return HTMLResponse(page, status_code, PAGE_HEADERS)


def redirect(to: str = "/") -> RedirectResponse:
    """303 to ``to`` (after a form, or to the sign-in form), never cached."""
    return RedirectResponse(to, 303, headers={"Cache-Control": "no-store"})


def common_static() -> Mount:
    """``/static/common/{file}``: the stylesheet and ``live.js`` both services' pages share."""
    return Mount("/static/common", StaticFiles(directory=COMMON_STATIC), name="static-common")


def client_address(connection: HTTPConnection) -> str:
    """The address whose wrong attempts the throttle counts: the TCP peer's. A request with no peer
    address came over the primary's Unix socket from a front worker of ``--workers N``, which
    names its own client in :data:`CLIENT_HEADER` (replacing any the client sent); that header is
    trusted there only, never on a TCP connection."""
    if connection.client is None:
        return connection.headers.get(CLIENT_HEADER, "").strip()[:64] or "unknown"
    return connection.client.host or "unknown"


async def form_field(request: Request, name: str) -> str:
    """Field ``name`` of a form POST (``application/x-www-form-urlencoded``), stripped; ``""`` when
    absent or when the body is larger than :data:`MAX_FORM_BYTES`. The body is always read to its
    end: an answer to a request whose body was left unread would end its connection."""
    body = b""
    too_large = False
    async for chunk in request.stream():
        if not too_large:
            body += chunk
            too_large = len(body) > MAX_FORM_BYTES
    if too_large:
        return ""
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=16)
    return (fields.get(name) or [""])[0].strip()


async def check_sign_in(
    request: Request, field: str, expected: str, throttle: LoginThrottle, wrong: str
) -> tuple[str, int] | None:
    """Check the secret in form field ``field`` against ``expected``: ``None`` when it is right,
    else the message and status the form answers with — ``wrong`` (401), or "too many attempts,
    try again in N s" (429) once the client's address has too many wrong ones."""
    presented = await form_field(request, field)
    client = client_address(request)
    wait = throttle.check(client)
    if wait is not None:
        return f"too many attempts, try again in {max(1, round(wait))} s", 429
    if not presented or not expected or not secrets.compare_digest(presented.encode(), expected.encode()):
        throttle.failed(client)
        return wrong, 401
    throttle.succeeded(client)
    return None
