"""A service (gateway, fleet) run as a real subprocess on an ephemeral loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.wait import wait_for

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class ServiceExited(AssertionError):
    """The service exited while it was waited on (its output says why)."""


class ServiceProcess:
    """Starts ``command()`` with its output in ``DATA/<log_name>``; ``url`` once it says it listens.

    A restart appends to the same log; :meth:`output` is this run's part only.
    """

    what = "service"

    def __init__(self, data: Path, log_name: str, env: dict[str, str]):
        self.data = data
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data / log_name
        self.log_offset = 0

    def command(self) -> Sequence[str]:
        """The command line (subclasses say what they run)."""
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        """Start the process and wait until it prints the URL it listens on."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(self.command()),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )

        def listening() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServiceExited(f"{self.what} exited with {self.process.returncode}:\n{self.output()}")
            match = LISTENING.search(self.output())
            return match.group(1) if match else None

        self.url = wait_for(listening, timeout, f"the {self.what} to listen", fail_on=ServiceExited)
        return self

    def output(self) -> str:
        """What this run printed so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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
            raise AssertionError(f"{self.what} did not stop within {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        """kill -9, as a power cut would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
