"""Run a rack of virtual boards (`python -m picofleet.plugins.virtual.rack`) in a test directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from picofleet.plugins.virtual.control import RackUnavailable, connect, rack_request, read_line
from tests.helpers.wait import wait_for


class Subscription:
    """A ``subscribe`` connection to a rack: its events, one at a time, with deadlines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.seen: list[dict] = []

    def next_event(self, timeout: float = 5.0) -> dict:
        """The next event line; fails at the deadline or if the rack closed the connection."""
        try:
            line = read_line(self.sock, self._buffer, time.monotonic() + timeout)
        except TimeoutError:
            raise AssertionError(f"no event from the rack within {timeout} s") from None
        if line is None:
            raise AssertionError("the rack closed the subscription")
        event = json.loads(line)
        self.seen.append(event)
        return event

    def initial(self, timeout: float = 5.0) -> list[dict]:
        """The devices of the ``add`` events before ``enumerated``."""
        devices = []
        while (event := self.next_event(timeout))["event"] != "enumerated":
            assert event["event"] == "add", event
            devices.append(event["device"])
        return devices

    def expect(
        self, action: str, subsystem: str | None = None, serial: str | None = None, timeout: float = 5.0
    ) -> dict:
        """Wait for the next event, which must be ``action`` (of that subsystem/serial); return its device."""
        event = self.next_event(timeout)
        device = event.get("device", {})
        assert event["event"] == action, event
        if subsystem is not None:
            assert device["subsystem"] == subsystem, event
        if serial is not None:  # the rack's board (an RP2040 bootrom reports a serial of its own)
            assert device["key"].split("/")[1] == serial, event
        return device

    def close(self) -> None:
        """End the subscription."""
        self.sock.close()


class RackProcess:
    """A rack process with its state in ``state_dir``; its output goes to ``state_dir``/../rack-N.log."""

    _count = 0

    def __init__(self, state_dir: Path, boards: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.boards_spec = boards
        self.env = {**os.environ, **(env or {})}
        RackProcess._count += 1
        self.log_path = self.state_dir.parent / f"rack-{RackProcess._count}.log"
        self.process: subprocess.Popen | None = None
        self._subscriptions: list[Subscription] = []

    def start(self, timeout: float = 20.0) -> RackProcess:
        """Start the rack and wait until it answers ``list``."""
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "picofleet.plugins.virtual.rack",
                    "--state",
                    str(self.state_dir),
                    "--boards",
                    self.boards_spec,
                ],
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the rack exited with {self.process.returncode}:\n{self.log()}")
            try:
                return bool(self.request("list").get("ok"))
            except RackUnavailable:
                return False

        wait_for(ready, timeout, "the rack to answer", fail_on=AssertionError)
        return self

    def log(self) -> str:
        """The rack's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def request(self, op: str, **fields: Any) -> dict:
        """One control request."""
        return rack_request(self.state_dir, {"op": op, **fields})

    def boards(self) -> list[dict]:
        """The ``list`` answer's boards."""
        response = self.request("list")
        assert response["ok"], response
        return response["boards"]

    def board(self, serial: str) -> dict:
        """One board of ``list``."""
        return next(board for board in self.boards() if board["serial"] == serial)

    def subscribe(self) -> Subscription:
        """A new subscription (closed by :meth:`stop`)."""
        sock = connect(self.state_dir)
        sock.sendall(b'{"op": "subscribe"}\n')
        subscription = Subscription(sock)
        self._subscriptions.append(subscription)
        return subscription

    def close_stdin(self) -> None:
        """Close the rack's stdin, as a gateway that exits does."""
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the rack to exit; return its status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the rack."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.close_stdin()

    def stop(self) -> int | None:
        """Close stdin and wait; SIGKILL if it does not exit within 10 s."""
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()
        if self.process is None:
            return None
        self.close_stdin()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the rack did not exit after its stdin closed:\n{self.log()}") from None

    def __enter__(self) -> RackProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
