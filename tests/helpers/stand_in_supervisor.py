"""A stand-in balena supervisor with its proxyvisor, on 127.0.0.1, for tests/test_proxyvisor.py.

A real HTTP server (Starlette served by hypercorn, in a thread of its own) implementing the routes of
balena-supervisor v14.7.1 — the last version with the proxyvisor, src/proxyvisor.js at tag v14.7.1 —
as it served them, with the same status codes and (text) error bodies:

* ``GET /ping`` (no key), then balena's API key (``?apikey=KEY`` or ``Authorization: Bearer KEY``,
  else 401) on ``GET /v1/device``, ``GET /v2/applications/state``, ``POST /v1/blink`` and
* ``GET /v1/devices``; ``POST /v1/devices {"appId", "device_type"?}`` (400 "appId must be a positive
  integer"; an appId the API does not know: 400 "Provisioning failed, invalid appId or
  credentials"; else 201 with the balena API's device: ``id``, ``uuid``, ``device_name``...);
  ``GET /v1/devices/:uuid`` (404 "Device not found", 410 "Device deleted");
  ``POST /v1/devices/:uuid/logs {"message", "timestamp"?, "isSystem"?}`` (202 "OK");
  ``PUT /v1/devices/:uuid {"status", "is_online", "commit", "releaseId", "environment", "config"}``
  (validated as the proxyvisor did; 400 "At least one device attribute must be updated");
  ``GET /v1/dependent-apps``; ``GET /v1/dependent-apps/:appId/assets/:commit`` (the tar of the
  app's ``/assets`` at that commit; 404 "Not found" for another commit, as the supervisor knows
  only the app's current one).

It records every request (with its JSON body), and sends the proxyvisor's hooks to a gateway as
``sendUpdate``/``sendDeleteHook`` did: ``PUT {endpoint}{uuid}`` with ``{appId, commit, environment,
config}`` (200 = acknowledged, 202 = to be repeated) and ``DELETE {endpoint}{uuid}`` (200: the
device leaves its database).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import secrets
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers.fake_supervisor import APPLICATIONS, DEVICE

NAMES = itertools.cycle(["holy-sunset", "quiet-river", "bold-meadow", "late-comet", "red-harbor"])


def assets_tar(files: dict[str, bytes]) -> bytes:
    """A tar of ``files`` as the supervisor makes it from an image's /assets (``tar -cvf X *``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class Call:
    """One request the stand-in received."""

    method: str
    path: str
    body: Any
    authorized: bool


@dataclass
class DependentApp:
    """A dependent application as the supervisor's ``dependentApp`` table holds it."""

    app_id: int
    name: str
    commit: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    tar: bytes = b""


