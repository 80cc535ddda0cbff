"""The virtual USB bus: the gateway's discovery source for the rack of virtual boards.

:class:`VirtualBus` starts the rack process (``python -m picofleet.plugins.virtual.rack``, state
in ``<data>/virtual``, its output appended to ``<data>/virtual/rack.log``, rotated once to
``rack.log.1`` past 5 MB), subscribes to its
control socket and turns the rack's node events into :class:`DeviceEvent`\\ s. The rack's stdin is
a pipe whose write end only the gateway holds: if the gateway dies, even by SIGKILL, the rack
sees end of file and exits.

When the connection drops, the bus reports ``remove`` for every device it had reported,
restarts the rack if it died, and subscribes again (with a growing back-off while it fails). A
rack that exits with status 2 refused its arguments: the bus logs the rack's reason once and
:meth:`VirtualBus.run` raises :class:`RackRefused` (now and at every later call) instead of
restarting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.models import DeviceEvent, Emit, UsbDevice
from picofleet.plugins.virtual.control import default_socket_path, socket_address

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
"""Seconds a freshly started rack gets to listen on its socket."""
MAX_BACKOFF = 10.0
MAX_LOG_BYTES = 5 * 1024 * 1024
"""rack.log is moved to rack.log.1 at a rack start once it is larger than this."""
BAD_ARGUMENTS = 2
"""The rack's exit status for arguments it refuses: restarting it would not help."""


class RackRefused(Exception):
    """The rack refused its arguments (exit status 2); it is not restarted."""


def board_spec(simulate: tuple[tuple[int, str], ...]) -> str:
    """The rack's ``--boards`` argument for ``GatewayConfig.simulate``."""
    return ",".join(f"{count}:{board_type}" for count, board_type in simulate)


class VirtualBus:
    """A :class:`~picofleet.gateway.models.DiscoverySource` backed by a rack process."""

    name = "virtual"

    def __init__(self, config: GatewayConfig) -> None:
        self.state_dir = Path(config.data_dir) / "virtual"
        self.spec = board_spec(config.simulate)
        self.log_path = self.state_dir / "rack.log"
        self._process: subprocess.Popen | None = None
        self._reported: dict[str, UsbDevice] = {}
        self._refused: str | None = None

    @property
    def process(self) -> subprocess.Popen | None:
        """The rack process, if started."""
        return self._process

    def _start_rack(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.log_path.stat().st_size > MAX_LOG_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        except FileNotFoundError:
            pass
        command = [
            sys.executable,
            "-m",
            "picofleet.plugins.virtual.rack",
            "--state",
            str(self.state_dir),
            "--boards",
            self.spec,
        ]
        with open(self.log_path, "ab") as output:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, close_fds=True
            )
        log.info(
            "virtual boards: started the rack (pid %d, boards %s, log %s)",
            self._process.pid,
            self.spec,
            self.log_path,
        )

    def _rack_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _check_refused(self) -> None:
        """Raise :class:`RackRefused` if the rack exited with status 2; log why the first time."""
        if self._refused is None and self._process is not None and self._process.poll() == BAD_ARGUMENTS:
            reason = self._exit_reason()
            self._refused = f"the rack refused --boards {self.spec!r}: {reason}; not restarting it"
            log.error("virtual boards: %s (see %s)", self._refused, self.log_path)
        if self._refused is not None:
            raise RackRefused(self._refused)

    def _exit_reason(self) -> str:
        """The rack's last line of output (it prints why it refused to start last)."""
        try:
            with open(self.log_path, "rb") as output:
                output.seek(max(0, output.seek(0, 2) - 4096))
                lines = output.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        reason = next((line.strip() for line in reversed(lines) if line.strip()), "no reason given")
        return reason.removeprefix("rack: ")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the rack's socket, retrying until it listens or it died or the deadline."""
        address = socket_address(default_socket_path(self.state_dir))
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                return await asyncio.open_unix_connection(address)
            except (FileNotFoundError, ConnectionRefusedError):
                if not self._rack_alive() or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    def _emit_all_removed(self, emit: Emit) -> None:
        for device in self._reported.values():
            emit(DeviceEvent("remove", device))
        self._reported.clear()

    async def run(self, emit: Emit) -> None:
        """Report the virtual boards' nodes until cancelled (see the module docstring)."""
        backoff = 0.5
        self._reported.clear()  # a previous run() was cancelled: the core dropped those devices
        while True:
            self._check_refused()
            if not self._rack_alive():
                if self._process is not None:
                    log.warning(
                        "virtual boards: the rack exited with status %s; restarting it (see %s)",
                        self._process.returncode,
                        self.log_path,
                    )
                await asyncio.to_thread(self._start_rack)
            try:
                reader, writer = await self._connect()
            except OSError as error:
                self._check_refused()
                log.warning("virtual boards: cannot reach the rack (%s); retrying in %.1f s", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            try:
                await self._follow(reader, writer, emit)
            finally:
                writer.close()
            log.warning(
                "virtual boards: lost the connection to the rack; removing its %d devices and reconnecting",
                len(self._reported),
            )
            self._emit_all_removed(emit)
            if self._rack_alive():
                backoff = 0.5
                await asyncio.sleep(0.1)
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, emit: Emit) -> None:
        writer.write(b'{"op": "subscribe"}\n')
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                    event = message["event"]
                    if event == "enumerated":
                        log.info("virtual boards: %d nodes enumerated", len(self._reported))
                        continue
                    data = message["device"]
                    device = UsbDevice(
                        data["key"], data["subsystem"], data["devname"], dict(data["properties"])
                    )
                except (ValueError, KeyError, TypeError) as error:
                    log.warning(
                        "virtual boards: ignoring a bad event from the rack (%s): %r", error, line[:200]
                    )
                    continue
                if event == "add":
                    self._reported[device.key] = device
                    emit(DeviceEvent("add", device))
                elif event == "remove" and self._reported.pop(device.key, None) is not None:
                    emit(DeviceEvent("remove", device))

    async def close(self) -> None:
        """Stop the rack: close its stdin, then SIGTERM, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        await asyncio.to_thread(_stop_process, process)
        log.info("virtual boards: rack stopped (status %s)", process.returncode)


def _stop_process(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    for step in (process.terminate, process.kill):
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            step()
    process.wait()
