"""Keeping a gateway's boards at the fleet's target: provision once, follow the target, report back.

The fleet API is docs/fleet-api.md. The loop:

* **Provisioning**, once: with ``--fleet URL --provisioning-key KEY`` the gateway asks the fleet for
  its own key and keeps it in its database, so restarts do not provision again. The fleet's name
  (in the answer and in every target) is kept beside it and is every board's ``ApplicationUUID``.
* **Target state**: a long poll (``GET /v1/gateway/state?wait=30`` with ``If-None-Match``) learns
  of a new release at once; on errors it backs off exponentially (with jitter, at most
  ENM_CONFIG_LOOP_DELAY). The last target is stored, so boards keep their targets with the fleet
  unreachable, also after a restart.
* **Applying it**: each board's TargetCommit/TargetEnvironment/TargetConfig/TargetFpgaImage are set
  as received (an FPGA image is downloaded into the asset cache first; the board's task writes it
  and the settings to the board, gateway/boards/settings.py);
  a board whose Commit differs from its target gets the firmware asset (downloaded once per
  gateway into the asset cache, resumable, sha256-verified) queued as a flash with that commit —
  the flashing pipeline does the rest, respecting pause. Left alone: a board in local mode, a
  reserved one, and one on which that commit failed (``FailedRelease``) until the fleet asks for a
  retry (the target's ``retry`` count rises). ``DeviceManager.reapply`` makes it apply the stored
  target again (a reservation ended, a board left local mode or drifted).
* **Reporting**: the boards' state (Commit, Status, online, progress...) is sent when it changed —
  the reporter waits on the device manager's change signal (``manager.changes``), so the fleet
  hears of a change within ~0.5 s, at most one report every :data:`REPORT_MIN_GAP` s (a burst of
  progress updates is one report) — and at every (re)connection, so after a gateway or fleet
  restart the fleet's view is corrected within one cycle (ENM issue #49). Without a change it
  still looks every :data:`REPORT_INTERVAL` s (board log lines, a report that failed).
* **Board logs**: :class:`~.board_logs.BoardLogQueue` (gateway/board_logs.py), a logging handler
  on the board loggers, keeps every line about a board (the firmware's own log lines and the
  gateway's status lines) in a bounded queue (oldest dropped and counted). After each state report, at most
  :data:`LOG_BATCH_LINES` of them go to ``POST /v1/gateway/logs``; lines the fleet did not take
  stay queued and are sent after reconnection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from typing import Any

import httpx

from picofleet.common.store import Store
from picofleet.firmware.asset_cache import AssetError
from picofleet.firmware.formats import image, uf2
from picofleet.gateway.board_logs import LOG_BATCH_LINES, BoardLogQueue
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.manager import DeviceManager, FlashRefused
from picofleet.gateway.boards.record import Status
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.evaluation.reservations import ReservationBook
from picofleet.gateway.models import BoardError

log = logging.getLogger("picofleet.sync")

GATEWAY_KEY = "fleetGatewayKey"
GATEWAY_ID = "fleetGatewayId"
FLEET_ID = "fleetId"
"""The fleet the gateway was provisioned into (its name): every board's ``ApplicationUUID``."""
TARGET = "fleetTarget"
ETAG = "fleetTargetEtag"
LONG_POLL_SECONDS = 30
REPORT_INTERVAL = 1.0
"""Seconds the reporter waits for a change before it looks anyway (queued log lines), and waits
after a report the fleet did not take."""
REPORT_MIN_GAP = 0.5
"""The shortest time between two reports (changes meanwhile are coalesced into the next)."""


class SyncError(Exception):
    """The fleet answered something the gateway cannot use; the message says what."""


