"""The API key: what protects a gateway's state-changing routes when it listens on 0.0.0.0.

Off by default: without ``PICOFLEET_API_KEY`` (``GatewayConfig.api_key``) the API is as open as
edge-node-manager's, which every ENM client (and the balena supervisor) expects. With a key set,
the ENM and picofleet routes that change the gateway's boards or state — ``PUT /v1/enm/status``,
``PUT /v1/enm/identify``, ``PUT``/``DELETE /v1/devices/{uuid}``, and ``PUT …/restart``,
``PUT …/identify``, ``POST …/flash``, ``PUT …/local-mode`` — call :func:`require_key` first,
before reading their body, and answer 401 (and change nothing) unless the request carries

* the header ``X-Api-Key: <key>`` (scripts, curl, ``picofleet``), compared in constant time (wrong
  keys count in the same per-address throttle as the panel's sign-in form: 429 past 5 a minute); or
* the control panel's session cookie (:attr:`GatewayApi.sessions`, issued by its sign-in form
  after the right key) and, for an unsafe method, the ``X-Picofleet-Request`` header (CSRF, see
  picofleet/common/web/sessions.py; without it: 403).

Reads stay open (``GET /v1/devices``, ``/v1/enm/status``, the event stream, ``/metrics``), as ENM's;
the reservation and evaluation routes keep their own client tokens. The balena supervisor cannot
send a key: its proxyvisor hooks (``PUT``/``DELETE /v1/devices/{uuid}``) stay open while the
gateway serves a dependent application (docs/balena.md), and only then.

The key is never logged, shown in an answer, or put into a cookie: the session cookies are signed
with a secret derived from it (:func:`session_cookies`).
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from picofleet.common.http.errors import ApiError
from picofleet.common.web.pages import client_address
from picofleet.common.web.sessions import CSRF_HEADER, SessionCookies, needs_csrf_header
from picofleet.gateway.http.context import GatewayApi, gateway_of

__all__ = ["API_KEY_HEADER", "PANEL_SUBJECT", "key_matches", "require_key", "session_cookies"]

API_KEY_HEADER = "X-Api-Key"
"""The header carrying the gateway's API key."""
PANEL_SUBJECT = "operator"
"""Who a panel session signs in (there is one key, so one kind of user)."""
_SESSION_CONTEXT = b"picofleet gateway panel session v1"
PANEL_COOKIE = "picofleet_panel_session"
"""The panel's cookie: not the dashboard's name, so a gateway and a fleet service on one host
(cookies do not tell ports apart) keep their sessions apart."""


def session_cookies(api_key: str | None) -> SessionCookies | None:
    """The panel's session cookies for ``api_key`` (``None`` without a key: nothing to sign in to).

    Their signing secret is an HMAC of the key, never the key itself, so a leaked secret does not
    give the key, and a new key ends every session signed under the old one.
    """
    if api_key is None:
        return None
    return SessionCookies.derived(api_key, _SESSION_CONTEXT, cookie=PANEL_COOKIE)


def _api_key(api: GatewayApi) -> str | None:
    return api.manager.config.api_key


def key_matches(api: GatewayApi, candidate: str | None) -> bool:
    """Whether ``candidate`` is the gateway's API key (constant time; ``False`` without a key set).

    The panel's sign-in form checks the key it was given with this (and counts failures in
    :attr:`GatewayApi.login_throttle`)."""
    key = _api_key(api)
    if key is None or candidate is None:
        return False
    return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), key.encode())


def require_key(connection: HTTPConnection, *, supervisor_hook: bool = False) -> None:
    """Raise an :class:`ApiError` unless ``connection`` may change the gateway's state (see the
    module docstring): nothing to check without a key; 401 without a (right) ``X-Api-Key`` or a
    valid panel session; 403 for a session request that changes something without the CSRF header.

    ``supervisor_hook``: the route is one of the balena supervisor's proxyvisor hooks, open while
    the gateway serves a dependent application (the supervisor sends no key).
    """
    api = gateway_of(connection)
    if _api_key(api) is None:
        return
    if supervisor_hook and api.bridge.proxyvisor is not None:
        return
    given = connection.headers.get(API_KEY_HEADER)
    if given is not None:
        client = client_address(connection)
        wait = api.login_throttle.check(client)
        if wait is not None:  # the key cannot be guessed at network speed here either
            raise ApiError(
                429,
                f"too many wrong API keys, try again in {max(1, round(wait))} s: nothing was changed",
                {"Retry-After": str(max(1, round(wait)))},
            )
        if key_matches(api, given):
            api.login_throttle.succeeded(client)
            return
        api.login_throttle.failed(client)
        raise ApiError(401, f"wrong API key in {API_KEY_HEADER}: nothing was changed")
    if api.sessions is not None and api.sessions.subject(connection) is not None:
        if needs_csrf_header(connection):
            raise ApiError(
                403,
                f"a request from the control panel must carry the {CSRF_HEADER} header: nothing was changed",
            )
        return
    raise ApiError(
        401,
        f"this gateway's API key is needed to change anything ({API_KEY_HEADER} header, or sign in "
        "on the control panel at /); nothing was changed",
    )
