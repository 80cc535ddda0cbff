"""`picofleet demo` (README command 1): a fleet service and a gateway; the printed git push converges."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.fleet import git
from tests.helpers.gateway import wait_for

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_runs_fleet_and_gateway_and_the_printed_push_converges(tmp_path: Path) -> None:
    port, fleet_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as output:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "picofleet.cli",
                "demo",
                "--port",
                str(port),
                "--fleet-port",
                str(fleet_port),
            ],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def devices() -> list[dict]:
            return httpx.get(f"{url}/v1/devices", timeout=5).json()

        wait_for(
            lambda: len(devices()) == 4 and all(d["Status"] == "Idle" for d in devices()), 60, "4 boards"
        )
        push = re.search(r"cd (\S+) && git push (\S+) main", log.read_text())
        assert push, log.read_text()
        repo = tmp_path / push.group(1)
        git(repo, "push", "-q", push.group(2), "main")
        head = git(repo, "rev-parse", "HEAD").stdout.strip()
        wait_for(
            lambda: all(
                d["Commit"] == d["TargetCommit"] == head and d["Status"] == "Idle" for d in devices()
            ),
            60,
            "every board at the pushed commit",
            interval=0.2,
        )
        assert {d["FirmwareVersion"] for d in devices()} == {"picofleet-app 2.0.0"}

        # the printed evaluation: the demo's two example circuits on two reserved boards
        printed = re.search(r"picofleet evaluate (.+?) \\\n\s+(.+?)\n", log.read_text())
        assert printed, log.read_text()
        evaluate = subprocess.run(
            [sys.executable, "-m", "picofleet.cli", "evaluate", *shlex.split(f"{printed[1]} {printed[2]}")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert evaluate.returncode == 0, evaluate.stderr
        results = [json.loads(line) for line in evaluate.stdout.splitlines()]
        counts = sorted((Path(r["file"]).name, r["pulses"]) for r in results)
        assert counts == [("div16.asc", 625)] * 2 + [("div4.asc", 2500)] * 2
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0, log.read_text()[-2000:]
    fleet = subprocess.run(
        ["pgrep", "-f", f"picofleet.fleet.service.*{fleet_port}"], capture_output=True, text=True
    )
    assert fleet.stdout.strip() == ""  # the demo's fleet service stopped with it
