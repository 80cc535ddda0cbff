"""`picofleet demo` (README command 1): a fleet service and a gateway; the commands it prints are
README.md's "Try it", and work pasted one after the other from the demo's folder."""

from __future__ import annotations

import hashlib
import json
import re
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


def printed_commands(log: str) -> list[str]:
    """The commands the demo printed to try (lines, as printed, without their indent)."""
    block = re.search(r"terminal in this folder:\n\n((?:  .*\n)+)", log)
    assert block, log
    return [line.removeprefix("  ") for line in block[1].splitlines()]


def readme_commands() -> list[str]:
    """The lines of README.md's "Try it" block."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"## Try it\n.*?```\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no Try it block"
    return block[1].splitlines()


def runnable(lines: list[str]) -> list[str]:
    """The commands of ``lines``: comments dropped, continued lines joined."""
    commands, pending = [], ""
    for line in lines:
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append(pending + line)
        pending = ""
    return commands


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` run by bash in ``cwd``, as pasted into a terminal."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_demo_runs_fleet_and_gateway_and_the_printed_commands_work_from_one_folder(tmp_path: Path) -> None:
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
        printed = printed_commands(log.read_text())
        token = (tmp_path / "demo-data" / "fleet" / "admin-token").read_text().strip()

        # the two pages it prints answer, and signing in to the dashboard as it says works
        pages = dict(
            re.findall(r"^  (fleet dashboard|gateway control panel): +(http://\S+)", log.read_text(), re.M)
        )
        assert pages == {
            "fleet dashboard": f"http://127.0.0.1:{fleet_port}/",
            "gateway control panel": f"{url}/",
        }, log.read_text()
        for page in pages.values():
            answer = httpx.get(page, timeout=10)
            assert answer.status_code == 200 and "text/html" in answer.headers["content-type"], page
        token_file = re.search(r"the admin token is in (\S+)\)", log.read_text())
        assert token_file and (tmp_path / token_file[1]).read_text().strip() == token
        with httpx.Client(base_url=pages["fleet dashboard"], timeout=10, follow_redirects=True) as browser:
            assert browser.post("/login", data={"token": token}).status_code == 200
            assert "picofleet_session" in browser.cookies
            fleet_page = browser.get("/fleets/demo")  # signed out, it would redirect to the login form
            assert fleet_page.status_code == 200 and fleet_page.url.path == "/fleets/demo"

        # README.md's "Try it" is what `./dev demo` prints (.venv/bin/picofleet, ports 1337 and 8080)
        program = f"{sys.executable} -m picofleet.cli"
        as_in_readme = [
            line.replace(program, ".venv/bin/picofleet")
            .replace(f"127.0.0.1:{port}", "127.0.0.1:1337")
            .replace(f"127.0.0.1:{fleet_port}", "127.0.0.1:8080")
            .replace(token, "TOKEN")
            for line in printed
        ]
        assert as_in_readme == readme_commands()

        # replayed one after the other from the demo's folder, as pasted: no `cd` breaks a later path
        commands = runnable(printed)
        curl_devices, push, *rest = commands
        assert push.startswith("git -C demo-data/example-repo push "), push
        done = shell(curl_devices, tmp_path)
        assert done.returncode == 0 and "HTTP/1.1 200 OK" in done.stdout, done.stderr
        assert shell(push, tmp_path).returncode == 0
        head = git(tmp_path / "demo-data" / "example-repo", "rev-parse", "HEAD").stdout.strip()
        wait_for(
            lambda: all(
                d["Commit"] == d["TargetCommit"] == head
                and d["FpgaImage"] == d["TargetFpgaImage"] is not None
                and d["Environment"] == d["TargetEnvironment"]
                and d["Status"] == "Idle"
                for d in devices()
            ),
            60,
            "every board at the pushed commit",
            interval=0.2,
        )
        assert {d["FirmwareVersion"] for d in devices()} == {"picofleet-app 2.0.0"}
        outputs = {}
        for command in rest:
            if "targetStatus" in command or "SERIAL" in command:
                continue  # pausing is tested elsewhere; SERIAL is for the reader to fill in
            done = shell(command, tmp_path)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            outputs[command] = done.stdout

        def output_of(fragment: str) -> str:
            return next(out for command, out in outputs.items() if fragment in command)

        pushed = json.loads(output_of("curl -s "))
        assert {d["Commit"] for d in pushed} == {head}
        # the release's environment, config and FPGA image, as the boards report them
        fpga = hashlib.sha256((tmp_path / "demo-data/example-repo/build/top.bin").read_bytes()).hexdigest()
        for device in pushed:
            assert device["Environment"] == {"GREETING": "hello"}
            assert device["Config"] == {"LED_BLINK_MS": "250"}
            assert device["FpgaImage"] == device["TargetFpgaImage"] == fpga
        results = [json.loads(line) for line in output_of(" evaluate ").splitlines()]
        counts = sorted((Path(r["file"]).name, r["pulses"]) for r in results)
        assert counts == [("div16.asc", 625)] * 2 + [("div4.asc", 2500)] * 2
        listed, boards = output_of(" sim list "), output_of(" fleet boards ")
        for serial in (d["LocalUUID"] for d in pushed):
            assert serial in listed and serial in boards
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