class FleetSync:
    """The gateway's side of the fleet service."""

    def __init__(
        self, config: GatewayConfig, manager: DeviceManager, store: Store, reservations: ReservationBook
    ):
        assert config.fleet_url is not None
        self.config = config
        self.manager = manager
        self.reservations = reservations
        self.store = store
        self.failures = 0
        self.download_failures = 0
        """Applies in a row in which an asset could not be downloaded (the retry's back-off)."""
        self._download_retry: asyncio.TimerHandle | None = None
        self.last_report: str | None = None
        self.logs = BoardLogQueue()

    async def run(self) -> None:
        """Provision (once), then follow the target and report, until cancelled."""
        key = await self._gateway_key()
        stored_target = await self.store.get_value(TARGET) or {}
        fleet = await self.store.get_value(FLEET_ID) or stored_target.get("fleet")
        if fleet:  # a gateway provisioned before FLEET_ID was stored learns it from its target
            await self.manager.set_application_uuid(fleet)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=self.config.fleet_url or "", headers=headers, timeout=LONG_POLL_SECONDS + 15
        ) as client:
            self.logs.install()
            reporter = asyncio.create_task(self._report_forever(client))
            reapplier = asyncio.create_task(self._reapply_when_asked(client))
            try:
                stored = await self.store.get_value(TARGET)
                if stored:
                    await self.apply(client, stored)  # the last known target, fleet reachable or not
                await self._follow(client)
            finally:
                reporter.cancel()
                reapplier.cancel()
                await asyncio.gather(reporter, reapplier, return_exceptions=True)
                self.logs.uninstall()

    # -- provisioning -------------------------------------------------------------------------------
    async def _gateway_key(self) -> str:
        key = await self.store.get_value(GATEWAY_KEY)
        while not key:
            if not self.config.provisioning_key:
                raise SyncError(
                    "--fleet needs the provisioning key the first time (the gateway is not provisioned): "
                    "--provisioning-key-file FILE or PICOFLEET_PROVISIONING_KEY"
                )
            try:
                async with httpx.AsyncClient(base_url=self.config.fleet_url or "", timeout=15) as client:
                    response = await client.post(
                        "/v1/gateways", json={"provisioning_key": self.config.provisioning_key}
                    )
                if response.status_code == 401:
                    raise SyncError(f"the fleet refused the provisioning key: {_reason(response)}")
                response.raise_for_status()
                answer = response.json()
                await self.store.set_value(GATEWAY_ID, answer["gateway"])
                if answer.get("fleet"):
                    await self.store.set_value(FLEET_ID, answer["fleet"])
                await self.store.set_value(GATEWAY_KEY, answer["key"])
                key = answer["key"]
                log.info("provisioned into fleet %s as gateway %s", answer.get("fleet"), answer["gateway"])
            except (httpx.HTTPError, KeyError, ValueError) as error:
                await self._back_off(f"provisioning failed: {error}")
        return str(key)

    # -- target state -------------------------------------------------------------------------------
    async def _follow(self, client: httpx.AsyncClient) -> None:
        etag = await self.store.get_value(ETAG)
        while True:
            try:
                headers = {"If-None-Match": etag} if etag else {}
                response = await client.get(
                    "/v1/gateway/state", params={"wait": LONG_POLL_SECONDS}, headers=headers
                )
                if response.status_code == 200:
                    target = response.json()
                    etag = response.headers.get("etag")
                    await self.store.set_value(TARGET, target)
                    await self._fleet_is(target.get("fleet"))
                    await self.store.set_value(ETAG, etag)
                    await self.apply(client, target)
                elif response.status_code != 304:
                    raise SyncError(f"target state: HTTP {response.status_code}: {_reason(response)}")
                self.failures = 0
            except (httpx.HTTPError, SyncError, ValueError) as error:
                self.last_report = None  # the fleet may have lost what we told it: tell it again
                await self._back_off(f"cannot follow the fleet's target: {error}")

    async def _fleet_is(self, fleet: Any) -> None:
        """The fleet (its name) the target names: stored, and every board's ``ApplicationUUID``."""
        if isinstance(fleet, str) and fleet and fleet != self.manager.application_uuid:
            await self.store.set_value(FLEET_ID, fleet)
            await self.manager.set_application_uuid(fleet)

    async def apply(self, client: httpx.AsyncClient, target: dict[str, Any]) -> None:
        """Set every board's targets as received and queue the flashes that bring it there.

        Each firmware is fetched, verified and parsed once per call, however many boards need it.
        """
        jobs: dict[str, FlashJob] = {}  # sha256 -> the job built for the first board needing it
        fetched: dict[str, bool] = {}  # FPGA image sha256 -> whether it is in the asset cache
        downloaded: list[bool] = []  # per firmware download tried, whether it succeeded
        try:
            await self._apply(client, target, jobs, fetched, downloaded)
        finally:
            self._retry_downloads(all(fetched.values()) and all(downloaded))

    def _retry_downloads(self, all_downloaded: bool) -> None:
        """After an apply in which an asset could not be downloaded, apply again later (exponential
        back-off with jitter, at most ENM_CONFIG_LOOP_DELAY): the boards get it without a new target."""
        if all_downloaded:
            self.download_failures = 0
            return
        self.download_failures += 1
        delay = min(self.config.config_loop_delay, 0.5 * 2 ** min(self.download_failures, 10))
        delay *= random.uniform(0.8, 1.2)
        log.info("an asset could not be downloaded: the target is applied again in %.1f s", delay)
        if self._download_retry is not None:
            self._download_retry.cancel()  # one retry pending at a time
        self._download_retry = asyncio.get_running_loop().call_later(
            delay, self.manager.request_reapply, "an asset could not be downloaded"
        )

    async def _apply(
        self,
        client: httpx.AsyncClient,
        target: dict[str, Any],
        jobs: dict[str, FlashJob],
        fetched: dict[str, bool],
        downloaded: list[bool],
    ) -> None:
        """:meth:`apply`'s loop; appends to ``downloaded``, per firmware download tried, whether it
        succeeded (also when a later board raises: :meth:`apply` schedules the retry regardless)."""
        for uuid, board_target in (target.get("boards") or {}).items():
            board = self.manager.find(uuid)
            if board is None or not isinstance(board_target, dict):
                continue
            commit = board_target.get("commit")
            fpga = await self._fpga_image(client, board_target.get("fpga"), fetched)
            await self.manager.set_target(
                board, commit, board_target.get("environment"), board_target.get("config"), fpga=fpga
            )
            firmware = board_target.get("firmware")
            if not firmware or commit is None or board.record.get("Commit") == commit:
                continue
            if board.record.get("LocalMode"):
                continue  # the operator's until local mode is off (then _reapply_when_asked)
            retry = board_target.get("retry")
            retry = retry if isinstance(retry, int) and not isinstance(retry, bool) and retry > 0 else 0
            failed = board.record.get("FailedRelease")
            retrying = isinstance(failed, dict) and failed.get("commit") == commit
            if isinstance(failed, dict) and retrying and int(failed.get("retry") or 0) >= retry:
                # no flash loop: only a new release or a retry (a higher count) flashes it again
                if board.record.get("Status") == Status.IDLE and not board.record.get("StatusReason"):
                    await board.update(
                        StatusReason=f"release {commit} did not run on this board ({failed.get('reason')});"
                        " not flashed again until a new release or `picofleet fleet retry`"
                    )
                continue
            if self.reservations.of(board.serial) is not None:
                continue  # not even fetched: a reserved board is flashed once released (_reapply_when_asked)
            pending = board.pending_flash
            if pending is not None and pending.sha256 == firmware.get("sha256") and pending.commit == commit:
                continue
            try:
                sha256 = str(firmware["sha256"])
                if sha256 not in jobs:
                    jobs[sha256] = await self._job(client, firmware)
                job = dataclasses.replace(jobs[sha256], commit=commit, retry=retry)
            except (AssetError, uf2.UF2Error, httpx.HTTPError) as error:
                downloaded.append(isinstance(error, uf2.UF2Error))  # a bad image is not fetched again
                log.warning(
                    "%s: cannot get the firmware of %s: %s",
                    board.label,
                    commit,
                    error,
                    extra={"board": board.serial},
                )
                continue
            try:
                await self.manager.request_flash(board, job, from_fleet=True)
            except FlashRefused:
                continue  # reserved or in local mode meanwhile: flashed once released or back
            except BoardError as error:
                log.warning(
                    "%s: cannot queue the firmware of %s: %s",
                    board.label,
                    commit,
                    error,
                    extra={"board": board.serial},
                )
            else:
                if retrying:
                    log.info("%s: retrying release %s (retry %d)", board.label, commit, retry)
                    await board.update(FailedRelease=None)

    async def _reapply_when_asked(self, client: httpx.AsyncClient) -> None:
        """Apply the stored target again whenever the device manager asks (``manager.reapply``): a
        reservation ended, a board left local mode or drifted — those boards get their firmware."""
        asked = self.manager.reapply
        while True:
            await asked.wait()
            asked.clear()
            target = await self.store.get_value(TARGET)
            if target:
                try:
                    await self.apply(client, target)
                except Exception as error:  # the next request or new target tries again
                    log.warning("re-applying the target failed: %s", error)

    async def _fpga_image(self, client: httpx.AsyncClient, fpga: Any, fetched: dict[str, bool]) -> str | None:
        """The sha256 of a target's FPGA image (``None``: none), downloaded into the asset cache first
        (once per apply); a failed download is logged and retried at the next apply, the board's task
        says meanwhile that the image is not there yet."""
        if not isinstance(fpga, dict) or not isinstance(fpga.get("sha256"), str):
            return None
        sha256 = str(fpga["sha256"])
        if sha256 not in fetched:
            try:
                await self.manager.assets.download(client, str(fpga["url"]), sha256, fpga.get("size"))
                fetched[sha256] = True
            except (AssetError, httpx.HTTPError, KeyError) as error:
                log.warning("cannot get the FPGA image %s: %s", sha256, error)
                fetched[sha256] = False
        return sha256

    async def _job(self, client: httpx.AsyncClient, firmware: dict[str, Any]) -> FlashJob:
        """Download (once, resumable), verify and parse a target's firmware: a job without a commit."""
        sha256 = str(firmware["sha256"])
        assets = self.manager.assets
        await assets.download(client, str(firmware["url"]), sha256, firmware.get("size"))
        data = await asyncio.to_thread(assets.get, sha256)
        parsed = await asyncio.to_thread(uf2.read_uf2, data)
        version = await asyncio.to_thread(image.uf2_version, parsed)  # verified once it is flashed
        return FlashJob(data, parsed.families, version, None, sha256)

    # -- reporting ----------------------------------------------------------------------------------
    async def _report_forever(self, client: httpx.AsyncClient) -> None:
        """Report the boards' state whenever it changed (see the module docstring), and send their
        log lines once the fleet knows the boards."""
        loop = asyncio.get_running_loop()
        logs_sent = loop.time() - REPORT_INTERVAL
        with self.manager.changes.subscribe() as changes:
            while True:
                started = loop.time()
                report = {"boards": [self._board_report(board.record) for board in self.manager.listed()]}
                text = json.dumps(report, sort_keys=True)
                failed = False
                if text != self.last_report:
                    try:
                        response = await client.put("/v1/gateway/state", json=report)
                        response.raise_for_status()
                        self.last_report = text
                    except httpx.HTTPError as error:
                        failed = True
                        log.debug("report to the fleet failed (retried): %s", error)
                # once the fleet knows the boards the lines are about; one batch a second at most
                if text == self.last_report and loop.time() - logs_sent >= REPORT_INTERVAL:
                    logs_sent = loop.time()
                    await self._send_logs(client)
                if failed:
                    await asyncio.sleep(REPORT_INTERVAL)  # changes meanwhile stay pending
                else:
                    await changes.wait(REPORT_INTERVAL)
                await asyncio.sleep(max(0.0, started + REPORT_MIN_GAP - loop.time()))

    async def _send_logs(self, client: httpx.AsyncClient) -> None:
        """Send the oldest queued board log lines (one batch); on failure they stay queued."""
        batch = self.logs.peek(LOG_BATCH_LINES)
        if not batch:
            return
        try:
            response = await client.post(
                "/v1/gateway/logs", json={"lines": batch, "dropped": self.logs.dropped}
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            if isinstance(error, httpx.HTTPStatusError) and error.response.status_code == 400:
                self.logs.sent(batch)  # the fleet will never take these: do not block the queue
            log.debug("sending board logs to the fleet failed (retried): %s", error)
            return
        self.logs.sent(batch)

    @staticmethod
    def _board_report(record: dict[str, Any]) -> dict[str, Any]:
        fields = (
            "LocalUUID",
            "BoardType",
            "Name",
            "Commit",
            "Status",
            "FirmwareVersion",
            "Progress",
            "Environment",
            "Config",
            "FpgaImage",
            "LocalMode",
            "FailedRelease",
        )
        progress = record.get("Progress")
        return {
            **{field: record.get(field) for field in fields},
            "Progress": progress.get("percent") if isinstance(progress, dict) else progress,
            "online": record.get("Status") != Status.OFFLINE,
        }

    async def _back_off(self, reason: str) -> None:
        self.failures += 1
        delay = min(self.config.config_loop_delay, 0.5 * 2 ** min(self.failures, 10))
        delay *= random.uniform(0.8, 1.2)
        log.warning("%s; retrying in %.1f s", reason, delay)
        await asyncio.sleep(delay)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]
