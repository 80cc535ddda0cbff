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
ASSET_TIMEOUT = 60.0
"""Seconds without progress a dependent app's asset download may take (the supervisor may first
have to tar it out of the app's image)."""


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

    async def _request(
        self, method: str, path: str, *, authenticated: bool = True, body: Any = None
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                self.address + path,
                params=self._params if authenticated else None,
                json=body,
                timeout=REQUEST_TIMEOUT,
            )
        except httpx.HTTPError as error:
            raise SupervisorUnreachable(
                f"the balena supervisor at {self.address} does not answer {method} {path}: {_describe(error)}"
            ) from None
        if response.status_code >= 400:
            raise self._refusal(method, path, response)
        return response

    @staticmethod
    def _refusal(method: str, path: str, response: httpx.Response) -> SupervisorRefused:
        """The error for an error status; the supervisor's own (text) reason is quoted, short."""
        if response.status_code == 401:
            hint = " (is BALENA_SUPERVISOR_API_KEY right?)"
        else:
            text = " ".join(response.text.split())[:200]
            hint = f": {text}" if text else ""
        return SupervisorRefused(
            f"the balena supervisor answered {response.status_code} {response.reason_phrase} "
            f"to {method} {path}{hint}",
            response.status_code,
        )

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

    # -- the proxyvisor: dependent devices (balena-supervisor up to v14.7.1, src/proxyvisor.js) ------
    async def dependent_apps(self) -> list[dict[str, Any]]:
        """``GET /v1/dependent-apps``: ``[{"id", "commit", "name", "config"}]``."""
        response = await self._request("GET", "/v1/dependent-apps")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, list):
            raise SupervisorRefused(
                "the balena supervisor's answer to GET /v1/dependent-apps is not a list", 502
            )
        return [app for app in answer if isinstance(app, dict)]

    async def register_dependent(self, app_id: int) -> dict[str, Any]:
        """``POST /v1/devices {"appId"}``: provision a dependent device of the app (201 with the
        balena API's device: ``uuid``, ``device_name``...)."""
        response = await self._request("POST", "/v1/devices", body={"appId": app_id})
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("uuid"), str) or not answer["uuid"]:
            raise SupervisorRefused("the balena supervisor's answer to POST /v1/devices has no uuid", 502)
        return answer

    async def report_dependent(self, uuid: str, fields: dict[str, Any]) -> None:
        """``PUT /v1/devices/{uuid}``: the device's ``status``, ``is_online``, ``commit``,
        ``environment``, ``config`` (only the fields given)."""
        await self._request("PUT", f"/v1/devices/{uuid}", body=fields)

    async def dependent_log(self, uuid: str, message: str, timestamp: int) -> None:
        """``POST /v1/devices/{uuid}/logs {"message", "timestamp"}``: one log line of the device
        (``timestamp`` in milliseconds since the epoch; the supervisor answers 202)."""
        await self._request(
            "POST", f"/v1/devices/{uuid}/logs", body={"message": message, "timestamp": timestamp}
        )

    async def dependent_asset(self, app_id: int, commit: str, max_bytes: int) -> bytes:
        """``GET /v1/dependent-apps/{appId}/assets/{commit}``: the tar of the ``/assets`` folder of
        the dependent app's image at that commit; a :class:`SupervisorRefused` (413) past ``max_bytes``."""
        path = f"/v1/dependent-apps/{app_id}/assets/{commit}"
        try:
            async with self.http.stream(
                "GET", self.address + path, params=self._params, timeout=ASSET_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._refusal("GET", path, response)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise SupervisorRefused(
                            f"the asset of commit {commit} is larger than {max_bytes} bytes "
                            "(PICOFLEET_MAX_UPLOAD_BYTES)",
                            413,
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise SupervisorUnreachable(
                f"the balena supervisor at {self.address} does not answer GET {path}: {_describe(error)}"
            ) from None
        return b"".join(chunks)
