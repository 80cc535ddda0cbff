"""A small client of the balena Supervisor HTTP API (the endpoints the gateway uses).

Every endpoint but ``/ping`` needs the API key; balena documents it as the query parameter
``?apikey=KEY``, which is how it is sent. The key never appears in an error message or a log
line (httpx's own messages name the full URL, so none of them is passed on).
"""

from __future__ import annotations

from typing import Any

import httpx

REQUEST_TIMEOUT = 5.0
"""Seconds one request to the supervisor may take (it is local; a slower one is not answering)."""


class SupervisorError(Exception):
    """A request to the supervisor failed; the message says why, for an operator."""


class SupervisorUnreachable(SupervisorError):
    """The supervisor did not answer (connection refused, reset, timed out)."""


class SupervisorRefused(SupervisorError):
    """The supervisor answered with an error status (a wrong API key: 401)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _describe(error: httpx.HTTPError) -> str:
    """What went wrong, without the URL (it carries the API key)."""
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {REQUEST_TIMEOUT:g} s"
    if isinstance(error, httpx.ConnectError):
        cause = error.__cause__ or error.__context__
        text = str(getattr(cause, "strerror", None) or cause or error) or type(error).__name__
        return f"cannot connect ({text})"
    return f"{type(error).__name__}: {error}"


class SupervisorClient:
    """Requests to one supervisor, through an ``httpx.AsyncClient`` the caller owns."""

    def __init__(self, http: httpx.AsyncClient, address: str, api_key: str | None):
        self.http = http
        self.address = address
        self._params = {"apikey": api_key} if api_key else {}

    async def _request(self, method: str, path: str, *, authenticated: bool = True) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                self.address + path,
                params=self._params if authenticated else None,
                timeout=REQUEST_TIMEOUT,
            )
        except httpx.HTTPError as error:
            raise SupervisorUnreachable(
                f"the balena supervisor at {self.address} does not answer {method} {path}: {_describe(error)}"
            ) from None
        if response.status_code >= 400:
            hint = " (is BALENA_SUPERVISOR_API_KEY right?)" if response.status_code == 401 else ""
            raise SupervisorRefused(
                f"the balena supervisor answered {response.status_code} {response.reason_phrase} "
                f"to {method} {path}{hint}",
                response.status_code,
            )
        return response

    async def _json(self, path: str) -> dict[str, Any]:
        response = await self._request("GET", path)
        try:
            answer = response.json()
        except ValueError:
            raise SupervisorRefused(
                f"the balena supervisor's answer to GET {path} is not JSON", 502
            ) from None
        if not isinstance(answer, dict):
            raise SupervisorRefused(f"the balena supervisor's answer to GET {path} is not an object", 502)
        return answer

    async def ping(self) -> None:
        """``GET /ping``: returns once the supervisor answers ``OK`` (no API key needed)."""
        await self._request("GET", "/ping", authenticated=False)

    async def device(self) -> dict[str, Any]:
        """``GET /v1/device``: commit, status, update_pending, os_version, supervisor_version..."""
        return await self._json("/v1/device")

    async def applications_state(self) -> dict[str, Any]:
        """``GET /v2/applications/state``: every application's services and their status."""
        return await self._json("/v2/applications/state")

    async def blink(self) -> None:
        """``POST /v1/blink``: the device's identification LED blinks for 15 s."""
        await self._request("POST", "/v1/blink")
