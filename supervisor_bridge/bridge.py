"""The gateway's link to the balena supervisor: wait for it, know the device, blink it.

The bridge runs as a background task of the gateway. It never holds up the gateway's own API
(edge-node-manager issue #73: ENM answered nothing until the supervisor did): the API serves from
the start and the bridge's state says how far it got.

* **off**: no ``BALENA_SUPERVISOR_ADDRESS`` — not on balena; said once at start.
* **waiting**: ``GET /ping`` until the supervisor answers, with exponential back-off
  (:data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_MAX`, ±20 % jitter); a warning once when it
  has not answered for :data:`WAIT_WARNING_AFTER` seconds.
* **ready**: it answered; ``/v1/device`` and ``/v2/applications/state`` are read then and every
  :data:`REFRESH_INTERVAL` seconds. When a request finds it gone the bridge says so and waits
  again (a supervisor restarts when it updates itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

import httpx

from picofleet.supervisor_bridge.environment import BalenaEnvironment
from picofleet.supervisor_bridge.supervisor_client import (
    SupervisorClient,
    SupervisorError,
    SupervisorUnreachable,
)

if TYPE_CHECKING:
    from picofleet.supervisor_bridge.proxyvisor import Proxyvisor

log = logging.getLogger("picofleet.supervisor")

OFF = "off"
WAITING = "waiting"
READY = "ready"

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 15.0
WAIT_WARNING_AFTER = 60.0
REFRESH_INTERVAL = 30.0
BLINK_SECONDS = 15
"""How long the supervisor blinks the device's LED (balena's fixed duration)."""


class BridgeOff(Exception):
    """The gateway does not run on balena: there is no supervisor to ask."""


class SupervisorBridge:
    """The state of the link to the supervisor, and the requests the gateway makes to it."""

    def __init__(self, env: BalenaEnvironment):
        self.env = env
        self.state = WAITING if env.on_balena else OFF
        self.reason: str | None = None if env.on_balena else "BALENA_SUPERVISOR_ADDRESS is not set"
        self.attempts = 0
        self.device_info: dict[str, Any] | None = None
        self.applications: dict[str, Any] | None = None
        self._client: SupervisorClient | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self.proxyvisor: Proxyvisor | None = None
        """The boards as the supervisor's dependent devices (supervisor_bridge/proxyvisor.py), when
        a dependent app is configured; ``None`` otherwise."""

    def attach(self, proxyvisor: Proxyvisor) -> None:
        """Serve a dependent app: the proxyvisor works while the supervisor answers."""
        self.proxyvisor = proxyvisor
        proxyvisor.on_lost = self._lose
        if self.state == READY:
            proxyvisor.ready.set()

    def announce(self) -> None:
        """Say once, at start, whether the bridge is on and what balena says the device is."""
        if not self.env.on_balena:
            log.info(
                "not running on balena (BALENA_SUPERVISOR_ADDRESS is not set): the supervisor bridge is off"
            )
            return
        log.info(
            "balena device %s (%s): waiting for the supervisor at %s%s",
            self.env.device_name or "with no name",
            self.env.device_uuid or "no BALENA_DEVICE_UUID",
            self.env.address,
            "" if self.env.api_key else " (no BALENA_SUPERVISOR_API_KEY: is the supervisor-api label set?)",
        )

    # -- the background task --------------------------------------------------------------------
    async def run(self) -> None:
        """Wait for the supervisor, then follow it, until cancelled (returns at once when off)."""
        if not self.env.on_balena or self.env.address is None:
            return
        async with httpx.AsyncClient(trust_env=False) as http:
            self._client = SupervisorClient(http, self.env.address, self.env.api_key)
            try:
                while True:
                    await self._wait_until_ready(self._client)
                    await self._follow(self._client)
            finally:
                self._client = None

    async def _wait_until_ready(self, client: SupervisorClient) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = BACKOFF_FIRST
        warned = False
        self.state = WAITING
        while True:
            self.attempts += 1
            try:
                await client.ping()
            except SupervisorError as error:
                self.reason = str(error)
                log.debug("supervisor not ready (attempt %d): %s", self.attempts, error)
            else:
                # what ``status()`` shows is read before it says ready, so "ready" always comes with it
                if await self._read_state(client):
                    break
            if not warned and loop.time() - started >= WAIT_WARNING_AFTER:
                log.warning(
                    "the balena supervisor has not answered for %.0f s: %s", WAIT_WARNING_AFTER, self.reason
                )
                warned = True
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.8, 1.2)):
                    await self._wake.wait()
            delay = min(delay * 2, BACKOFF_MAX)
        self.state = READY
        self._lost.clear()
        if self.proxyvisor is not None:
            self.proxyvisor.ready.set()
        info = self.device_info or {}
        log.info(
            "the balena supervisor answered after %d attempt(s) (%.1f s): supervisor %s, %s",
            self.attempts,
            loop.time() - started,
            info.get("supervisor_version", "?"),
            info.get("os_version", "OS version unknown"),
        )

    async def _follow(self, client: SupervisorClient) -> None:
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_INTERVAL):
                    await self._lost.wait()
            if not self._lost.is_set():
                await self._refresh(client)
        log.warning("the balena supervisor stopped answering (%s); waiting for it again", self.reason)

    async def _refresh(self, client: SupervisorClient) -> None:
        """Read the device and the applications' state again; a supervisor gone sends the bridge waiting."""
        if not await self._read_state(client):
            self._lose(self.reason or "the supervisor stopped answering")

    async def _read_state(self, client: SupervisorClient) -> bool:
        """Read the device and the applications' state; False when the supervisor does not answer.

        A supervisor that answers but refuses (a wrong API key) counts as answering: the reason says why.
        """
        try:
            self.device_info = await client.device()
            self.applications = await client.applications_state()
        except SupervisorUnreachable as error:
            self.reason = str(error)
            return False
        except SupervisorError as error:  # it answers, but refuses: a wrong API key
            if self.reason != str(error):
                log.error("%s", error)
            self.reason = str(error)
            return True
        self.reason = None
        return True

    def _lose(self, reason: str) -> None:
        if self.state == READY:
            self.state, self.reason = WAITING, reason
            self._lost.set()
            if self.proxyvisor is not None:
                self.proxyvisor.ready.clear()

    # -- requests -------------------------------------------------------------------------------
    async def blink(self) -> None:
        """Ask the supervisor to blink the device's LED.

        Raises :class:`BridgeOff` outside balena, :class:`SupervisorUnreachable` when the
        supervisor does not answer (the bridge then waits for it again) and
        :class:`~.client.SupervisorRefused` when it refuses.
        """
        if not self.env.on_balena:
            raise BridgeOff(
                "not running on balena (BALENA_SUPERVISOR_ADDRESS is not set): "
                "no supervisor to blink the device"
            )
        client = self._client
        if client is None:
            raise SupervisorUnreachable("the supervisor bridge is starting")
        try:
            await client.blink()
        except SupervisorUnreachable as error:
            self._lose(str(error))
            raise
        if self.state == WAITING:
            self._wake.set()  # it answers now: stop backing off
        log.info("identify: the balena supervisor blinks the device's LED for %d s", BLINK_SECONDS)

    def status(self) -> dict[str, Any]:
        """The bridge's state for ``GET /v1/enm/supervisor`` (never the API key)."""
        return {
            "enabled": self.env.on_balena,
            "state": self.state,
            "address": self.env.address,
            "reason": self.reason,
            "attempts": self.attempts,
            "device": self.env.device(),
            "supervisor": self.device_info,
            "applications": self.applications,
            "dependent": self.proxyvisor.status() if self.proxyvisor is not None else None,
        }
