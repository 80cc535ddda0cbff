"""The gateway as a dependent-device manager of the balena supervisor (its "proxyvisor").

balena-supervisor up to v14.7.1 (src/proxyvisor.js, removed in v15) let a gateway application
manage *dependent devices* of a *dependent application*, as edge-node-manager (ENM) did. This
module is the gateway's side of it. It runs only on balena (``BALENA_SUPERVISOR_ADDRESS`` set) with
``PICOFLEET_DEPENDENT_APP_ID`` set and without ``--fleet`` (gateway/service.py decides):

* **Registration**: every board is registered once — ``POST /v1/devices {"appId"}`` — and takes
  the ``uuid`` and ``device_name`` the supervisor answers as its ``ResinUUID`` and ``Name``. The
  registrations are stored (:data:`LEDGER`), so a restarted gateway does not register again.
* **Hooks** (the supervisor calls the gateway's API on port 1337; gateway/http/devices.py):
  ``PUT /v1/devices/{uuid} {"appId", "commit", "environment", "config"}`` sets the targets and,
  for a commit the board does not run, downloads ``GET /v1/dependent-apps/{appId}/assets/{commit}``
  (a tar of the ``/assets`` folder of the dependent app's image: the UF2 ``<board type>.uf2``, or
  ``firmware.uf2`` for every board type) and queues the flash with that commit. It answers ``202``
  until the board runs the commit and ``200`` once it does — the supervisor repeats an unanswered
  (202) hook every 30 s at most and stops once one is answered 200. A board that no longer runs
  its ``TargetCommit`` afterwards — it left local mode, was flashed behind the gateway's back, or
  its reservation ended (``DeviceManager.reapply``) — is brought back to it without a new hook.
  ``DELETE /v1/devices/{uuid}`` forgets the board and its registration (still plugged in, it is
  registered anew, as ENM did).
* **Reports**: ``PUT /v1/devices/{uuid}`` with ``status``, ``is_online``, ``commit``,
  ``environment`` and ``config`` whenever one of them changed (and once after every start).
* **Logs**: the lines about each board (:class:`~picofleet.gateway.board_logs.BoardLogQueue`, as
  the fleet sync sends them to the fleet) go to ``POST /v1/devices/{uuid}/logs``, one line a
  request as that route takes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from picofleet.firmware.formats import image, uf2
from picofleet.gateway.board_logs import BoardLogQueue, line_millis
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.flashing import check_image
from picofleet.gateway.boards.manager import DeviceManager, FlashRefused
from picofleet.gateway.boards.record import Status
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.models import BoardError, BoardType
from picofleet.supervisor_bridge.environment import BalenaEnvironment
from picofleet.supervisor_bridge.supervisor_client import (
    SupervisorClient,
    SupervisorError,
    SupervisorRefused,
    SupervisorUnreachable,
)

log = logging.getLogger("picofleet.supervisor.proxyvisor")

LEDGER = "supervisorDependentDevices"
"""Stored: ``{LocalUUID: {"uuid", "name", "appId"}}``, the boards the supervisor registered."""
CYCLE_SECONDS = 1.0
"""How often new boards are registered, and changed states and new log lines sent."""
APP_CHECK_SECONDS = 30.0
"""How often ``GET /v1/dependent-apps`` is asked again while it does not list the app."""
REGISTER_BACKOFF_MAX = 30.0
LOG_LINES_PER_CYCLE = 200
ASSETS_KEPT = 4
"""Downloaded asset tars kept in memory (by commit), so the boards of a release download it once."""
FALLBACK_UF2 = "firmware.uf2"

APPLIED = "applied"
DOWNLOADING = "downloading"
FLASHING = "flashing"
WAITING = "waiting"


class AssetContentError(Exception):
    """A dependent app's asset that will never flash: no UF2 for the board type, or not a valid one."""


