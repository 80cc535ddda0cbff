"""Run a real fleet service process on an ephemeral loopback port, and drive the real git client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.process import ServiceProcess

GIT_IDENTITY = ("-c", "user.name=Fleet Tester", "-c", "user.email=tester@example.invalid")


class FleetProcess(ServiceProcess):
    """A ``python -m picofleet.fleet.service`` subprocess; its output goes to DATA/fleet.log."""

    what = "fleet service"

    def __init__(self, data: Path, *args: str, token: str = "test-admin-token") -> None:
        super().__init__(data, "fleet.log", {"PICOFLEET_ADMIN_TOKEN": token})
        self.args = list(args)
        self.token = token

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "picofleet.fleet.service",
            "--data",
            str(self.data),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *self.args,
        ]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def create_fleet(self, name: str) -> dict[str, Any]:
        response = self.request("POST", "/v1/fleets", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    def fleet(self, name: str) -> dict[str, Any]:
        response = self.request("GET", f"/v1/fleets/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    def releases(self, name: str) -> list[dict[str, Any]]:
        response = self.request("GET", f"/v1/fleets/{name}/releases")
        assert response.status_code == 200, response.text
        return response.json()

    def provision(self, provisioning_key: str, name: str | None = None) -> dict[str, Any]:
        """Register a gateway with the fleet's provisioning key: {"gateway", "key", "fleet"}."""
        body: dict[str, Any] = {"provisioning_key": provisioning_key}
        if name is not None:
            body["name"] = name
        response = httpx.post(self.url + "/v1/gateways", json=body, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()

    def as_gateway(self, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request authenticated with a gateway key."""
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        timeout = kwargs.pop("timeout", 10)
        return httpx.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)

    def push_url(self, fleet: str, token: str | None = None) -> str:
        host = self.url.removeprefix("http://")
        return f"http://x:{token or self.token}@{host}/git/{fleet}.git"


class FrontWorkerProcess(ServiceProcess):
    """A ``python -m picofleet.fleet.workers.front_worker`` on its own loopback port, forwarding to the
    primary of a running ``--workers N`` fleet service (whose socket the service printed), so that
    a test can send every request through a front worker; its output goes to DATA/<log_name>."""

    what = "front worker"

    def __init__(self, fleet: FleetProcess, log_name: str = "front-worker.log") -> None:
        super().__init__(fleet.data, log_name, {"PICOFLEET_ADMIN_TOKEN": fleet.token})
        found = re.search(r"primary on (@\S+)\)", fleet.output())
        assert found, (
            f"the fleet service printed no primary socket (run it with --workers 2):\n{fleet.output()}"
        )
        self.primary = found.group(1)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "picofleet.fleet.workers.front_worker",
            "--primary",
            self.primary,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]


def fleet_cli(service: FleetProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``picofleet fleet ARGS`` against ``service`` (URL and admin token from the environment), run to
    its end (30 s at most), its output captured."""
    env = {**os.environ, "PICOFLEET_FLEET_URL": service.url, "PICOFLEET_ADMIN_TOKEN": service.token}
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "fleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def git(
    cwd: Path, *args: str, check: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real git client (no prompts, no user/system config surprises)."""
    env = {
        **os.environ,
        **(env or {}),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
    }
    result = subprocess.run(
        ["git", *GIT_IDENTITY, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result
