"""Reserving virtual boards on a real gateway: firmware switch, Reserved, tokens, expiry, restarts, the fleet.

Each test talks to a real `picofleet gateway --simulate N` process over HTTP and the event
websocket, as a researcher's client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from picofleet.common.store import Store
from picofleet.firmware.formats import image, uf2
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.config import load_config
from picofleet.gateway.discovery.sightings import Discovery
from picofleet.gateway.evaluation.reservations import RESERVATIONS, ReservationError
from picofleet.gateway.http import devices as device_routes
from picofleet.gateway.http.app import create_app
from picofleet.gateway.models import APPLICATION, BoardError, BoardRef
from picofleet.gateway.plugin_manager import load_plugins
from picofleet.gateway.service import GatewayBoards, prepare_directories
from picofleet.gateway.sync import FleetSync
from picofleet.plugins import pico2_ice, virtual
from tests.helpers.fleet import FleetProcess
from tests.helpers.fleet_repo import push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, running_gateway, wait_for
from tests.helpers.wait import until
from tests.test_fleet_git import app_uf2

pytestmark = pytest.mark.timeout(120)

PULSECOUNT = "picofleet-pulsecount 1.0.0"
FACTORY = "picofleet-app 1.0.0"


def post(gateway: GatewayProcess, path: str, body: Any, token: str | None = None) -> httpx.Response:
    """POST a JSON body, with the client's token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=15)


def reservations(gateway: GatewayProcess, name: str | None = None) -> list[dict[str, Any]]:
    """``GET /v1/reservations`` (of one client)."""
    response = gateway.get("/v1/reservations", params={"name": name} if name else None)
    assert response.status_code == 200, response.text
    return response.json()["reservations"]


def device(gateway: GatewayProcess, serial: str) -> dict[str, Any]:
    """One board's record."""
    return gateway.get(f"/v1/devices/{serial}").json()


@contextlib.contextmanager
def subscribe(gateway: GatewayProcess, token: str) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    """The client's event websocket and its first message, ``subscribed``."""
    with connect(
        gateway.url.replace("http://", "ws://") + "/v1/events",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
    ) as socket:
        subscribed = json.loads(socket.recv(timeout=10))
        assert subscribed["event"] == "subscribed"
        yield socket, subscribed


@contextlib.contextmanager
def events(gateway: GatewayProcess, token: str) -> Iterator[ClientConnection]:
    """The client's event websocket, once the gateway confirmed the subscription."""
    with subscribe(gateway, token) as (socket, _):
        yield socket


def next_event(socket: ClientConnection, kind: str, timeout: float = 30) -> dict[str, Any]:
    """The next event of type ``kind`` (others are skipped), within ``timeout`` s.

    A socket the gateway closed raises its ConnectionClosed at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = json.loads(socket.recv(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            raise AssertionError(f"no {kind} event within {timeout} s") from None
        if event["event"] == kind:
            return event


def ready(gateway: GatewayProcess, serial: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the board serves its reservation: state ready, Status Reserved, pulse-count firmware."""

    def check() -> dict[str, Any] | None:
        record = device(gateway, serial)
        states = {r["serial"]: r["state"] for r in reservations(gateway)}
        if states.get(serial) == "ready" and record["Status"] == "Reserved":
            return record
        return None

    return wait_for(check, timeout, f"board {serial} ready for evaluations", interval=0.05)


@contextlib.asynccontextmanager
async def gateway_in_process(
    data: Path, boards: int
) -> AsyncIterator[tuple[GatewayBoards, httpx.AsyncClient]]:
    """A gateway in this process (its API over ASGI) with ``boards`` virtual boards, all Idle.

    For tests that make something happen at a given moment inside the gateway.
    """
    config = load_config({"data": str(data), "simulate": str(boards)}, {"PICOFLEET_USB_DISCOVERY": "off"})
    prepare_directories(config)
    store = Store(config.db_path)
    await store.open()
    plugins = load_plugins()
    wired = GatewayBoards.build(config, store, plugins)
    manager = wired.manager
    await wired.start()
    discovery = Discovery(
        plugins.discovery_sources(config), plugins.board_types, manager.on_present, manager.on_gone
    )
    discovery.start()
    try:
        app = create_app(manager, reservations=wired.reservations, evaluations=wired.evaluations)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            await until(
                lambda: [b.record["Status"] for b in manager.listed()] == ["Idle"] * boards,
                30,
                f"{boards} idle boards",
            )
            yield wired, client
    finally:
        await discovery.stop()
        await wired.stop()
        await store.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path / "gw", 2) as service:
        yield service


