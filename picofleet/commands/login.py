"""`picofleet login URL` and `picofleet logout`: remember the fleet service and its admin token.

`login` reads the admin token without echoing it (or, with ``--token-stdin``, as one line on
stdin — never as an argument, which every user of the machine could read in ``ps``), checks it
against the service (``GET /v1/fleets``) and only then stores URL and token
(:mod:`picofleet.credentials`: ``$XDG_CONFIG_HOME/picofleet/login.json``, mode 0600). From then
on `picofleet fleet ...` needs neither ``--url`` nor ``--token``; flags and the environment
variables still win over the stored login. `logout` removes the stored login.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from urllib.parse import urlsplit

import httpx

from picofleet import credentials


class LoginError(Exception):
    """Ends the command with this one-line reason (nothing is stored)."""


def _read_token(args: argparse.Namespace) -> str:
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise LoginError("no token on stdin (--token-stdin reads one line)")
        return token
    try:
        token = getpass.getpass(f"admin token for {args.url}: ").strip()
    except EOFError:
        token = ""
    if not token:
        raise LoginError("no admin token given")
    return token


def _check(url: str, token: str) -> None:
    """Raise :class:`LoginError` unless the fleet service at ``url`` accepts ``token``."""
    try:
        response = httpx.get(url + "/v1/fleets", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    except httpx.HTTPError as error:
        raise LoginError(f"cannot reach the fleet service at {url}: {error}") from None
    if response.status_code in (401, 403):
        raise LoginError(f"wrong admin token for {url} (HTTP {response.status_code}); nothing stored")
    try:
        fleets = response.json()
    except ValueError:
        fleets = None
    if response.status_code != 200 or not isinstance(fleets, list):
        raise LoginError(
            f"{url} answered GET /v1/fleets with HTTP {response.status_code}, not a fleet list: "
            "is it a picofleet fleet service?"
        )


def cmd_login(args: argparse.Namespace) -> int:
    """Check the admin token against the fleet service at URL, then store both (mode 0600) so that
    `picofleet fleet ...` needs neither ``--url`` nor ``--token``."""
    url = args.url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoginError(f"not an http(s) URL: {args.url}")
    args.url = url
    token = _read_token(args)
    _check(url, token)
    path = credentials.save(url, token)
    print(f"logged in to {url}; the login is stored in {path} (mode 0600)")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    """Remove the stored login."""
    path = credentials.remove()
    if path is None:
        print(f"not logged in (no {credentials.login_path()})")
    else:
        print(f"logged out: removed {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `picofleet login` or `picofleet logout`; errors are one line and exit status 1."""
    try:
        return int(args.login_run(args) or 0)
    except (LoginError, credentials.CredentialsError, OSError) as error:
        print(f"picofleet {args.command}: {error}", file=sys.stderr)
        return 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet login` and `picofleet logout`."""
    login = subparsers.add_parser(
        "login", help="remember a fleet service URL and its admin token", description=cmd_login.__doc__
    )
    login.add_argument("url", metavar="URL", help="the fleet service, e.g. http://fleet.example:8080")
    login.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the admin token as one line on stdin instead of asking for it (without echo)",
    )
    login.set_defaults(run=run, login_run=cmd_login)
    logout = subparsers.add_parser("logout", help="forget the stored login", description=cmd_logout.__doc__)
    logout.set_defaults(run=run, login_run=cmd_logout)
