"""`picofleet fleet logs --follow` and `picofleet fleet boards|gateways --watch`: live from the
fleet's event stream (``GET /v1/fleets/{name}/events``; issue 15, item 7).

The real CLI runs as a subprocess against a real fleet service on loopback; a "gateway" is this
test, reporting boards and posting log lines with its key as a gateway does. Output is read by a
thread and waited on with deadlines; Ctrl-C (SIGINT) ends the CLI with status 0 and no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from picofleet.event_stream import Event, parse
from tests.helpers.fleet import FleetProcess
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)

LIVE_S = 10.0
"""How soon a change must show (the stream delivers within a second; slack for a loaded CI)."""


class Cli:
    """A running ``picofleet fleet ARGS`` whose stdout and stderr lines are collected as they come."""

    def __init__(self, fleet: FleetProcess, tmp_path: Path, *args: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PICOFLEET_")}
        env.update(
            PICOFLEET_FLEET_URL=fleet.url,
            PICOFLEET_ADMIN_TOKEN=fleet.token,
            XDG_CONFIG_HOME=str(tmp_path / "config"),
            PYTHONUNBUFFERED="1",
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "picofleet.cli", "fleet", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_out(self, check: Any, what: str, timeout: float = LIVE_S) -> Any:
        def ready() -> Any:
            if self.process.poll() is not None:
                raise AssertionError(f"the CLI exited ({self.process.returncode}): {self.err}")
            return check(list(self.out))

        return wait_for(ready, timeout, what, fail_on=AssertionError)

    def interrupt(self) -> int:
        """Ctrl-C; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        return status


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def board(uuid: str, status: str = "Idle") -> dict[str, Any]:
    return {"LocalUUID": uuid, "BoardType": "pico2-ice", "Name": f"board-{uuid}", "Status": status}


def report(fleet: FleetProcess, key: str, *boards: dict[str, Any]) -> None:
    response = fleet.as_gateway(key, "PUT", "/v1/gateway/state", json={"boards": list(boards)})
    assert response.status_code == 200, response.text


def post_line(fleet: FleetProcess, key: str, uuid: str, text: str) -> None:
    line = {"board": uuid, "time": now(), "level": "info", "text": text}
    response = fleet.as_gateway(key, "POST", "/v1/gateway/logs", json={"lines": [line]})
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text


def tables(lines: list[str]) -> list[list[str]]:
    """The tables printed so far (a pipe gets each new table after a blank line)."""
    found: list[list[str]] = [[]]
    for line in lines:
        if line:
            found[-1].append(line)
        elif found[-1]:
            found.append([])
    return [table for table in found if table]


def test_logs_follow_prints_a_line_posted_after_it_started(fleet: FleetProcess, tmp_path: Path) -> None:
    key = fleet.provision(fleet.create_fleet("lab")["provisioning_key"])["key"]
    report(fleet, key, board("b1"), board("b2"))
    post_line(fleet, key, "b1", "before the follower")
    follower = Cli(fleet, tmp_path, "logs", "lab", "b1", "--follow")
    try:
        follower.wait_out(lambda out: any(x.endswith("before the follower") for x in out), "the tail")
        post_line(fleet, key, "b1", "after <the> follower started")
        post_line(fleet, key, "b2", "another board's line")  # not this board's: never printed
        out = follower.wait_out(
            lambda out: out if any(x.endswith("after <the> follower started") for x in out) else None,
            "the new line, live",
        )
        row = next(x for x in out if x.endswith("after <the> follower started")).split(maxsplit=2)
        assert row[0].endswith("Z") and row[1] == "INFO"
        assert sum(x.endswith("before the follower") for x in out) == 1  # tail and stream: printed once
    finally:
        status = follower.interrupt()
    assert status == 0
    assert not any("another board" in x for x in follower.out)
    assert follower.err == []  # Ctrl-C is quiet