@pytest.fixture(scope="module")
def untouched_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for the tests whose requests are all refused (nothing is ever reserved)."""
    with running_gateway(tmp_path_factory.mktemp("gw"), 2) as service:
        yield service


def test_a_reserved_board_gets_the_pulse_count_firmware_and_goes_back_when_ended(
    gateway: GatewayProcess,
) -> None:
    created = post(gateway, "/v1/reservations", {"name": "alice", "count": 1, "args": {"window_ms": 10}})
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["name"] == "alice" and answer["token"].startswith("rt_")
    [reservation] = answer["reservations"]
    serial = reservation["serial"]
    assert reservation["kind"] == "pulsecount" and reservation["args"] == {"window_ms": 10}
    assert 3590 < reservation["expires_at"] - reservation["created_at"] <= 3600

    with subscribe(gateway, answer["token"]) as (socket, subscribed):
        assert [r["serial"] for r in subscribed["reservations"]] == [serial]
        if subscribed["reservations"][0]["state"] != "ready":  # else it was ready before we listened
            assert next_event(socket, "reservation_ready")["serial"] == serial
        record = ready(gateway, serial)
        assert record["FirmwareVersion"] == PULSECOUNT
        assert record["Commit"] is None  # the fleet's firmware is gone: the sync re-applies it later
        assert "alice" in record["StatusReason"]
        other = next(d for d in gateway.devices() if d["LocalUUID"] != serial)
        assert other["Status"] == "Idle" and other["FirmwareVersion"] == FACTORY

        ended = post(gateway, "/v1/reservations/end", {"name": "alice"}, answer["token"])
        assert ended.status_code == 200, ended.text
        assert ended.json()["ended"] == [serial]
        event = next_event(socket, "reservation_ended")
        assert event["serial"] == serial and event["reason"] == "ended"
    assert reservations(gateway) == []
    wait_for(lambda: device(gateway, serial)["Status"] == "Idle", 10, "the board Idle again")
    assert device(gateway, serial)["StatusReason"] is None


def test_a_name_belongs_to_the_client_holding_its_token(gateway: GatewayProcess) -> None:
    first = post(gateway, "/v1/reservations", {"name": "alice", "count": 1, "seconds": 600})
    token = first.json()["token"]
    serial = first.json()["reservations"][0]["serial"]

    for sent in (None, "rt_forged"):
        again = post(gateway, "/v1/reservations", {"name": "alice", "count": 1}, sent)
        assert again.status_code == 403, again.text
        assert again.json()["error"] == "the name 'alice' belongs to another client"
        for path in ("/v1/reservations/extend", "/v1/reservations/end"):
            refused = post(gateway, path, {"name": "alice"}, sent)
            assert refused.status_code == 403, refused.text
    stranger = post(gateway, "/v1/reservations/end", {"name": "mallory"}, token)
    assert stranger.status_code == 403  # alice's token is not mallory's
    assert [r["serial"] for r in reservations(gateway, "alice")] == [serial]
    assert "token" not in json.dumps(gateway.get("/v1/reservations").json())

    bob = post(gateway, "/v1/reservations", {"name": "bob", "serials": [serial]})
    assert bob.status_code == 409 and "already reserved" in bob.json()["error"]
    assert "token" not in bob.json()  # nothing reserved: no client was made
    more = post(gateway, "/v1/reservations", {"name": "alice", "count": 1}, token)
    assert more.status_code == 201 and more.json()["token"] == token
    assert len(reservations(gateway, "alice")) == 2

    extended = post(gateway, "/v1/reservations/extend", {"name": "alice", "seconds": 7200}, token)
    assert extended.status_code == 200, extended.text
    assert all(r["expires_at"] - r["created_at"] > 7100 for r in extended.json()["reservations"])
    ended = post(gateway, "/v1/reservations/end", {"name": "alice", "serials": [serial]}, token)
    assert ended.json()["ended"] == [serial]
    assert len(reservations(gateway, "alice")) == 1
    not_held = post(gateway, "/v1/reservations/end", {"name": "alice", "serials": [serial]}, token)
    assert not_held.status_code == 404 and serial in not_held.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"count": 1}, 400, "name must be"),
        ({"name": "", "count": 1}, 400, "name must be"),
        ({"name": "a b", "count": 1}, 400, "name must be"),
        ({"name": "alice", "kind": "blink"}, 400, "unknown kind 'blink'"),
        ({"name": "alice", "count": 0}, 400, "count must be"),
        ({"name": "alice", "count": True}, 400, "count must be"),
        ({"name": "alice", "count": 1, "serials": ["X"]}, 400, "either count or serials"),
        ({"name": "alice", "serials": []}, 400, "serials must be"),
        ({"name": "alice", "serials": ["X", "X"]}, 400, "serials must be"),
        ({"name": "alice", "args": {"volts": 3}}, 400, "unknown argument 'volts'"),
        ({"name": "alice", "args": {"window_ms": 0}}, 400, "window_ms must be"),
        ({"name": "alice", "args": {"clock_hz": "1000"}}, 400, "clock_hz must be"),
        ({"name": "alice", "seconds": 0}, 400, "seconds must be"),
        ({"name": "alice", "seconds": 86401}, 400, "at most 86400"),
        ({"name": "alice", "serials": ["NO-SUCH-BOARD"]}, 404, "no board with serial 'NO-SUCH-BOARD'"),
        ({"name": "alice", "count": 3}, 409, "only 2 board(s) are free"),
    ],
)
def test_bad_reservation_requests_are_refused_with_the_reason(
    untouched_gateway: GatewayProcess, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = post(untouched_gateway, "/v1/reservations", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert reservations(untouched_gateway) == []


def test_malformed_json_is_a_400(untouched_gateway: GatewayProcess) -> None:
    response = httpx.post(untouched_gateway.url + "/v1/reservations", content=b"{nope", timeout=10)
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]


def test_a_reservation_expires_by_itself_with_notice(gateway: GatewayProcess) -> None:
    created = post(gateway, "/v1/reservations", {"name": "carol", "count": 1, "seconds": 600}).json()
    serial = created["reservations"][0]["serial"]
    with events(gateway, created["token"]) as socket:
        ready(gateway, serial)
        shortened = post(
            gateway, "/v1/reservations/extend", {"name": "carol", "seconds": 1}, created["token"]
        )
        assert shortened.json()["reservations"][0]["expires_at"] == created["reservations"][0]["expires_at"]
        ended = post(gateway, "/v1/reservations/end", {"name": "carol"}, created["token"])
        assert ended.status_code == 200
        next_event(socket, "reservation_ended")

        short = post(
            gateway, "/v1/reservations", {"name": "carol", "count": 1, "seconds": 2}, created["token"]
        )
        assert short.status_code == 201, short.text
        serial = short.json()["reservations"][0]["serial"]
        ending = next_event(socket, "reservation_ending", timeout=5)  # under 5 minutes: at once
        assert ending["serial"] == serial and 0 < ending["seconds_left"] <= 2
        ended_event = next_event(socket, "reservation_ended", timeout=10)
        assert ended_event == {**ended_event, "serial": serial, "reason": "expired"}
    assert reservations(gateway, "carol") == []
    wait_for(lambda: device(gateway, serial)["Status"] == "Idle", 10, "the expired board Idle again")


def test_reservations_and_tokens_survive_a_kill_9(tmp_path: Path) -> None:
    service = GatewayProcess(tmp_path / "gw", "--simulate", "2").start()
    try:
        idle_boards(service, 2)
        created = post(service, "/v1/reservations", {"name": "dave", "count": 2, "seconds": 900}).json()
        token = created["token"]
        serials = sorted(r["serial"] for r in created["reservations"])
        for serial in serials:
            ready(service, serial)
        service.kill()

        service.start()
        listed = reservations(service, "dave")
        assert sorted(r["serial"] for r in listed) == serials
        assert [r["expires_at"] for r in listed] == [r["expires_at"] for r in created["reservations"]]
        for serial in serials:
            record = ready(service, serial)  # back, still reserved, never reflashed by anyone else
            assert record["FirmwareVersion"] == PULSECOUNT
        assert post(service, "/v1/reservations", {"name": "dave", "count": 1}).status_code == 403
        ended = post(service, "/v1/reservations/end", {"name": "dave"}, token)
        assert ended.status_code == 200 and sorted(ended.json()["ended"]) == serials
        service.stop()

        service.start()  # and an ended reservation stays ended
        assert reservations(service) == []
        idle_boards(service, 2)
    finally:
        service.stop()


@pytest.mark.timeout(180)
def test_the_fleet_never_flashes_a_reserved_board_and_takes_it_back_after(tmp_path: Path) -> None:
    fleet = FleetProcess(tmp_path / "fleet").start()
    gateway = None
    try:
        key = fleet.create_fleet("lab")["provisioning_key"]
        gateway = GatewayProcess(
            tmp_path / "gw", "--simulate", "2", "--fleet", fleet.url, f"--provisioning-key={key}"
        ).start()
        idle_boards(gateway, 2)
        created = post(gateway, "/v1/reservations", {"name": "erin", "count": 1}).json()
        serial = created["reservations"][0]["serial"]
        ready(gateway, serial)

        release = push_first_release(fleet, tmp_path / "repo")

        def others_updated() -> bool:
            return all(
                d["Commit"] == release and d["Status"] == "Idle"
                for d in gateway.devices()
                if d["LocalUUID"] != serial
            )

        wait_for(others_updated, 60, "the unreserved board at the release", interval=0.2)
        held = device(gateway, serial)
        assert held["TargetCommit"] == release  # the target is recorded...
        assert held["Status"] == "Reserved" and held["FirmwareVersion"] == PULSECOUNT  # ...not applied
        assert held["PendingFlash"] is None

        post(gateway, "/v1/reservations/end", {"name": "erin"}, created["token"])
        back = wait_for(
            lambda: (d := device(gateway, serial))["Commit"] == release and d["Status"] == "Idle" and d,
            60,
            "the released board at the release",
            interval=0.2,
        )
        assert back["FirmwareVersion"] == "picofleet-app 2.0.0"
    finally:
        if gateway is not None:
            gateway.stop()
        fleet.stop()


def test_pausing_closes_a_reserved_boards_port_and_running_makes_it_ready_again(
    gateway: GatewayProcess,
) -> None:
    created = post(gateway, "/v1/reservations", {"name": "frank", "count": 1}).json()
    serial = created["reservations"][0]["serial"]
    ready(gateway, serial)
    refused = httpx.post(f"{gateway.url}/v1/devices/{serial}/flash", content=app_uf2("9.9.9"))
    assert refused.status_code == 409 and "reserved by 'frank'" in refused.json()["error"]
    assert gateway.put("/v1/enm/status", json={"targetStatus": "Paused"}).status_code == 200
    wait_for(lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 10, "Paused")
    assert gateway.open_ports() == []
    assert [r["state"] for r in reservations(gateway, "frank")] == ["preparing"]
    assert gateway.put("/v1/enm/status", json={"targetStatus": "Running"}).status_code == 200
    assert ready(gateway, serial)["FirmwareVersion"] == PULSECOUNT


def test_the_openapi_document_lists_the_reservation_routes(untouched_gateway: GatewayProcess) -> None:
    paths = untouched_gateway.get("/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/reservations"])
    assert "post" in paths["/v1/reservations/extend"] and "post" in paths["/v1/reservations/end"]
    assert "get" in paths["/v1/events"]


def board_ref(board_type: str = "pico2-ice", *, virtual: bool = False) -> BoardRef:
    return BoardRef(
        "E6614103E73F9A2B", board_type, APPLICATION, "pico-ice", "/dev/ttyACM0", None, "", virtual
    )


def test_a_real_pico2_ice_gets_micropython_and_the_pulse_count_files(tmp_path: Path) -> None:
    micropython = tmp_path / "micropython.uf2"
    micropython.write_bytes(app_uf2("9.9.9"))
    config = load_config({"data": str(tmp_path)}, environ={"PICOFLEET_MICROPYTHON_UF2": str(micropython)})
    firmware = pico2_ice.picofleet_evaluation_firmware(board=board_ref(), kind="pulsecount", config=config)
    assert firmware is not None and firmware.name == "picofleet-pulsecount"
    assert firmware.uf2 == micropython.read_bytes()
    assert set(firmware.files) == {"main.py", "pulsecount.py", "frames.py", "hw_pico2_ice.py"}
    assert b"picofleet-pulsecount" in firmware.files["pulsecount.py"]

    without = load_config({"data": str(tmp_path)}, environ={})
    files_only = pico2_ice.picofleet_evaluation_firmware(board=board_ref(), kind="pulsecount", config=without)
    assert files_only is not None and files_only.uf2 is None and files_only.files == firmware.files

    missing = load_config(
        {"data": str(tmp_path)}, environ={"PICOFLEET_MICROPYTHON_UF2": str(tmp_path / "no.uf2")}
    )
    with pytest.raises(BoardError, match="cannot read micropython_uf2"):
        pico2_ice.picofleet_evaluation_firmware(board=board_ref(), kind="pulsecount", config=missing)

    for other in (board_ref("rp2350"), board_ref(virtual=True)):
        assert pico2_ice.picofleet_evaluation_firmware(board=other, kind="pulsecount", config=config) is None


def test_every_virtual_board_gets_the_pulse_count_image_of_its_family(tmp_path: Path) -> None:
    config = load_config({"data": str(tmp_path)}, environ={})
    for board_type, family in (("pico2-ice", uf2.RP2350_ARM_S), ("rp2040", uf2.RP2040)):
        firmware = virtual.picofleet_evaluation_firmware(
            board=board_ref(board_type, virtual=True), kind="pulsecount", config=config
        )
        assert firmware is not None and firmware.uf2 is not None and firmware.files == {}
        parsed = uf2.read_uf2(firmware.uf2)
        assert parsed.families == {family}
        assert image.uf2_version(parsed) == "1.0.0"
    assert virtual.picofleet_evaluation_firmware(board=board_ref(), kind="pulsecount", config=config) is None
    assert (
        virtual.picofleet_evaluation_firmware(board=board_ref(virtual=True), kind="other", config=config)
        is None
    )


FILES_PLUGIN = r'''
"""A stand-in for a real pico2-ice's evaluation firmware, on virtual boards (a test plugin).

