"""`GET /v1/gateway/events`: a watcher of a real gateway with virtual boards sees the whole view on
connect, then each change live — a board unplugged turns Offline, a flash's progress rises, a
pause and a reservation show — without polling."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.boards import app_uf2, rack
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.helpers.slow_plugins import write_plugin

JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}
Event = tuple[str, Any]


class EventReader:
    """Reads a gateway's event stream in a thread, keeping every event (name, data) in order.

    A raw socket speaking HTTP/1.0 (no chunked framing), so that :meth:`close` can shut it down:
    closing a socket another thread is blocked reading sends nothing, and the gateway would not
    see the reader go."""

    def __init__(self, url: str) -> None:
        self.events: list[Event] = []
        self.headers: dict[str, str] = {}
        self._lock = threading.Lock()
        parts = urlsplit(url)
        self._sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self._sock.sendall(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name = None
        try:
            with self._sock.makefile("rb") as stream:
                status = stream.readline()
                assert b" 200 " in status, status
                headers = {}
                while (line := stream.readline().rstrip(b"\r\n")) != b"":
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                self.headers = headers
                for raw in stream:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: ") and name is not None:
                        with self._lock:
                            self.events.append((name, json.loads(line[len("data: ") :])))
                        name = None
        except (OSError, ValueError):
            return  # closed by the test or the gateway

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def wait(self, predicate: Callable[[Event], bool], timeout: float, what: str) -> Event:
        """The first event (in stream order) ``predicate`` holds for, waiting up to ``timeout`` s."""

        def found() -> Event | None:
            return next((event for event in self.snapshot() if predicate(event)), None)

        return wait_for(found, timeout, what, interval=0.01)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the reading thread wakes; the gateway sees EOF
        self._thread.join(5)
        self._sock.close()


def device_events(reader: EventReader, serial: str) -> list[dict[str, Any]]:
    return [data for name, data in reader.snapshot() if name == "device" and data["LocalUUID"] == serial]


def open_streams(gateway: GatewayProcess) -> float:
    text = gateway.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "picofleet_gateway_event_streams":
                return sample.value
    raise AssertionError("no picofleet_gateway_event_streams in /metrics")


def test_connect_sends_the_whole_view_and_an_unplugged_board_turns_offline_live(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2")
    devices = idle_boards(gateway, 2)
    serial = devices[0]["LocalUUID"]
    reader = EventReader(f"{gateway.url}/v1/gateway/events")
    try:
        reader.wait(lambda e: e[0] == "evaluations", 10, "the view sent on connect")
        assert reader.headers["content-type"].startswith("text/event-stream")
        assert reader.headers["cache-control"] == "no-store"
        first = reader.snapshot()[:4]
        assert [name for name, _ in first] == ["devices", "status", "reservations", "evaluations"]
        assert first[0][1] == gateway.devices()  # exactly what GET /v1/devices answers
        assert first[1][1] == {"currentStatus": "Running", "targetStatus": "Running"}
        assert first[2][1] == {"reservations": []}
        assert first[3][1] == []
        assert open_streams(gateway) == 1

        rack(gateway.data, "unplug", serial=serial)
        offline = reader.wait(
            lambda e: e[0] == "device" and e[1]["LocalUUID"] == serial and e[1]["Status"] == "Offline",
            5,
            "a device event saying the unplugged board is Offline",
        )
        assert offline[1]["Port"] is None
        assert offline[1] == gateway.get(f"/v1/devices/{serial}").json()
        other = devices[1]["LocalUUID"]

        rack(gateway.data, "plug", serial=serial)

        def back_idle() -> int | None:
            """Where the event saying the board is back Idle is (after the Offline one)."""
            events = reader.snapshot()
            return next(
                (
                    at
                    for at in range(events.index(offline) + 1, len(events))
                    if events[at][0] == "device"
                    and events[at][1]["LocalUUID"] == serial
                    and events[at][1]["Status"] == "Idle"
                ),
                None,
            )

        back = wait_for(back_idle, 10, "the board back Idle", interval=0.01)
        # only what changed is sent: nothing of the other board from connect until the board is back
        until_back = reader.snapshot()[:back]
        assert not [data for name, data in until_back if name == "device" and data["LocalUUID"] == other]
    finally:
        reader.close()
    wait_for(lambda: open_streams(gateway) == 0, 10, "the closed stream to be counted out")


SLOW_WRITE = '''
import time
from picofleet.gateway import core_hooks
from picofleet.gateway.hookspecs import hookimpl

@hookimpl(tryfirst=True)
def picofleet_write_uf2(board, drive, uf2, progress):
    """Write the drive as the built-in hook does, as slowly as a real USB drive (~0.6 MB/s)."""
    def slowly(done, total):
        progress(done, total)
        time.sleep(0.05)
    return core_hooks.picofleet_write_uf2(board=board, drive=drive, uf2=uf2, progress=slowly)
'''


def test_a_flash_streams_rising_progress_then_the_new_commit(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_plugin(tmp_path / "site", "slow_write", SLOW_WRITE)
    gateway = gateway_factory("--simulate", "1", env={"PYTHONPATH": str(tmp_path / "site")})
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    reader = EventReader(f"{gateway.url}/v1/gateway/events")
    try:
        reader.wait(lambda e: e[0] == "evaluations", 10, "the view sent on connect")
        image = app_uf2("2.0.0", size=256 * 1024)
        response = httpx.post(
            f"{gateway.url}/v1/devices/{serial}/flash?commit=c0ffee",
            content=image,
            headers=OCTETS,
            timeout=30,
        )
        assert response.status_code == 202, response.text
        reader.wait(
            lambda e: (
                e[0] == "device"
                and e[1]["Commit"] == "c0ffee"
                and e[1]["Status"] == "Idle"
                and e[1]["Progress"] is None
            ),
            30,
            "the flashed board Idle with its new commit",
        )
    finally:
        reader.close()
    records = device_events(reader, serial)
    assert "Flashing" in [record["Status"] for record in records]
    percents = [record["Progress"]["percent"] for record in records if record["Progress"]]
    assert len(set(percents)) >= 2, percents  # seen while it rose, not only at the end
    assert percents == sorted(percents), percents
    assert all(record["Progress"]["total"] == len(image) for record in records if record["Progress"])
    assert records[-1]["Progress"] is None and records[-1]["FirmwareVersion"] == "picofleet-app 2.0.0"


def test_pause_and_a_reservation_show_as_they_happen(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2")
    idle_boards(gateway, 2)
    reader = EventReader(f"{gateway.url}/v1/gateway/events")
    try:
        reader.wait(lambda e: e[0] == "evaluations", 10, "the view sent on connect")
        paused = gateway.put("/v1/enm/status", content='{"targetStatus":"Paused"}', headers=JSON)
        assert paused.status_code == 200
        reader.wait(
            lambda e: e[0] == "status" and e[1] == {"currentStatus": "Paused", "targetStatus": "Paused"},
            10,
            "a status event saying Paused",
        )
        assert gateway.open_ports() == []  # it said Paused once the ports were free
        running = gateway.put("/v1/enm/status", content='{"targetStatus":"Running"}', headers=JSON)
        assert running.status_code == 200
        reader.wait(
            lambda e: e[0] == "status" and e[1]["targetStatus"] == "Running", 10, "a status event: Running"
        )
        idle_boards(gateway, 2)

        created = httpx.post(f"{gateway.url}/v1/reservations", json={"name": "alice", "count": 1}, timeout=30)
        assert created.status_code == 201, created.text
        serial = created.json()["reservations"][0]["serial"]
        _, shown = reader.wait(
            lambda e: e[0] == "reservations" and e[1]["reservations"],
            10,
            "a reservations event with alice's reservation",
        )
        assert [(r["name"], r["serial"]) for r in shown["reservations"]] == [("alice", serial)]
        assert "token" not in json.dumps(shown)
        token = created.json()["token"]
        ended = httpx.post(
            f"{gateway.url}/v1/reservations/end",
            json={"name": "alice"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert ended.status_code == 200, ended.text
        wait_for(
            lambda: (
                [data for name, data in reader.snapshot() if name == "reservations"][-1]
                == {"reservations": []}
            ),
            10,
            "a reservations event once it ended",
        )
    finally:
        reader.close()