class StandInSupervisor:
    """The stand-in; :meth:`start` it, :meth:`close` it. ``url`` is its address."""

    def __init__(self, api_key: str = "test-supervisor-key"):
        self.api_key = api_key
        self.calls: list[Call] = []
        self.apps: dict[int, DependentApp] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[dict[str, Any]]] = {}
        self._guard = threading.Lock()
        self._next_id = 1000
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> StandInSupervisor:
        """Serve in a thread of its own; returns once it listens."""
        started = threading.Event()

        def serve_forever() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            config = Config()
            config.bind = [f"fd://{self._sock.detach()}"]
            config.errorlog = None
            config.accesslog = None
            loop.call_soon(started.set)
            loop.run_until_complete(serve(self.app(), config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
            loop.close()

        self._thread = threading.Thread(target=serve_forever, daemon=True, name="stand-in-supervisor")
        self._thread.start()
        started.wait(10)
        return self

    def close(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    # -- the test's side --------------------------------------------------------------------------
    def add_app(self, app_id: int, name: str) -> None:
        """A dependent app of the device's application (as the cloud's target state gives it)."""
        with self._guard:
            self.apps[app_id] = DependentApp(app_id, name)

    def release(self, app_id: int, commit: str, assets: dict[str, bytes]) -> None:
        """The dependent app's new commit, its image's /assets holding ``assets``."""
        with self._guard:
            app = self.apps[app_id]
            app.commit, app.tar = commit, assets_tar(assets)

    def recorded(self, method: str, path: str) -> list[Call]:
        """The calls of ``method path`` so far."""
        with self._guard:
            return [call for call in self.calls if call.method == method and call.path == path]

    def device_logs(self, uuid: str) -> list[dict[str, Any]]:
        """The log lines received for a device."""
        with self._guard:
            return list(self.logs.get(uuid, []))

    def device(self, uuid: str) -> dict[str, Any] | None:
        """A device of the dependent-device table (a copy), or ``None``."""
        with self._guard:
            device = self.devices.get(uuid)
            return dict(device) if device is not None else None

    def send_update(self, endpoint: str, uuid: str) -> httpx.Response:
        """The proxyvisor's ``sendUpdate``: ``PUT {endpoint}{uuid}`` with the device's target state
        (the app's commit; the environment and config the cloud gave it)."""
        with self._guard:
            device = self.devices[uuid]
            app = self.apps[int(device["appId"])]
            target = {
                "appId": app.app_id,
                "commit": app.commit,
                "environment": device.get("targetEnvironment") or {},
                "config": device.get("targetConfig") or {},
            }
        return httpx.put(f"{endpoint}{uuid}", json=target, timeout=10)

    def send_delete(self, endpoint: str, uuid: str) -> httpx.Response:
        """The proxyvisor's ``sendDeleteHook``: ``DELETE {endpoint}{uuid}``; on 200 the device
        leaves the database (it keeps it, marked for deletion, otherwise)."""
        with self._guard:
            if uuid in self.devices:
                self.devices[uuid]["markedForDeletion"] = True
        response = httpx.delete(f"{endpoint}{uuid}", timeout=10)
        if response.status_code == 200:
            with self._guard:
                self.devices.pop(uuid, None)
        return response

    # -- the HTTP side ----------------------------------------------------------------------------
    def app(self) -> Starlette:
        """The routes, as v14.7.1 served them."""

        async def record(request: Request) -> tuple[Any, bool]:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            key = request.query_params.get("apikey")
            authorized = (
                key == self.api_key or request.headers.get("authorization") == f"Bearer {self.api_key}"
            )
            with self._guard:
                self.calls.append(Call(request.method, request.url.path, body, authorized))
            return body, authorized

        def authenticated(handler: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                body, authorized = await record(request)
                if not authorized:
                    return PlainTextResponse("Unauthorized", status_code=401)
                return await handler(request, body)

            return endpoint

        async def ping(request: Request) -> Response:
            await record(request)
            return PlainTextResponse("OK")

        async def device(request: Request, body: Any) -> Response:
            return JSONResponse(DEVICE)

        async def applications(request: Request, body: Any) -> Response:
            return JSONResponse(APPLICATIONS)

        async def blink(request: Request, body: Any) -> Response:
            return PlainTextResponse("OK")

        def parsed(device: dict[str, Any]) -> dict[str, Any]:  # parseDeviceFields
            out = {k: v for k, v in device.items() if k not in ("markedForDeletion", "logs_channel")}
            out["id"] = device["deviceId"]
            for key in ("config", "environment", "targetConfig", "targetEnvironment"):
                out[key] = out.get(key) or {}
            return out

        async def list_devices(request: Request, body: Any) -> Response:
            with self._guard:
                return JSONResponse([parsed(d) for d in self.devices.values()])

        async def provision(request: Request, body: Any) -> Response:
            body = body if isinstance(body, dict) else {}
            app_id = body.get("appId")
            try:
                number = int(app_id) if app_id is not None else 0
            except (TypeError, ValueError):
                number = 0
            if number <= 0:
                return PlainTextResponse("appId must be a positive integer", status_code=400)
            with self._guard:
                if number not in self.apps:  # the API answers id: null
                    return PlainTextResponse(
                        "Provisioning failed, invalid appId or credentials", status_code=400
                    )
                self._next_id += 1
                uuid = secrets.token_hex(16)
                device_type = body.get("device_type") or "generic"
                name = next(NAMES)
                dev = {
                    "id": self._next_id,
                    "uuid": uuid,
                    "device_name": name,
                    "device_type": device_type,
                    "belongs_to__application": {"__id": number},
                    "is_managed_by__device": {"__id": 1},
                    "is_online": False,
                    "status": "Inactive",
                }
                self.devices[uuid] = {
                    "uuid": uuid,
                    "appId": number,
                    "device_type": device_type,
                    "deviceId": self._next_id,
                    "name": name,
                    "status": "Inactive",
                    "is_online": False,
                    "commit": None,
                    "config": None,
                    "environment": None,
                    "targetCommit": None,
                    "targetConfig": None,
                    "targetEnvironment": None,
                    "markedForDeletion": False,
                }
            return JSONResponse(dev, status_code=201)

        def find(uuid: str) -> Response | dict[str, Any]:
            device = self.devices.get(uuid)
            if device is None:
                return PlainTextResponse("Device not found", status_code=404)
            if device.get("markedForDeletion"):
                return PlainTextResponse("Device deleted", status_code=410)
            return device

        async def get_device(request: Request, body: Any) -> Response:
            with self._guard:
                found = find(request.path_params["uuid"])
                return found if isinstance(found, Response) else JSONResponse(parsed(found))

        async def post_log(request: Request, body: Any) -> Response:
            body = body if isinstance(body, dict) else {}
            with self._guard:
                found = find(request.path_params["uuid"])
                if isinstance(found, Response):
                    return found
                line = {"message": body.get("message"), "timestamp": body.get("timestamp")}
                if body.get("isSystem") is not None:
                    line["isSystem"] = body["isSystem"]
                self.logs.setdefault(found["uuid"], []).append(line)
            return PlainTextResponse("OK", status_code=202)

        def invalid(body: dict[str, Any]) -> str | None:  # validateDeviceFields
            def string(value: Any) -> bool:
                return isinstance(value, str) and value != ""  # null is not undefined: refused

            if "is_online" in body and not isinstance(body["is_online"], bool):
                return "is_online must be a boolean"
            for key, message in (
                ("status", "status must be a non-empty string"),
                ("commit", "commit must be a non-empty string"),
                ("releaseId", "commit must be a non-empty string"),
            ):
                if key in body and not string(body[key]):
                    return message
            for key, message in (
                ("environment", "environment must be an object"),
                ("config", "config must be an object"),
            ):
                if key in body and not isinstance(body[key], dict | list):
                    return message
            return None

        async def put_device(request: Request, body: Any) -> Response:
            body = body if isinstance(body, dict) else {}
            problem = invalid(body)
            if problem is not None:
                return PlainTextResponse(problem, status_code=400)
            fields = {
                key: body[key]
                for key in ("status", "is_online", "commit", "releaseId", "config", "environment")
                if key in body
            }
            if not fields:
                return PlainTextResponse("At least one device attribute must be updated", status_code=400)
            with self._guard:
                found = find(request.path_params["uuid"])
                if isinstance(found, Response):
                    return found
                found.update(fields)
                return JSONResponse(parsed(found))

        async def dependent_apps(request: Request, body: Any) -> Response:
            with self._guard:
                return JSONResponse(
                    [
                        {"id": a.app_id, "commit": a.commit, "name": a.name, "config": a.config}
                        for a in self.apps.values()
                    ]
                )

        async def assets(request: Request, body: Any) -> Response:
            with self._guard:
                app = self.apps.get(int(request.path_params["app_id"]))
                if app is None or app.commit != request.path_params["commit"]:
                    return PlainTextResponse("Not found", status_code=404)
                return Response(app.tar, media_type="application/x-tar")

        return Starlette(
            routes=[
                Route("/ping", ping),
                Route("/v1/device", authenticated(device)),
                Route("/v2/applications/state", authenticated(applications)),
                Route("/v1/blink", authenticated(blink), methods=["POST"]),
                Route("/v1/devices", authenticated(list_devices), methods=["GET"]),
                Route("/v1/devices", authenticated(provision), methods=["POST"]),
                Route("/v1/devices/{uuid}", authenticated(get_device), methods=["GET"]),
                Route("/v1/devices/{uuid}", authenticated(put_device), methods=["PUT"]),
                Route("/v1/devices/{uuid}/logs", authenticated(post_log), methods=["POST"]),
                Route("/v1/dependent-apps", authenticated(dependent_apps)),
                Route("/v1/dependent-apps/{app_id:int}/assets/{commit}", authenticated(assets)),
            ]
        )
