"""The control panel's routes: the panel page, signing in with the API key, and the static files.

``GET /`` is the panel: who the gateway is (its name, id, version, and its fleet once provisioned)
rendered on the server; the ENM status, the boards, reservations and running evaluations are
filled in by ``panel.js`` from ``GET /v1/gateway/events`` with DOM APIs and ``textContent`` only,
and its buttons call the gateway's own API routes (``PUT /v1/enm/status``,
``PUT /v1/devices/{uuid}/identify``, ``PUT /v1/devices/{uuid}/restart``) with ``fetch``.

Without ``PICOFLEET_API_KEY`` the gateway's API is open (as edge-node-manager's) and so is the
panel: no sign-in. With a key set, ``GET /`` answers a sign-in form (a password field for the key)
to a browser without a valid session; ``POST /login`` (form field ``key``) answers the form again
with "wrong API key" (401) for a wrong key, 429 "too many attempts, try again in N s" after too many
from one address (the gateway's ``login_throttle``), and for the right key sets the session cookie
(``GatewayApi.sessions``: signed, HttpOnly, SameSite=Strict) and redirects (303) to ``/``. The key
is only ever in a POST body, never in a URL or a page. ``POST /logout`` clears the cookie. The
panel's ``fetch`` calls then carry the cookie and the ``X-Picofleet-Request`` header, which the
API-key guard (gateway/http/guard.py) accepts in place of ``X-Api-Key``.

``GET /static/common/{file}`` serves the files both services' pages share
(``picofleet/common/web/static``: the stylesheet and ``live.js``), ``GET /static/panel/{file}``
the panel's own script. Every page carries a Content-Security-Policy allowing only this origin's
own scripts and styles (no inline script), and is never cached.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from picofleet import __version__
from picofleet.common.web.pages import Pages, check_sign_in, common_static, form_field, redirect
from picofleet.gateway.http.context import GatewayApi, gateway_of
from picofleet.gateway.http.guard import PANEL_SUBJECT

__all__ = ["ROUTES", "identity", "login", "logout", "panel"]

HERE = Path(__file__).parent
pages = Pages(HERE / "templates")


def _key_set(api: GatewayApi) -> bool:
    """Whether the gateway has an API key (``PICOFLEET_API_KEY``), so the panel needs signing in."""
    return api.sessions is not None


def _signed_in(request: Request) -> bool:
    """Whether ``request`` may see the panel: no key is set, or it carries a valid session cookie."""
    sessions = gateway_of(request).sessions
    return sessions is None or sessions.subject(request) is not None


def _login_form(api: GatewayApi, message: str | None = None, status_code: int = 200) -> HTMLResponse:
    return pages.render("login.html", status_code, gateway=identity(api), message=message)


def identity(api: GatewayApi) -> dict[str, Any]:
    """Who the gateway is, as the panel's header shows it: ``name`` (the balena device name, else
    the host name), ``id`` (as ``GET /v1/gateway``), ``version``, ``fleet`` (the fleet it was
    provisioned into, or ``None``) and ``fleet_url`` (the fleet service it follows, or ``None``)."""
    fleet = api.manager.application_uuid
    return {
        "name": api.bridge.env.device_name or socket.gethostname(),
        "id": api.reservations.gateway_id,
        "version": __version__,
        "fleet": str(fleet) if fleet else None,
        "fleet_url": api.manager.config.fleet_url,
    }


async def panel(request: Request) -> Response:
    """``GET /``: the control panel (filled live by panel.js), or the sign-in form when an API key
    is set and the browser is not signed in."""
    api = gateway_of(request)
    if not _signed_in(request):
        return _login_form(api)
    return pages.render("panel.html", gateway=identity(api), key_set=_key_set(api))


async def login(request: Request) -> Response:
    """``POST /login`` (form field ``key``): sign in with the gateway's API key (see the module
    docstring for the answers); without a key set there is nothing to sign in to: 303 to ``/``."""
    api = gateway_of(request)
    sessions, expected = api.sessions, api.manager.config.api_key
    if sessions is None or not expected:
        await form_field(request, "key")  # read: a body left unread would end the connection
        return redirect("/")
    refused = await check_sign_in(request, "key", expected, api.login_throttle, "wrong API key")
    if refused is not None:
        return _login_form(api, *refused)
    response = redirect("/")
    sessions.issue(request, response, PANEL_SUBJECT)
    return response


async def logout(request: Request) -> Response:
    """``POST /logout``: end the session (the cookie is cleared) and go back to ``/``."""
    response = redirect("/")
    sessions = gateway_of(request).sessions
    if sessions is not None:
        sessions.clear(response)
    return response


ROUTES: list[BaseRoute] = [
    Route("/", panel, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    common_static(),
    Mount("/static/panel", StaticFiles(directory=HERE / "static"), name="static-panel"),
]
"""The panel's routes, handed to ``create_app(..., pages=ROUTES)`` by gateway/service.py."""
