"""A stand-in balena supervisor on 127.0.0.1, for the supervisor bridge's tests.

It implements the endpoints the gateway uses, as balena documents them: ``GET /ping`` (no key),
``GET /v1/device``, ``GET /v2/applications/state`` and ``POST /v1/blink``, which need the API key
as ``?apikey=KEY`` (or ``Authorization: Bearer KEY``) and answer 401 without it. Every request is
recorded. Its port is reserved at creation (a bound socket that does not listen refuses
connections, as an absent supervisor does), so a test can start it late, stop it ("gone") and
start it again on the same address. :meth:`hang` makes it accept requests without answering.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEVICE = {
    "api_port": 48484,
    "ip_address": "192.168.1.42",
    "commit": "7c3e1f0",
    "status": "Idle",
    "download_progress": None,
    "os_version": "balenaOS 6.0.13",
    "supervisor_version": "16.7.1",
    "update_pending": False,
    "update_downloaded": False,
    "update_failed": False,
    "mac_address": "DC:A6:32:00:00:01",
}
APPLICATIONS = {
    "picofleet": {
        "appId": 1234567,
        "commit": "7c3e1f0",
        "services": {"gateway": {"status": "Running", "releaseId": 42, "downloadProgress": None}},
    }
}


@dataclass(frozen=True)
class Call:
    """One request the stand-in received."""

    method: str
    path: str
    apikey: str | None
    authorized: bool


class FakeSupervisor:
    """The stand-in; ``url`` is known (and refuses connections) before :meth:`start`."""

    def __init__(self, api_key: str = "test-supervisor-key"):
        self.api_key = api_key
        self.calls: list[Call] = []
        self._guard = threading.Lock()
        self._hanging = threading.Event()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = self._bind(0)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FakeSupervisor:
        """Listen and answer (again, on the same port, after :meth:`stop`)."""
        assert self._server is None, "already running"
        sock = self._sock or self._bind(self.port)
        self._sock = None
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler(), bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        server.block_on_close = False
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: close the port (connections are refused until :meth:`start`)."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        """Stop and free the reserved port."""
        self.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def hang(self) -> None:
        """Accept requests but answer none until :meth:`release`."""
        self._released.clear()
        self._hanging.set()

    def release(self) -> None:
        """Answer again (also the requests left hanging)."""
        self._hanging.clear()
        self._released.set()

    # -- what it saw ------------------------------------------------------------------------------
    def recorded(self, method: str, path: str) -> list[Call]:
        """The calls of ``method path`` so far."""
        with self._guard:
            return [call for call in self.calls if call.method == method and call.path == path]

    def _record(self, call: Call) -> None:
        with self._guard:
            self.calls.append(call)

    # -- the HTTP side ----------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests look at ``calls``."""

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                apikey = parse_qs(url.query).get("apikey", [None])[0]
                bearer = self.headers.get("Authorization", "")
                authorized = apikey == fake.api_key or bearer == f"Bearer {fake.api_key}"
                fake._record(Call(method, url.path, apikey, authorized))
                if fake._hanging.is_set():
                    fake._released.wait(30)
                routes = {
                    ("GET", "/ping"): (False, b"OK", "text/plain"),
                    ("GET", "/v1/device"): (True, json.dumps(DEVICE).encode(), "application/json"),
                    ("GET", "/v2/applications/state"): (
                        True,
                        json.dumps(APPLICATIONS).encode(),
                        "application/json",
                    ),
                    ("POST", "/v1/blink"): (True, b"OK", "text/plain"),
                }
                route = routes.get((method, url.path))
                if route is None:
                    self._answer(404, b"Not Found", "text/plain")
                elif route[0] and not authorized:
                    self._answer(401, b"Unauthorized", "text/plain")
                else:
                    self._answer(200, route[1], route[2])

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._handle("POST")

        return Handler
