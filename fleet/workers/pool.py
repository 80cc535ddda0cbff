"""The primary's front workers (``picofleet fleet serve --workers N``): N-1 processes of
:mod:`.front_worker` on the service's port, restarted if one dies, stopped with the service.

Each worker is ``python -m picofleet.fleet.workers.front_worker`` with the primary's pid as
``--parent-pid`` (so a primary killed with ``kill -9`` leaves no workers behind: they notice within
a second and exit) and secrets (the admin token) in its environment, never on its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

__all__ = ["MAX_WORKERS", "FrontWorkers"]

log = logging.getLogger("picofleet.fleet")

MAX_WORKERS = 64
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 5.0


class FrontWorkers:
    """``count`` front worker processes serving ``host:port`` next to the primary at ``primary``
    (``@NAME`` or a socket path), with ``environment`` added to this process's."""

    def __init__(
        self,
        count: int,
        host: str,
        port: int,
        primary: str,
        environment: dict[str, str],
        log_level: str = "info",
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "picofleet.fleet.workers.front_worker",
            "--primary",
            primary,
            "--host",
            host,
            "--port",
            str(port),
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            log_level,
        ]
        self.environment = {**os.environ, **environment}
        self.processes: list[asyncio.subprocess.Process | None] = [None] * count
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker (each keeps being restarted ``RESTART_DELAY_S`` after it dies)."""
        for slot in range(len(self.processes)):
            self._supervisors.append(
                asyncio.create_task(self._keep_running(slot), name=f"front-worker-{slot}")
            )

    async def _keep_running(self, slot: int) -> None:
        while not self._stopping:
            process = await asyncio.create_subprocess_exec(
                *self.command, env=self.environment, stdin=asyncio.subprocess.DEVNULL
            )
            self.processes[slot] = process
            code = await process.wait()
            if self._stopping:
                return
            log.warning("front worker %d (pid %d) exited with %s; restarting it", slot + 1, process.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        """Terminate the workers (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``) and wait for them."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        running = [p for p in self.processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
