"""Run a real `picofleet gateway` process on an ephemeral loopback port, as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # the condition may raise while things come up
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class GatewayProcess:
    """A gateway subprocess; its output goes to DATA/gateway.log."""

    def __init__(
        self, data: Path, *args: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ):
        """``wrapper`` prefixes the command (``["umockdev-run", "-d", FILE, "--"]``); ``pid`` is then its."""
        self.data = data
        self.args = list(args)
        self.wrapper = list(wrapper)
        # virtual-board tests must not pick up real USB boards (or warn about udev): USB discovery
        # is off unless a test asks for it
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PICOFLEET_USB_DISCOVERY": "off", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data / "gateway.log"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        command = [
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
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL
        )
        log.close()

        def listening() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.output()}")
            match = LISTENING.search(self.output())
            return match.group(1) if match else None

        self.url = wait_for(listening, timeout, "the gateway to listen")
        return self

    def output(self) -> str:
        """What this run of the gateway printed so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"gateway did not stop within {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        """kill -9, as a power cut would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
