"""A fleet's live events (``GET /v1/fleets/{name}/events``, Server-Sent Events) as a reader sees
them: the whole view on connect, a new release (with its commit message) after a push, a gateway's
changed report within a moment, one board's or every board's new log lines; the admin token or the
dashboard's session cookie (with the CSRF header on changes); a stream through a ``--workers N``
front worker that streams; and a reader that never reads, dropped at bounded cost.

Real fleet service processes on loopback; readers are raw sockets speaking HTTP/1.0 (no chunked
framing: what arrives is the event text, as it arrives).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from starlette.requests import Request
from starlette.responses import Response

from picofleet.common.web.sessions import CSRF_HEADER, SessionCookies
from picofleet.fleet.http.context import SESSION_PURPOSE, LogFollower
from tests.helpers.fleet import FleetProcess, FrontWorkerProcess, git
from tests.helpers.fleet_repo import next_release, push_first_release
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(180)

LINE = {"time": "2026-01-01T00:00:00.000Z", "level": "info"}


class EventReader:
    """A reader of an event stream on its own socket and thread: every event it got, parsed."""

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n{head}\r\n".encode())
        self.raw = b""
        self.events: list[tuple[str, Any]] = []
        self.comments = 0
        self.ended = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                with self._lock:
                    self.raw += chunk
                    self._parse()
        self.ended = True

    def _parse(self) -> None:
        if b"\r\n\r\n" not in self.raw:
            return
        _, body = self.raw.split(b"\r\n\r\n", 1)
        blocks = body.split(b"\n\n")
        self.events, self.comments = [], 0
        for block in blocks[:-1]:  # the last is not complete yet
            lines = block.decode().split("\n")
            if lines[0].startswith(":"):
                self.comments += 1
                continue
            name = lines[0].removeprefix("event: ")
            self.events.append((name, json.loads(lines[1].removeprefix("data: "))))

    @property
    def status(self) -> int | None:
        with self._lock:
            first = self.raw.split(b"\r\n", 1)[0] if b"\r\n" in self.raw else b""
        return int(first.split()[1]) if first else None

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [data for event, data in self.events if event == name]

    def wait(self, name: str, check: Any = lambda data: True, timeout: float = 10.0, after: int = 0) -> Any:
        """The first ``name`` event (from the ``after``-th on) whose data passes ``check``, waiting
        up to ``timeout`` s."""

        def found() -> Any:
            return next((data for data in self.named(name)[after:] if check(data)), None)

        return wait_for(found, timeout, f"a {name!r} event that passes the check")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@contextlib.contextmanager
def reading(url: str, path: str, headers: dict[str, str] | None = None) -> Iterator[EventReader]:
    reader = EventReader(url, path, headers)
    try:
        yield reader
    finally:
        reader.close()


def bearer(fleet: FleetProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.token}"}


def open_streams(fleet: FleetProcess) -> float:
    """``picofleet_fleet_event_streams`` as ``GET /metrics`` answers it."""
    text = fleet.request("GET", "/metrics").text
    found = re.search(r"^picofleet_fleet_event_streams (\S+)$", text, re.MULTILINE)
    assert found, "the gauge is served"
    return float(found.group(1))


def session_cookie(token: str, signed_with: str | None = None) -> str:
    """A dashboard session cookie (``name=value``) as the fleet service issues it for ``token``."""
    secret = hmac.new((signed_with or token).encode(), SESSION_PURPOSE, hashlib.sha256).digest()
    sessions = SessionCookies(secret)
    response = Response()
    scope = {"type": "http", "scheme": "http", "server": ("127.0.0.1", 80), "path": "/", "headers": []}
    sessions.issue(Request(scope), response, "admin")
    return response.headers["set-cookie"].split(";", 1)[0]


def status_of(gateway: dict[str, Any], uuid: str) -> str | None:
    """The status of board ``uuid`` in a ``gateway`` event (``None``: not there)."""
    return next((b["Status"] for b in gateway["boards"] if b["LocalUUID"] == uuid), None)


def board(uuid: str, status: str = "Idle") -> dict[str, Any]:
    return {"LocalUUID": uuid, "BoardType": "pico2-ice", "Status": status}


# -- the view, pushes, reports, logs -------------------------------------------------------------


def test_a_reader_gets_the_fleet_then_each_new_release_with_its_message(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    fleet.create_fleet("lab")
    with reading(fleet.url, "/v1/fleets/lab/events", bearer(fleet)) as reader:
        first = reader.wait("fleet")
        assert reader.status == 200
        assert (first["fleet"]["fleet"], first["releases"], first["gateways"]) == ("lab", [], [])

        head = push_first_release(fleet, tmp_path / "repo")  # committed as "v2.0.0"
        pushed = reader.wait("fleet", lambda d: bool(d["releases"]))
        assert pushed["releases"][-1]["commit"] == head
        assert pushed["releases"][-1]["message"] == "v2.0.0"
        assert pushed["fleet"]["target"] == head

        second = next_release(tmp_path / "repo", "2.1.0")
        git(tmp_path / "repo", "push", "-q", fleet.push_url("lab"), "main")
        moved = reader.wait("fleet", lambda d: d["fleet"]["target"] == second)
        assert [r["message"] for r in moved["releases"]] == ["v2.0.0", "v2.1.0"]

        pinned = fleet.request("PUT", "/v1/fleets/lab/pin", json={"commit": head[:12]})
        assert pinned.status_code == 200, pinned.text
        reader.wait("fleet", lambda d: d["fleet"]["pinned"] == head)
        assert fleet.request("PUT", "/v1/fleets/lab/env/COLOR", json={"value": "red"}).status_code == 200
        reader.wait("fleet", lambda d: d["fleet"]["env"] == {"COLOR": "red"})
    assert [r["message"] for r in fleet.releases("lab")] == ["v2.0.0", "v2.1.0"]


def test_a_gateway_event_follows_a_changed_report_and_logs_follow_their_board(fleet: FleetProcess) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    with (
        reading(fleet.url, "/v1/fleets/lab/events", bearer(fleet)) as view,
        reading(fleet.url, "/v1/fleets/lab/events?logs=b1&boards=0", bearer(fleet)) as one,
        reading(fleet.url, "/v1/fleets/lab/events?logs=*", bearer(fleet)) as every,
    ):
        view.wait("fleet")
        every.wait("fleet")
        gateway = fleet.provision(key, name="bench")
        assert view.wait("gateway", lambda d: d["gateway"] == gateway["gateway"])["name"] == "bench"

        report = {"boards": [board("b1"), board("b2")]}
        started = time.monotonic()
        assert fleet.as_gateway(gateway["key"], "PUT", "/v1/gateway/state", json=report).status_code == 200
        seen = view.wait("gateway", lambda d: len(d["boards"]) == 2, timeout=2.0)
        assert time.monotonic() - started < 2.0
        assert [b["LocalUUID"] for b in seen["boards"]] == ["b1", "b2"]
        flashing = {"boards": [board("b1", "Flashing"), board("b2")]}
        assert fleet.as_gateway(gateway["key"], "PUT", "/v1/gateway/state", json=flashing).status_code == 200
        view.wait("gateway", lambda d: status_of(d, "b1") == "Flashing", timeout=2.0)
        changes = len(view.named("gateway"))
        # the same report again changes nothing: no gateway event before a marker sent after it (a
        # fleet variable's fleet event; a later report could not tell: its key coalesces with a wrong one)
        assert fleet.as_gateway(gateway["key"], "PUT", "/v1/gateway/state", json=flashing).status_code == 200
        assert fleet.request("PUT", "/v1/fleets/lab/env/MARK", json={"value": "1"}).status_code == 200
        marker = view.wait("fleet", lambda d: d["fleet"]["env"].get("MARK") == "1", timeout=2.0)
        with view._lock:
            before_marker = [name for name, _ in view.events[: view.events.index(("fleet", marker))]]
        assert before_marker.count("gateway") == changes, "the unchanged report made a gateway event"
        assert fleet.as_gateway(gateway["key"], "PUT", "/v1/gateway/state", json=report).status_code == 200
        view.wait("gateway", lambda d: status_of(d, "b1") == "Idle", timeout=2.0, after=changes)
        assert len(view.named("gateway")) == changes + 1

        lines = [{**LINE, "board": "b1", "text": "one"}, {**LINE, "board": "b2", "text": "two"}]
        posted = fleet.as_gateway(gateway["key"], "POST", "/v1/gateway/logs", json={"lines": lines})
        assert posted.status_code == 200, posted.text
        both: list[Any] = wait_for(lambda: every.named("logs")[1:] and every.named("logs"), 5, "both lines")
        assert len(both) == 2
        assert {(e["board"], e["lines"][0]["text"]) for e in both} == {("b1", "one"), ("b2", "two")}
        assert all(e["gateway"] == gateway["gateway"] and e["dropped"] == 0 for e in both)
        mine = one.wait("logs")
        assert (mine["board"], [line["text"] for line in mine["lines"]]) == ("b1", ["one"])
        assert set(mine["lines"][0]) == {"time", "level", "text", "gateway"}  # as GET …/logs answers
        more = [{**LINE, "board": "b2", "text": "x"}, {**LINE, "board": "b1", "text": "three"}]
        fleet.as_gateway(gateway["key"], "POST", "/v1/gateway/logs", json={"lines": more})
        one.wait("logs", lambda d: d["lines"][-1]["text"] == "three")
        assert {e["board"] for e in one.named("logs")} == {"b1"}, "only the board followed"
        assert one.named("fleet") == [] and one.named("gateway") == [], "boards=0: log lines only"


def test_a_follower_that_falls_behind_keeps_the_newest_lines_and_counts_the_rest() -> None:
    import asyncio

    async def main() -> None:
        follower = LogFollower(None, limit=1000)
        for n in range(5000):
            follower.add("b1", {"text": str(n)})
        assert follower.pending() == 1000
        lines, dropped = await follower.wait(0)
        assert (len(lines), dropped, lines[0][1]["text"]) == (1000, 4000, "4000")
        assert await follower.wait(0.01) == ([], 0)

    asyncio.run(main())


# -- auth ----------------------------------------------------------------------------------------


def test_the_stream_needs_the_admin_token_or_a_session_and_changes_need_the_csrf_header(
    fleet: FleetProcess,
) -> None:
    fleet.create_fleet("lab")
    with reading(fleet.url, "/v1/fleets/lab/events") as anonymous:
        wait_for(lambda: anonymous.ended, 5, "the answer to a reader without credentials")
        assert anonymous.status == 401
    with reading(fleet.url, "/v1/fleets/nope/events", bearer(fleet)) as unknown:
        wait_for(lambda: unknown.ended, 5, "the answer for an unknown fleet")
        assert unknown.status == 404
    assert fleet.request("GET", "/v1/fleets/lab/events?boards=2").status_code == 400

    cookie = {"Cookie": session_cookie(fleet.token)}
    with reading(fleet.url, "/v1/fleets/lab/events", cookie) as signed_in:
        assert signed_in.wait("fleet")["fleet"]["fleet"] == "lab"
    assert fleet.request("GET", "/v1/fleets/lab", headers={"Authorization": "", **cookie}).status_code == 200

    no_csrf = fleet.request(
        "PUT", "/v1/fleets/lab/env/A", json={"value": "1"}, headers={"Authorization": "", **cookie}
    )
    assert no_csrf.status_code == 403
    assert CSRF_HEADER in no_csrf.json()["error"]
    assert "A" not in fleet.fleet("lab")["env"]
    with_csrf = fleet.request(
        "PUT",
        "/v1/fleets/lab/env/A",
        json={"value": "1"},
        headers={"Authorization": "", CSRF_HEADER: "1", **cookie},
    )
    assert with_csrf.status_code == 200, with_csrf.text

    forged = {"Cookie": session_cookie("some-other-token"), "Authorization": ""}
    assert fleet.request("GET", "/v1/fleets/lab", headers=forged).status_code == 401
    tampered = {"Cookie": cookie["Cookie"][:-2] + "xx", "Authorization": ""}
    assert fleet.request("GET", "/v1/fleets/lab", headers=tampered).status_code == 401


# -- front workers -------------------------------------------------------------------------------


@pytest.fixture
def fleet_and_worker(tmp_path: Path) -> Iterator[tuple[FleetProcess, FrontWorkerProcess]]:
    """A ``--workers 2`` fleet service and a front worker of it on its own port."""
    fleet = FleetProcess(tmp_path / "data", "--workers", "2")
    fleet.start()
    try:
        worker = FrontWorkerProcess(fleet)
        worker.start()
        try:
            yield fleet, worker
        finally:
            worker.stop()
    finally:
        fleet.stop()


def test_a_stream_through_a_front_worker_streams_and_ends_with_its_reader(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess],
) -> None:
    fleet, worker = fleet_and_worker
    fleet.create_fleet("lab")
    with reading(worker.url, "/v1/fleets/lab/events", bearer(fleet)) as reader:
        reader.wait("fleet")
        assert open_streams(fleet) == 1
        for value in ("1", "2", "3"):  # each small event arrives on its own: nothing buffers it
            started = time.monotonic()
            assert fleet.request("PUT", "/v1/fleets/lab/env/N", json={"value": value}).status_code == 200
            reader.wait("fleet", lambda d, v=value: d["fleet"]["env"].get("N") == v, timeout=2.0)
            assert time.monotonic() - started < 2.0
    wait_for(lambda: open_streams(fleet) == 0, 10, "the primary to close the stream of a reader gone")


# -- a reader that never reads -------------------------------------------------------------------


def lab_logger(fleet: FleetProcess) -> Any:
    """Fleet ``lab`` with a gateway reporting board ``b1``; ``post(n)`` posts n batches of 1,000 of
    its log lines of 2,000 characters (~2 MB each)."""
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateway = fleet.provision(key)
    reported = fleet.as_gateway(gateway["key"], "PUT", "/v1/gateway/state", json={"boards": [board("b1")]})
    assert reported.status_code == 200, reported.text
    batch = {"lines": [{**LINE, "board": "b1", "text": "x" * 2000}] * 1000}

    def post(times: int) -> None:
        for _ in range(times):
            answer = fleet.as_gateway(gateway["key"], "POST", "/v1/gateway/logs", json=batch, timeout=30)
            assert answer.status_code == 200, answer.text

    return post


def stalled_reader(fleet: FleetProcess, url: str) -> socket.socket:
    """A reader of every log line of fleet ``lab`` (at ``url``) that never reads, on a small receive
    window."""
    host, port = url.removeprefix("http://").split(":")
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    stalled.connect((host, int(port)))
    stalled.sendall(
        f"GET /v1/fleets/lab/events?logs=*&boards=0 HTTP/1.0\r\nHost: x\r\n"
        f"Authorization: Bearer {fleet.token}\r\n\r\n".encode()
    )
    return stalled


def test_readers_that_never_read_are_dropped_directly_and_through_a_front_worker_at_bounded_cost(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess],
) -> None:
    fleet, worker = fleet_and_worker
    post = lab_logger(fleet)
    direct, relayed = stalled_reader(fleet, fleet.url), stalled_reader(fleet, worker.url)
    try:
        wait_for(lambda: open_streams(fleet) == 2, 10, "the stalled readers' streams to open")
        service = psutil.Process(fleet.pid)
        post(10)  # the rings, buffers and allocator at their working size
        before = service.memory_info().rss
        post(40)  # 80 MB more of lines the readers never take
        grown = service.memory_info().rss - before
        assert grown < 40 * 1024 * 1024, f"the service grew by {grown / 2**20:.0f} MiB"
        assert open_streams(fleet) <= 2
        # their sockets never drain: dropped after 30 s without a write going through, the one
        # through the front worker there too (the worker ends its link to the primary)
        wait_for(lambda: open_streams(fleet) == 0, 60, "the stalled readers to be dropped", interval=0.5)
        post(5)  # and the service goes on
        with reading(worker.url, "/v1/fleets/lab/events", bearer(fleet)) as reader:
            reader.wait("fleet")  # the worker relays the next reader's stream as before
    finally:
        direct.close()
        relayed.close()
