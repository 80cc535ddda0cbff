"""Board log lines reach the fleet: the firmware's own lines and the gateway's status lines about
a board, readable through ``GET /v1/fleets/<f>/boards/<uuid>/logs`` and ``picofleet fleet logs``.

End to end: a real fleet service, a real gateway process with a virtual board, and the real git
client. The firmware's own lines are checked from ``core_hooks``' forwarding on: a virtual board's
``booted ...`` line is written before the gateway opens its port, and pyserial's ``open()``
discards it, so no firmware line reaches a gateway in the end-to-end run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import serial

from picofleet.gateway import core_hooks
from picofleet.gateway.models import BoardRef
from picofleet.gateway.sync import BoardLogQueue
from tests.helpers.fleet import FleetProcess, fleet_cli
from tests.helpers.fleet_repo import push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for

pytestmark = pytest.mark.timeout(180)


def logs(fleet: FleetProcess, uuid: str, limit: int = 1000) -> list[dict[str, Any]]:
    response = fleet.request("GET", f"/v1/fleets/lab/boards/{uuid}/logs", params={"limit": limit})
    assert response.status_code == 200, response.text
    return response.json()


def test_board_logs_reach_the_fleet_and_the_cli_prints_them(fleet: FleetProcess, tmp_path: Path) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateway = GatewayProcess(
        tmp_path / "gw", "--simulate", "1", "--fleet", fleet.url, f"--provisioning-key={key}"
    ).start()
    try:
        idle_boards(gateway, 1)
        uuid = gateway.devices()[0]["LocalUUID"]

        first = push_first_release(fleet, tmp_path / "repo")

        def flashed() -> bool:
            device = gateway.devices()[0]
            return device["Commit"] == first and device["Status"] == "Idle"

        wait_for(flashed, 60, "the board at the release", interval=0.2)
        name = gateway.devices()[0]["Name"]
        assert name, "a provisioned board has a name"
        assert f"{name} ({uuid}): Flashing" in gateway.output()  # its own lines name the board

        def has_lines() -> list[dict[str, Any]] | None:
            lines = logs(fleet, uuid)
            texts = [line["text"] for line in lines]
            flashing = [n for n, text in enumerate(texts) if text.endswith(": Flashing")]
            idle_after = flashing and any(text.endswith(": Idle") for text in texts[flashing[-1] :])
            return lines if idle_after else None

        lines = wait_for(has_lines, 20, "the Flashing and then Idle status lines at the fleet", interval=0.2)
        assert all(set(line) >= {"time", "level", "text"} for line in lines)
        assert [line["time"] for line in lines] == sorted(line["time"] for line in lines), "oldest first"
        # the gateway's lines about the board (its firmware's own lines, if any came, have no label)
        labelled = [line["text"] for line in lines if f"({uuid}): " in line["text"]]
        statuses = [text.split(f"({uuid}): ", 1)[1] for text in labelled]
        assert statuses.index("Installing") < statuses.index("Flashing") < len(statuses) - 1
        assert statuses.index("runs picofleet-app 2.0.0") > statuses.index("Flashing")  # its new firmware
        assert len(logs(fleet, uuid, limit=2)) == 2

        printed = fleet_cli(fleet, "logs", "lab", uuid)
        assert printed.returncode == 0, printed.stderr
        rows = printed.stdout.splitlines()
        assert any(row.split()[1] == "INFO" and row.endswith(": Flashing") for row in rows), rows
        first_row = rows[0].split(maxsplit=2)
        assert first_row[0].endswith("Z") and first_row[1] in {"DEBUG", "INFO", "WARNING", "ERROR"}
        as_json = fleet_cli(fleet, "logs", "lab", uuid, "--limit", "3", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert len(json.loads(as_json.stdout)) == 3

        missing = fleet.request("GET", "/v1/fleets/lab/boards/no-such-board/logs")
        assert missing.status_code == 404, missing.text
        assert fleet.request("GET", f"/v1/fleets/nope/boards/{uuid}/logs").status_code == 404
        assert fleet.request("GET", f"/v1/fleets/lab/boards/{uuid}/logs?limit=0").status_code == 400
        unknown = fleet_cli(fleet, "logs", "lab", "no-such-board")
        assert unknown.returncode == 1
        assert unknown.stdout == ""
        assert len(unknown.stderr.strip().splitlines()) == 1
        assert unknown.stderr.startswith("picofleet fleet: ") and "(HTTP 404)" in unknown.stderr
        no_token = fleet.request("GET", f"/v1/fleets/lab/boards/{uuid}/logs", headers={"Authorization": "x"})
        assert no_token.status_code == 401
    finally:
        gateway.stop()


def test_a_gateway_posts_lines_only_for_its_own_boards(fleet: FleetProcess) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    mine_gateway, other_gateway = fleet.provision(key), fleet.provision(key)
    mine, other = mine_gateway["key"], other_gateway["key"]
    board = {"LocalUUID": "b1", "BoardType": "pico2-ice"}
    assert fleet.as_gateway(mine, "PUT", "/v1/gateway/state", json={"boards": [board]}).status_code == 200
    line = {"time": "2025-01-01T00:00:00.000Z", "level": "info", "text": "hello"}
    two_lines = {"lines": [{**line, "board": "b1"}, {**line, "board": "b2"}], "dropped": 3}
    answer = fleet.as_gateway(mine, "POST", "/v1/gateway/logs", json=two_lines)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["accepted"], answer.json()["ignored"]) == (1, 1)
    stranger = fleet.as_gateway(other, "POST", "/v1/gateway/logs", json={"lines": [{**line, "board": "b1"}]})
    assert stranger.json()["ignored"] == 1
    assert [x["text"] for x in logs(fleet, "b1")] == ["hello"]
    lost = {g["gateway"]: g["logs"] for g in fleet.request("GET", "/v1/fleets/lab/gateways").json()}
    assert lost[mine_gateway["gateway"]] == {"dropped": 3, "ignored": 1}  # what the operator sees lost
    assert lost[other_gateway["gateway"]] == {"dropped": 0, "ignored": 1}
    bad = fleet.as_gateway(mine, "POST", "/v1/gateway/logs", json={"lines": [{"board": "b1"}]})
    assert bad.status_code == 400
    assert fleet.as_gateway("wrong", "POST", "/v1/gateway/logs", json={"lines": []}).status_code == 401
    assert (
        fleet.request(
            "GET", "/v1/fleets/lab/boards/b1/logs", headers={"Authorization": "Bearer no"}
        ).status_code
        == 401
    )


def test_the_gateway_queue_is_bounded_and_finds_the_board() -> None:
    queue = BoardLogQueue(capacity=3)
    logger = logging.getLogger("picofleet.board.test-queue")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(queue)
    try:
        logger.info("%s: %s", "lab-1 (SER1)", "Flashing")
        logger.info("not about a board")
        logger.warning("explicit", extra={"board": "SER2"})
        output = logging.LogRecord(
            "picofleet.board.output", logging.INFO, "", 0, "[%s] %s", ("SER3", "hi"), None
        )
        queue.handle(output)
        logger.info("%s: %s", "lab-1 (SER1)", "Idle")
        assert [(x["board"], x["text"], x["level"]) for x in queue.peek()] == [
            ("SER2", "explicit", "warning"),
            ("SER3", "hi", "info"),
            ("SER1", "lab-1 (SER1): Idle", "info"),
        ]
        assert queue.dropped == 1
        batch = queue.peek(2)
        queue.sent(batch)
        assert [x["board"] for x in queue.peek()] == ["SER1"]
    finally:
        logger.removeHandler(queue)


def test_firmware_lines_are_queued_with_their_board() -> None:
    queue = BoardLogQueue()
    output = logging.getLogger("picofleet.board.output")
    saved = output.level
    output.setLevel(logging.DEBUG)
    queue.install()
    try:
        board = cast(BoardRef, SimpleNamespace(serial="SER9"))
        client = core_hooks._client(board, cast(serial.Serial, object()))
        assert client.on_log is not None
        client.on_log("info", "booted picofleet-app 2.0.0")
        client.on_log("warning", "[x] low voltage")
        assert [(x["board"], x["level"], x["text"]) for x in queue.peek()] == [
            ("SER9", "info", "booted picofleet-app 2.0.0"),
            ("SER9", "warning", "[x] low voltage"),
        ]
    finally:
        queue.uninstall()
        output.setLevel(saved)