def job_from_tar(tar: bytes, board_type: BoardType, commit: str) -> FlashJob:
    """The flash job for ``board_type`` in an asset tar: its ``<board type>.uf2`` (else
    ``firmware.uf2``), parsed and checked as an upload is. CPU work: run it in a thread."""
    wanted = (f"{board_type.name}.uf2", FALLBACK_UF2)
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as archive:
            files = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
            name = next((n for n in wanted if n in files), None)
            if name is None:
                held = ", ".join(sorted(files)[:10]) or "no files"
                raise AssetContentError(
                    f"the asset of commit {commit} has no {wanted[0]} nor {wanted[1]} (it holds {held})"
                )
            handle = archive.extractfile(files[name])
            assert handle is not None  # a regular file
            data = handle.read()
    except (tarfile.TarError, EOFError) as error:
        raise AssetContentError(f"the asset of commit {commit} is not a tar archive: {error}") from None
    try:
        parsed = uf2.read_uf2(data)
        check_image(parsed, board_type)
        version = image.uf2_version(parsed, board_type.uf2_families)
    except uf2.UF2Error as error:
        raise AssetContentError(f"{name} of commit {commit} is not a valid UF2 file: {error}") from None
    except BoardError as error:
        raise AssetContentError(f"{name} of commit {commit}: {error}") from None
    return FlashJob(data, parsed.families, version, commit)


@dataclasses.dataclass
class HookAnswer:
    """What the gateway answers a ``PUT /v1/devices/{uuid}`` hook: the status and a JSON body."""

    status: int
    state: str
    reason: str | None = None

    def body(self, board: Board, commit: str | None) -> dict[str, Any]:
        """The JSON body: the device, the commit asked for, where it stands and why."""
        answer: dict[str, Any] = {
            "device": board.record.get("ResinUUID"),
            "commit": commit,
            "state": self.state,
        }
        if self.reason:
            answer["reason"] = self.reason
        return answer


