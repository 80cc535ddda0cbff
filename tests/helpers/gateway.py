"""Run a real `picofleet gateway` process on an ephemeral loopback port, as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.process import LISTENING, ServiceProcess
from tests.helpers.wait import wait_for

__all__ = ["LISTENING", "GatewayProcess", "idle_boards", "run_gateway_command", "running_gateway", "wait_for"]


class GatewayProcess(ServiceProcess):
    """A gateway subprocess; its output goes to DATA/gateway.log."""

    what = "gateway"

    def __init__(
        self, data: Path, *args: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ):
        """``wrapper`` prefixes the command (``["umockdev-run", "-d", FILE, "--"]``); ``pid`` is then its."""
        # virtual-board tests must not pick up real USB boards (or warn about udev): USB discovery
        # is off unless a test asks for it
        super().__init__(data, "gateway.log", {"PICOFLEET_USB_DISCOVERY": "off", **(env or {})})
        self.args = list(args)
        self.wrapper = list(wrapper)

    def command(self) -> list[str]:
        return [
            *self.wrapper,
            sys.executable,
            "-m",
            "picofleet.cli",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data",
            str(self.data),
            *self.args,
        ]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.put(self.url + path, timeout=10, **kwargs)

    def devices(self) -> list[dict[str, Any]]:
        response = self.get("/v1/devices")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_devices(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float,
        what: str,
        interval: float = 0.02,
    ) -> list:
        def check() -> list[dict[str, Any]] | None:
            devices = self.devices()
            return devices if predicate(devices) else None

        return wait_for(check, timeout, what, interval)

    def open_ports(self) -> list[str]:
        """The pseudo-terminal slaves (and tty devices) the gateway process holds open."""
        targets = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(("/dev/pts/", "/dev/tty")):
                targets.append(target)
        return targets


def idle_boards(gateway: GatewayProcess, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until the gateway lists ``count`` boards, all Idle; their records."""
    return gateway.wait_devices(
        lambda d: len(d) == count and all(x["Status"] == "Idle" for x in d), timeout, f"{count} idle boards"
    )


@contextlib.contextmanager
def running_gateway(
    data: Path, boards: int, *args: str, env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """``picofleet gateway --simulate BOARDS ARGS`` on ``data``, yielded once its ``boards`` virtual
    boards are all Idle, and stopped on the way out (the body of a test module's gateway fixture)."""
    process = GatewayProcess(data, "--simulate", str(boards), *args, env=env).start()
    try:
        idle_boards(process, boards)
        yield process
    finally:
        process.stop()


def run_gateway_command(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``picofleet gateway --data DATA ARGS`` run to its end (30 s at most), its output captured.

    For a gateway expected to refuse to start; USB discovery is off, as for :class:`GatewayProcess`.
    """
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "gateway", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PICOFLEET_USB_DISCOVERY": "off", **(env or {})},
    )