def test_boards_watch_prints_a_new_table_after_a_change(fleet: FleetProcess, tmp_path: Path) -> None:
    key = fleet.provision(fleet.create_fleet("lab")["provisioning_key"])["key"]
    report(fleet, key, board("b1"))
    watcher = Cli(fleet, tmp_path, "boards", "lab", "--watch")
    try:
        first = watcher.wait_out(lambda out: tables(out), "the first table")[0]
        assert first[0].split()[:2] == ["BOARD", "TYPE"]
        assert [row.split()[0] for row in first[1:]] == ["b1"]
        report(fleet, key, board("b1", "Flashing"), board("b2"))

        def changed(out: list[str]) -> list[str] | None:
            latest = tables(out)[-1]
            return (
                latest
                if len(tables(out)) > 1 and [r.split()[0] for r in latest[1:]] == ["b1", "b2"]
                else None
            )

        latest = watcher.wait_out(changed, "a new table with the new board")
        assert "Flashing" in latest[1].split()
    finally:
        status = watcher.interrupt()
    assert status == 0
    assert watcher.err == []
    assert "\x1b" not in "".join(watcher.out)  # not a terminal: tables one after another, no redraw


def test_gateways_watch_shows_a_new_gateway(fleet: FleetProcess, tmp_path: Path) -> None:
    provisioning_key = fleet.create_fleet("lab")["provisioning_key"]
    first_gateway = fleet.provision(provisioning_key, name="bench-1")
    watcher = Cli(fleet, tmp_path, "gateways", "lab", "--watch")
    try:
        first = watcher.wait_out(lambda out: tables(out), "the first table")[0]
        assert first[0].split()[:2] == ["GATEWAY", "NAME"]
        assert [row.split()[:2] for row in first[1:]] == [[first_gateway["gateway"], "bench-1"]]
        fleet.provision(provisioning_key, name="bench-2")
        watcher.wait_out(
            lambda out: any("bench-2" in row for row in tables(out)[-1]), "the provisioned gateway, live"
        )
    finally:
        assert watcher.interrupt() == 0


def test_a_lost_service_is_one_line_and_the_follower_comes_back(fleet: FleetProcess, tmp_path: Path) -> None:
    key = fleet.provision(fleet.create_fleet("lab")["provisioning_key"])["key"]
    report(fleet, key, board("b1"))
    post_line(fleet, key, "b1", "first")
    follower = Cli(fleet, tmp_path, "logs", "lab", "b1", "--follow")
    try:
        follower.wait_out(lambda out: any(x.endswith("first") for x in out), "the tail (the stream is open)")
        port = fleet.url.rsplit(":", 1)[1]
        fleet.stop()
        wait_for(lambda: follower.err, LIVE_S, "the lost-service line")
        assert follower.process.poll() is None, follower.err  # it keeps trying
        fleet.args = [*fleet.args, "--port", port]  # the same service back on the same address
        fleet.start()
        post_line(fleet, key, "b1", "while it reconnects")
        follower.wait_out(
            lambda out: any(x.endswith("while it reconnects") for x in out),
            "the line posted during the outage or after it",
            timeout=30,
        )
        post_line(fleet, key, "b1", "after the reconnection")
        out = follower.wait_out(
            lambda out: out if any(x.endswith("after the reconnection") for x in out) else None, "live again"
        )
        assert sum(x.endswith("first") for x in out) == 1  # the tail read again is not printed twice
        assert len(follower.err) == 1 and "reconnecting" in follower.err[0], follower.err
    finally:
        assert follower.interrupt() == 0


def test_a_wrong_token_or_fleet_ends_the_follower_with_one_line(fleet: FleetProcess, tmp_path: Path) -> None:
    fleet.create_fleet("lab")
    missing = Cli(fleet, tmp_path, "boards", "nope", "--watch")
    assert missing.process.wait(timeout=30) == 1
    for reader in missing.readers:
        reader.join(timeout=5)
    assert len(missing.err) == 1 and "(HTTP 404)" in missing.err[0], missing.err


def test_the_stream_parser_reads_events_and_skips_comments() -> None:
    lines = [
        ": keep-alive",
        "",
        "event: fleet",
        'data: {"a": 1}',
        "",
        "retry: 1000",
        "event: logs",
        'data: {"lines":',
        "data: []}",
        "",
        "event: broken",
        "data: not json",
        "",
        'data: {"b": 2}',
        "",
    ]
    assert list(parse(lines)) == [
        Event("fleet", {"a": 1}),
        Event("logs", {"lines": []}),
        Event("message", {"b": 2}),
    ]