Its "MicroPython" is a picofleet-app 7.0.0 image; "copying the files" puts the pulse-count image
into the board's flash file and reboots it, as a real MicroPython would then run main.py.
"""
import json
import os
from pathlib import Path

from picofleet.firmware.formats import image

from picofleet.firmware.formats import uf2
from picofleet.firmware.host.protocol import FirmwareClient
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import EvaluationFirmware

STATE = Path(os.environ["FILES_PLUGIN_STATE"])


def _uf2(name, version, board_type):
    flat = image.make_app_image(name, version, board_type)
    return uf2.from_binary(flat, image.FLASH_BASE, uf2.RP2350_ARM_S)


@hookimpl(tryfirst=True)
def picofleet_evaluation_firmware(board, kind, config):
    if not board.virtual:
        return None
    micropython = _uf2("picofleet-app", "7.0.0", board.board_type)
    if os.environ.get("FILES_PLUGIN_MODE") == "files-only":  # MicroPython runs already: no UF2
        micropython = None
    return EvaluationFirmware("picofleet-pulsecount", "1.0.0", micropython, {"main.py": b"run()"})


@hookimpl(tryfirst=True)
def picofleet_install_files(board, port, files):
    with open(STATE / "installed.jsonl", "a") as log:
        log.write(json.dumps({"serial": board.serial, "files": sorted(files)}) + "\n")
    if os.environ.get("FILES_PLUGIN_MODE") == "refuse":
        return True  # claims success, but the board keeps running what it ran
    flash = STATE / "gw" / "virtual" / "flash" / f"{board.serial}.uf2"
    flash.write_bytes(_uf2("picofleet-pulsecount", "1.0.0", board.board_type))
    FirmwareClient(port).request("reboot", timeout=2)
    return True
'''


def files_plugin_gateway(tmp_path: Path, mode: str) -> GatewayProcess:
    """A gateway whose virtual boards are prepared like real pico2-ice boards (test plugin above)."""
    site = tmp_path / "site"
    (site / "files_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "files_plugin.py").write_text(FILES_PLUGIN)
    (site / "files_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: files-plugin\nVersion: 1.0\n"
    )
    (site / "files_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[picofleet]\nfiles_plugin = files_plugin\n"
    )
    env = {"PYTHONPATH": str(site), "FILES_PLUGIN_STATE": str(tmp_path), "FILES_PLUGIN_MODE": mode}
    return GatewayProcess(tmp_path / "gw", "--simulate", "1", env=env)


def installed(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "installed.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_board_needing_micropython_is_flashed_then_gets_the_files_copied(tmp_path: Path) -> None:
    service = files_plugin_gateway(tmp_path, "copy").start()
    try:
        [board] = idle_boards(service, 1)
        created = post(service, "/v1/reservations", {"name": "gina", "count": 1}).json()
        record = ready(service, board["LocalUUID"])
        assert record["FirmwareVersion"] == PULSECOUNT and record["Commit"] is None
        assert installed(tmp_path) == [{"serial": board["LocalUUID"], "files": ["main.py"]}]
        assert post(service, "/v1/reservations/end", {"name": "gina"}, created["token"]).status_code == 200
    finally:
        service.stop()


def test_a_board_whose_firmware_does_not_start_fails_and_its_reservation_ends(tmp_path: Path) -> None:
    service = files_plugin_gateway(tmp_path, "refuse").start()
    try:
        [board] = idle_boards(service, 1)
        created = post(service, "/v1/reservations", {"name": "hank", "count": 1}).json()
        with events(service, created["token"]) as socket:
            ended = next_event(socket, "reservation_ended")
        assert ended["reason"] == "failed"
        assert "the evaluation firmware did not start" in ended["error"]
        assert "picofleet-app 7.0.0" in ended["error"]
        assert len(installed(tmp_path)) == 1  # copied once, not again and again
        record = device(service, board["LocalUUID"])
        assert record["Status"] == "Broken" and "did not start" in record["StatusReason"]
        assert reservations(service) == []
    finally:
        service.stop()


def test_a_board_reserved_while_a_flash_for_it_is_prepared_is_not_flashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with gateway_in_process(tmp_path / "gw", 2) as (wired, client):
            manager, book = wired.manager, wired.reservations
            by_api, by_fleet = manager.listed()
            loop = asyncio.get_running_loop()

            def read_while_reserved(body: bytes, board_type: Any) -> FlashJob:  # a worker thread
                reserving = book.reserve("ivy", None, "pulsecount", serials=[by_api.serial])
                asyncio.run_coroutine_threadsafe(reserving, loop).result(30)
                return read_image(body, board_type)

            read_image = device_routes._read_image
            monkeypatch.setattr(device_routes, "_read_image", read_while_reserved)
            flashed = await client.post(f"/v1/devices/{by_api.serial}/flash", content=app_uf2("9.9.9"))
            assert flashed.status_code == 409, flashed.text
            assert "reserved by 'ivy'" in flashed.json()["error"]

            async def fetched_while_reserved(_: Any, firmware: dict[str, Any]) -> FlashJob:
                await book.reserve("jack", None, "pulsecount", serials=[by_fleet.serial])
                data = app_uf2("2.0.0")
                parsed = uf2.read_uf2(data)
                return FlashJob(data, parsed.families, image.uf2_version(parsed))

            config = dataclasses.replace(manager.config, fleet_url="http://fleet.invalid")
            sync = FleetSync(config, manager, manager.store, book)
            sync._job = fetched_while_reserved  # type: ignore[method-assign]
            target = {"commit": "c2", "firmware": {"sha256": "0" * 64, "url": "http://fleet.invalid/a"}}
            async with httpx.AsyncClient() as fleet:
                await sync.apply(fleet, {"boards": {by_fleet.serial: target}})
            assert (by_fleet.record["PendingFlash"] or {}).get("commit") != "c2"  # not queued

            for board in (by_api, by_fleet):
                await until(
                    lambda b=board: (
                        b.record["Status"] == "Reserved" and b.record["FirmwareVersion"] == PULSECOUNT
                    ),
                    30,
                    f"{board.serial} ready for evaluations",
                )
                assert board.record["PendingFlash"] is None  # nothing left to flash over it

    asyncio.run(main())


def test_a_fleet_flash_refused_while_a_failed_reservation_claimed_the_board_is_applied_after(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with gateway_in_process(tmp_path / "gw", 2) as (wired, _):
            manager, book = wired.manager, wired.reservations
            first, second = manager.listed()
            config = dataclasses.replace(manager.config, fleet_url="http://fleet.invalid")
            sync = FleetSync(config, manager, manager.store, book)

            async def job(client: Any, firmware: dict[str, Any]) -> FlashJob:
                data = app_uf2("2.0.0")
                parsed = uf2.read_uf2(data)
                return FlashJob(data, parsed.families, image.uf2_version(parsed))

            sync._job = job  # type: ignore[method-assign]
            target = {"commit": "c2", "firmware": {"sha256": "0" * 64, "url": "http://fleet.invalid/a"}}
            capable = book._capable

            async def target_arrives_then_refuse_the_second(board: Any, kind: str) -> str | None:
                if board is second:  # the first board is claimed by now: its fleet flash is refused
                    async with httpx.AsyncClient() as fleet:
                        await sync.apply(fleet, {"boards": {first.serial: target}})
                    return "cannot (test)"
                return await capable(board, kind)

            book._capable = target_arrives_then_refuse_the_second  # type: ignore[method-assign]
            manager.reapply.clear()
            with pytest.raises(ReservationError):
                await book.reserve("zed", None, "pulsecount", serials=[first.serial, second.serial])
            assert book.of(first.serial) is None
            assert first.pending_flash is None  # refused while claimed...
            assert manager.reapply.is_set()  # ...so the sync is told to apply its target again

    asyncio.run(main())


def test_a_board_with_a_flash_queued_is_not_reserved_until_it_is_flashed(gateway: GatewayProcess) -> None:
    serial = gateway.devices()[0]["LocalUUID"]
    assert gateway.put("/v1/enm/status", json={"targetStatus": "Paused"}).status_code == 200
    queued = httpx.post(f"{gateway.url}/v1/devices/{serial}/flash", content=app_uf2("9.9.9"), timeout=15)
    assert queued.status_code == 202, queued.text
    for body in ({"name": "liz", "serials": [serial]}, {"name": "liz", "count": 2}):
        refused = post(gateway, "/v1/reservations", body)
        assert refused.status_code == 409, refused.text
    assert "being flashed" in post(gateway, "/v1/reservations", {"name": "liz", "serials": [serial]}).text
    assert reservations(gateway) == []

    assert gateway.put("/v1/enm/status", json={"targetStatus": "Running"}).status_code == 200
    wait_for(
        lambda: (d := device(gateway, serial))["PendingFlash"] is None and d["Status"] == "Idle",
        30,
        "the flash done",
    )
    assert device(gateway, serial)["FirmwareVersion"] == "picofleet-app 9.9.9"
    created = post(gateway, "/v1/reservations", {"name": "liz", "serials": [serial]})
    assert created.status_code == 201, created.text


def test_an_ended_reservation_is_not_stored_again_by_its_board(tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway_in_process(tmp_path / "gw", 1) as (wired, client):
            manager, book = wired.manager, wired.reservations
            created = (await client.post("/v1/reservations", json={"name": "kim", "count": 1})).json()
            serial = created["reservations"][0]["serial"]
            await until(lambda: book.of(serial).state == "ready", 30, "the board ready")

            store = manager.store
            transact = store.transact
            removed, go_on = asyncio.Event(), asyncio.Event()

            async def slow_removal(job: Any) -> Any:  # the end's removal is stored, then waits
                result = await transact(job)
                if not removed.is_set():
                    removed.set()
                    await go_on.wait()
                return result

            store.transact = slow_removal  # type: ignore[method-assign]
            headers = {"Authorization": f"Bearer {created['token']}"}
            ending = asyncio.create_task(
                client.post("/v1/reservations/end", json={"name": "kim"}, headers=headers)
            )
            await asyncio.wait_for(removed.wait(), 10)
            # just then the board task says the board is not ready (the gateway was paused, say):
            marking = asyncio.create_task(book.set_ready(serial, False))
            await asyncio.sleep(0)  # it runs up to its first wait (its write is queued, or the lock)
            go_on.set()
            assert (await ending).status_code == 200
            await marking
            assert book.of(serial) is None
            assert await store.all(RESERVATIONS) == []  # what the next start loads: not reserved

    asyncio.run(main())


def test_boards_are_named_by_local_or_resin_uuid_but_once(gateway: GatewayProcess) -> None:
    board = gateway.devices()[0]
    serial, resin = board["LocalUUID"], board["ResinUUID"]
    twice = post(gateway, "/v1/reservations", {"name": "mo", "serials": [serial, resin]})
    assert twice.status_code == 400 and serial in twice.json()["error"], twice.text
    assert reservations(gateway) == []

    created = post(gateway, "/v1/reservations", {"name": "mo", "serials": [resin], "seconds": 600})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert [r["serial"] for r in created.json()["reservations"]] == [serial]
    extended = post(gateway, "/v1/reservations/extend", {"name": "mo", "serials": [resin]}, token)
    assert extended.status_code == 200, extended.text
    assert extended.json()["reservations"][0]["expires_at"] > created.json()["reservations"][0]["expires_at"]
    ended = post(gateway, "/v1/reservations/end", {"name": "mo", "serials": [resin]}, token)
    assert ended.status_code == 200 and ended.json()["ended"] == [serial], ended.text
    assert reservations(gateway) == []


def test_a_board_that_only_gets_files_copied_leaves_the_fleets_commit(tmp_path: Path) -> None:
    service = files_plugin_gateway(tmp_path, "files-only").start()
    try:
        [board] = idle_boards(service, 1)
        serial = board["LocalUUID"]
        flashed = httpx.post(
            f"{service.url}/v1/devices/{serial}/flash?commit=c0ffee", content=app_uf2("3.0.0")
        )
        assert flashed.status_code == 202, flashed.text
        wait_for(lambda: device(service, serial)["Commit"] == "c0ffee", 30, "the board at commit c0ffee")
        created = post(service, "/v1/reservations", {"name": "nia", "count": 1}).json()
        record = ready(service, serial)
        assert record["FirmwareVersion"] == PULSECOUNT
        assert record["Commit"] is None  # c0ffee is gone: the fleet sync puts it back after the reservation
        assert installed(tmp_path) == [{"serial": serial, "files": ["main.py"]}]
        assert post(service, "/v1/reservations/end", {"name": "nia"}, created["token"]).status_code == 200
    finally:
        service.stop()