class Proxyvisor:
    """The boards as dependent devices of one dependent app of the balena supervisor."""

    def __init__(self, env: BalenaEnvironment, manager: DeviceManager, app_id: int):
        assert env.address is not None
        self.env = env
        self.manager = manager
        self.app_id = app_id
        self.ready = asyncio.Event()
        """Set while the supervisor answers (the bridge sets and clears it)."""
        self.ledger: dict[str, dict[str, Any]] = {}
        self.app: dict[str, Any] | None = None
        self.reason: str | None = None
        self.logs = BoardLogQueue()
        self._client: SupervisorClient | None = None
        self._sent: dict[str, dict[str, Any]] = {}
        self._refused_reports: set[str] = set()
        self._delivering: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._tars: OrderedDict[str, asyncio.Task[bytes]] = OrderedDict()
        self._bad_assets: dict[tuple[str, str], str] = {}
        self._delivery_errors: dict[tuple[str, str], str] = {}
        self._register_after = 0.0
        self._register_failures = 0
        self._next_app_check = 0.0
        self.on_lost: Callable[[str], None] | None = None
        """Called when a request finds the supervisor gone (the bridge waits for it again)."""

    # -- the background task --------------------------------------------------------------------
    async def run(self) -> None:
        """Register, report and send logs while the supervisor answers, until cancelled."""
        self.ledger = dict(await self.manager.store.get_value(LEDGER, {}) or {})
        await self.manager.set_application_uuid(self.app_id)
        log.info(
            "dependent app %d: the boards are the balena supervisor's dependent devices "
            "(%d registered before)",
            self.app_id,
            len(self.ledger),
        )
        self.logs.install()
        reapplier: asyncio.Task[None] | None = None
        try:
            async with httpx.AsyncClient(trust_env=False) as http:
                self._client = SupervisorClient(http, self.env.address or "", self.env.api_key)
                reapplier = asyncio.create_task(self._reapply_when_asked(), name="proxyvisor reapply")
                while True:
                    await self.ready.wait()
                    try:
                        await self._cycle(self._client)
                    except SupervisorUnreachable as error:
                        self._sent.clear()  # tell it everything again once it is back
                        if self.on_lost is not None:
                            self.on_lost(str(error))
                        self.reason = str(error)
                        log.debug("proxyvisor: %s", error)
                    except Exception as error:  # a bug or a full disk: tried again next cycle
                        if str(error) != self.reason:
                            log.exception("the proxyvisor's cycle failed (tried again): %s", error)
                        self.reason = str(error)
                    await asyncio.sleep(CYCLE_SECONDS)
        finally:
            self._client = None
            self.logs.uninstall()
            if reapplier is not None:
                reapplier.cancel()
            for _, task in self._delivering.values():
                task.cancel()
            for tar in self._tars.values():
                tar.cancel()

    async def _cycle(self, client: SupervisorClient) -> None:
        await self._check_app(client)
        await self._register(client)
        await self._report(client)
        await self._send_logs(client)

    async def _check_app(self, client: SupervisorClient) -> None:
        """Look for the dependent app in ``GET /v1/dependent-apps`` (a warning once if absent)."""
        loop = asyncio.get_running_loop()
        if self.app is not None or loop.time() < self._next_app_check:
            return
        self._next_app_check = loop.time() + APP_CHECK_SECONDS
        try:
            apps = await client.dependent_apps()
        except SupervisorRefused as error:
            self.reason = str(error)
            return
        self.app = next((app for app in apps if str(app.get("id")) == str(self.app_id)), None)
        if self.app is None:
            known = ", ".join(str(app.get("id")) for app in apps) or "none"
            reason = (
                f"the balena supervisor lists no dependent app {self.app_id} (it lists: {known}); "
                "is PICOFLEET_DEPENDENT_APP_ID right?"
            )
            if reason != self.reason:
                log.warning("%s", reason)
            self.reason = reason
        else:
            log.info(
                "dependent app %d is %r (commit %s)",
                self.app_id,
                self.app.get("name"),
                self.app.get("commit"),
            )
            self.reason = None

    # -- registration ---------------------------------------------------------------------------
    async def _register(self, client: SupervisorClient) -> None:
        loop = asyncio.get_running_loop()
        for board in self.manager.listed():
            if board.delete_requested or board.record.get("DeleteFlag"):
                continue  # being forgotten: registered anew once it comes back
            entry = self.ledger.get(board.serial)
            if entry is None:
                if loop.time() < self._register_after:
                    continue
                try:
                    device = await client.register_dependent(self.app_id)
                except SupervisorRefused as error:
                    self._register_failures += 1
                    delay = min(REGISTER_BACKOFF_MAX, 2.0 ** min(self._register_failures, 10))
                    self._register_after = loop.time() + delay
                    reason = f"cannot register {board.label} with the balena supervisor: {error}"
                    if reason != self.reason:
                        log.warning("%s; retrying in %.0f s", reason, delay)
                    self.reason = reason
                    return
                self._register_failures = 0
                name = device.get("device_name") or device.get("name") or board.record.get("Name")
                entry = {"uuid": device["uuid"], "name": str(name), "appId": self.app_id}
                self.ledger[board.serial] = entry
                await self.manager.store.set_value(LEDGER, self.ledger)
                log.info(
                    "%s: registered with the balena supervisor as dependent device %s (%s)",
                    board.label,
                    entry["uuid"],
                    entry["name"],
                )
            if board.record.get("ResinUUID") != entry["uuid"] or board.record.get("Name") != entry["name"]:
                await self.manager.set_identity(board, str(entry["uuid"]), str(entry["name"]))
            if board.record.get("ApplicationUUID") != self.app_id:
                await board.update(ApplicationUUID=self.app_id)

    # -- reports --------------------------------------------------------------------------------
    @staticmethod
    def report_of(record: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``PUT /v1/devices/{uuid}`` for a board (those the proxyvisor takes; a
        field without a value is left out, as it refuses null)."""
        report: dict[str, Any] = {
            "status": str(record.get("Status")),
            "is_online": record.get("Status") != Status.OFFLINE,
        }
        if record.get("Commit"):
            report["commit"] = record["Commit"]
        for field, key in (("Environment", "environment"), ("Config", "config")):
            if isinstance(record.get(field), dict):
                report[key] = record[field]
        return report

    async def _report(self, client: SupervisorClient) -> None:
        for board in self.manager.listed():
            entry = self.ledger.get(board.serial)
            if entry is None or board.record.get("ResinUUID") != entry["uuid"]:
                continue
            report = self.report_of(board.record)
            if self._sent.get(board.serial) == report:
                continue
            try:
                await client.report_dependent(str(entry["uuid"]), report)
            except SupervisorRefused as error:
                if error.status in (404, 410):  # deleted on balena's side: its DELETE hook follows
                    if board.serial not in self._refused_reports:
                        log.warning("%s: the balena supervisor does not know it: %s", board.label, error)
                        self._refused_reports.add(board.serial)
                    self._sent[board.serial] = report
                else:
                    log.debug("%s: reporting to the balena supervisor failed: %s", board.label, error)
                continue
            self._refused_reports.discard(board.serial)
            self._sent[board.serial] = report

    # -- logs -----------------------------------------------------------------------------------
    async def _send_logs(self, client: SupervisorClient) -> None:
        """Send the oldest queued lines, in order; a line of a board not registered yet waits."""
        batch = self.logs.peek(LOG_LINES_PER_CYCLE)
        done: list[dict[str, Any]] = []
        try:
            for line in batch:
                board = self.manager.boards.get(line["board"])
                entry = self.ledger.get(line["board"])
                if entry is None:
                    if board is not None and not board.forgotten and not board.delete_requested:
                        break  # its registration comes first
                    done.append(line)  # a board that is gone: nobody to send it to
                    continue
                try:
                    await client.dependent_log(str(entry["uuid"]), str(line["text"]), line_millis(line))
                except SupervisorRefused as error:
                    log.debug("a log line of %s was refused: %s", line["board"], error)  # dropped
                done.append(line)
        finally:
            self.logs.sent(done)

    # -- hooks ----------------------------------------------------------------------------------
    async def hook_update(
        self, board: Board, commit: str | None, environment: Any, config: Any
    ) -> HookAnswer:
        """The supervisor's ``PUT /v1/devices/{uuid}``: set the targets; 200 once the board runs
        ``commit``, else 202 while its asset is fetched and flashed (or waits for a reservation to
        end); 409 when it will not be flashed (local mode, the release failed on the board), 422
        when the commit's asset holds no image the board can take, each with the reason."""
        await self.manager.set_target(board, commit, environment, config)
        return self._bring_to(board, commit)

    def _bring_to(self, board: Board, commit: str | None) -> HookAnswer:
        """Start bringing ``board`` to ``commit`` (its asset fetched, the flash queued) unless it
        runs it or will not be flashed; where it stands, as :meth:`hook_update` answers it."""
        serial = board.serial
        pending = board.pending_flash
        delivering = self._delivering.get(serial)
        if commit is None or board.record.get("Commit") == commit:
            if delivering is not None and delivering[0] != commit:
                delivering[1].cancel()  # the target went back to what the board runs
                del self._delivering[serial]
            if pending is not None and pending.commit != commit:
                return HookAnswer(202, WAITING, f"the flash of {pending.commit} queued before goes first")
            return HookAnswer(200, APPLIED)
        if board.record.get("LocalMode"):
            return HookAnswer(
                409,
                WAITING,
                f"device {serial} is in local mode: it is not flashed until "
                'PUT /v1/devices/{uuid}/local-mode {"LocalMode": false}',
            )
        failed = board.record.get("FailedRelease")
        if isinstance(failed, dict) and failed.get("commit") == commit:
            return HookAnswer(
                409,
                WAITING,
                f"commit {commit} did not run on device {serial} and was rolled back "
                f"({failed.get('reason')}); it is not flashed again: push a new release",
            )
        board_type = self.manager.board_types.get(str(board.record.get("BoardType")))
        if board_type is None:
            return HookAnswer(
                409, WAITING, f"board type {board.record.get('BoardType')!r} has no plugin loaded"
            )
        bad = self._bad_assets.get((commit, board_type.name))
        if bad is not None:
            return HookAnswer(422, WAITING, bad)
        refusal = self.manager.reservations.flash_refusal(serial)
        if refusal is not None:
            return HookAnswer(202, WAITING, refusal)
        if pending is not None and pending.commit == commit:
            return HookAnswer(202, FLASHING, str(board.record.get("Status")))
        if delivering is not None and delivering[0] == commit and not delivering[1].done():
            return HookAnswer(202, DOWNLOADING)
        if self._client is None:
            return HookAnswer(503, WAITING, "the gateway's link to the balena supervisor is starting")
        if delivering is not None:
            delivering[1].cancel()
        previous_error = self._delivery_errors.pop((serial, commit), None)
        task = asyncio.create_task(self._deliver(self._client, board, board_type, commit))
        self._delivering[serial] = (commit, task)
        return HookAnswer(202, DOWNLOADING, f"trying again: {previous_error}" if previous_error else None)

    async def _reapply_when_asked(self) -> None:
        """Bring boards to their stored ``TargetCommit`` whenever the device manager asks
        (``manager.reapply``: a board left local mode, drifted, or its reservation ended), as the
        fleet sync does with a fleet: the supervisor does not repeat a hook it was answered 200."""
        asked = self.manager.reapply
        while True:
            await asked.wait()
            asked.clear()
            for board in self.manager.listed():
                commit = board.record.get("TargetCommit")
                if board.serial not in self.ledger or commit is None or board.record.get("Commit") == commit:
                    continue
                answer = self._bring_to(board, str(commit))
                log.debug(
                    "%s: target commit %s again: %s %s", board.label, commit, answer.state, answer.reason
                )

    async def hook_delete(self, board: Board) -> None:
        """The supervisor's ``DELETE /v1/devices/{uuid}``: forget the board and its registration."""
        entry = self.ledger.pop(board.serial, None)
        if entry is not None:
            await self.manager.store.set_value(LEDGER, self.ledger)
        self._sent.pop(board.serial, None)
        delivering = self._delivering.pop(board.serial, None)
        if delivering is not None:
            delivering[1].cancel()
        await self.manager.request_delete(board)
        log.info("%s: deleted by the balena supervisor", board.label)

    async def _deliver(
        self, client: SupervisorClient, board: Board, board_type: BoardType, commit: str
    ) -> None:
        """Fetch the commit's asset (once for every board), pick the board type's UF2 and queue it."""
        try:
            tar = await self._tar(client, commit)
            job = await asyncio.to_thread(job_from_tar, tar, board_type, commit)
            await self.manager.request_flash(board, job, from_fleet=True)
            log.info("%s: commit %s from the balena supervisor queued for flashing", board.label, commit)
        except AssetContentError as error:
            self._bad_assets[(commit, board_type.name)] = str(error)
            log.error("%s: %s", board.label, error)
        except (SupervisorError, FlashRefused, BoardError) as error:
            self._delivery_errors[(board.serial, commit)] = str(error)
            log.warning("%s: cannot flash commit %s: %s", board.label, commit, error)
        except Exception as error:  # a bug: said, and tried again at the next hook
            self._delivery_errors[(board.serial, commit)] = f"{type(error).__name__}: {error}"
            log.exception("%s: cannot flash commit %s", board.label, commit)
        finally:
            current = self._delivering.get(board.serial)
            if current is not None and current[1] is asyncio.current_task():
                del self._delivering[board.serial]

    async def _tar(self, client: SupervisorClient, commit: str) -> bytes:
        """The commit's asset tar, downloaded once however many boards ask (the last few kept)."""
        task = self._tars.get(commit)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(
                client.dependent_asset(self.app_id, commit, self.manager.config.max_upload_bytes)
            )
            self._tars[commit] = task
        self._tars.move_to_end(commit)
        while len(self._tars) > ASSETS_KEPT:
            oldest = next(iter(self._tars))
            if not self._tars[oldest].done():
                break  # still downloading for some board
            del self._tars[oldest]
        return await asyncio.shield(task)

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/enm/supervisor``: the dependent app, the registered boards, the last problem."""
        return {
            "appId": self.app_id,
            "app": self.app,
            "registered": {serial: dict(entry) for serial, entry in self.ledger.items()},
            "reason": self.reason,
        }


def proxyvisor_for(
    config: GatewayConfig, env: BalenaEnvironment, manager: DeviceManager
) -> Proxyvisor | None:
    """The proxyvisor the gateway runs, or ``None`` (saying why once, when a dependent app is
    configured but cannot be served): only on balena, with ``PICOFLEET_DEPENDENT_APP_ID``, and
    without ``--fleet`` (the fleet then gives the boards their targets)."""
    app_id = config.dependent_app_id
    if app_id is None:
        return None
    if not env.on_balena:
        log.warning(
            "PICOFLEET_DEPENDENT_APP_ID is ignored: not running on balena "
            "(BALENA_SUPERVISOR_ADDRESS is not set)"
        )
        return None
    if config.fleet_url is not None:
        log.warning(
            "PICOFLEET_DEPENDENT_APP_ID is ignored: the gateway follows the fleet at %s", config.fleet_url
        )
        return None
    return Proxyvisor(env, manager, app_id)
