"""The dashboard's routes: the login form, the fleets list, a fleet's page and the static files.

``GET /`` answers the login form (a password field for the admin token) to a browser that is not
signed in, else the list of fleets. ``POST /login`` (form field ``token``) checks the token: a
wrong one answers the form again with "wrong admin token" (401), too many wrong ones from one
address answer 429 "too many attempts, try again in N s" (the service's ``login_throttle``), the
right one sets the session cookie (the service's ``sessions``: signed, HttpOnly, SameSite=Strict)
and redirects (303) to ``/``; the token is only ever in a POST body, never in a URL.
``POST /logout`` clears the cookie; ``GET /login`` redirects to ``/``. ``GET /fleets/{name}`` is
a fleet's page; without a valid session (none, tampered, expired, or signed before the admin
token was rotated) every page redirects (303) to ``/``, the login form.
``GET /static/common/{file}`` (the files both services' pages share, ``picofleet/common/web/static``)
and ``GET /static/dashboard/{file}`` are the stylesheet and scripts.

Every page is rendered by Jinja2 with autoescaping on, carries a Content-Security-Policy that
allows only this origin's own scripts and styles (no inline script at all), and is never cached.
The fleet's page is a shell: ``dashboard.js`` renders its content from the fleet's event stream
with DOM APIs and ``textContent`` only.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from picofleet.common.web.pages import Pages, check_sign_in, common_static, redirect
from picofleet.fleet.http.context import FleetService, service_of

__all__ = ["ROUTES", "fleet_page", "index", "login", "login_page", "logout"]

HERE = Path(__file__).parent
SUBJECT = "admin"
"""Whom a dashboard session names: the holder of the admin token."""

pages = Pages(HERE / "templates")


def _signed_in(request: Request) -> bool:
    """Whether ``request`` carries a valid dashboard session cookie."""
    return service_of(request).sessions.subject(request) is not None


def _login_form(message: str | None = None, status_code: int = 200) -> HTMLResponse:
    return pages.render("login.html", status_code, message=message)


async def index(request: Request) -> Response:
    """``GET /``: the fleets (name, target, pin, gateways and boards), or the login form when the
    browser is not signed in."""
    if not _signed_in(request):
        return _login_form()
    store = service_of(request).store
    fleets = []
    for fleet in await store.fleets():
        gateways = await store.gateways(fleet["name"])
        boards = [b for g in gateways for b in g.get("boards") or []]
        fleets.append(
            {
                "name": fleet["name"],
                "target": fleet.get("target"),
                "pinned": fleet.get("pinned"),
                "latest": fleet.get("latest"),
                "gateways": len(gateways),
                "boards": len(boards),
                "online": sum(1 for b in boards if b.get("online")),
            }
        )
    return pages.render("fleets.html", fleets=fleets)


async def login(request: Request) -> Response:
    """``POST /login`` (form field ``token``): sign in with the admin token (see the module
    docstring for the answers)."""
    service: FleetService = service_of(request)
    refused = await check_sign_in(
        request, "token", service.admin_token, service.login_throttle, "wrong admin token"
    )
    if refused is not None:
        return _login_form(*refused)
    response = redirect("/")
    service.sessions.issue(request, response, SUBJECT)
    return response


async def login_page(request: Request) -> Response:
    """``GET /login``: the form lives at ``/`` (303 there; a query string, such as a token someone
    put in a URL, is dropped and never read)."""
    return redirect("/")


async def logout(request: Request) -> Response:
    """``POST /logout``: end the session (the cookie is cleared) and go back to the login form."""
    response = redirect("/")
    service_of(request).sessions.clear(response)
    return response


async def fleet_page(request: Request) -> Response:
    """``GET /fleets/{name}``: the fleet's page (filled live by dashboard.js); 404 page for an
    unknown fleet, 303 to the login form without a session."""
    if not _signed_in(request):
        return redirect("/")
    name = request.path_params["name"]
    if await service_of(request).store.fleet(name) is None:
        return pages.render("missing.html", 404, name=name)
    return pages.render("fleet.html", name=name)


ROUTES: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/login", login_page, methods=["GET"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/fleets/{name}", fleet_page, methods=["GET"]),
    common_static(),
    Mount("/static/dashboard", StaticFiles(directory=HERE / "static"), name="static-dashboard"),
]
"""The dashboard's routes, handed to ``create_app(service, pages=ROUTES)`` by fleet/service.py."""
