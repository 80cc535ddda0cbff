"""The fleet service stopped for a while; a gateway killed mid-download; the fleet's view after a restart.

Real processes throughout: a fleet service, gateways with virtual boards, the real git client.
Every wait has a deadline. The download test puts a small throttling TCP relay (test code only)
between the gateway and the fleet, so that an 8 MiB asset takes long enough on loopback to kill
the gateway in the middle of it, and so that the requests the gateway sends can be looked at.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from picofleet.firmware.asset_cache import sha256_of
from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from tests.helpers.fleet import FleetProcess, git
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import MANIFEST, app_uf2, commit, write

pytestmark = pytest.mark.timeout(240)


# -- helpers -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateways(tmp_path: Path, fleet_url: str, key: str, names: tuple[str, ...]) -> list[GatewayProcess]:
    gateways = []
    for name in names:
        gateway = GatewayProcess(
            tmp_path / name, "--simulate", "2", "--fleet", fleet_url, f"--provisioning-key={key}"
        ).start()
        gateways.append(gateway)
    for gateway in gateways:
        idle_boards(gateway, 2)
    return gateways


def at_commit(gateway: GatewayProcess, want: str) -> bool:
    devices = gateway.devices()
    return len(devices) == 2 and all(
        d["Commit"] == d["TargetCommit"] == want and d["Status"] == "Idle" for d in devices
    )


def wait_converged(gateways: list[GatewayProcess], want: str, timeout: float, what: str) -> None:
    wait_for(lambda: all(at_commit(g, want) for g in gateways), timeout, what, interval=0.2)


def new_repo(tmp_path: Path, uf2_bytes: bytes) -> tuple[Path, str]:
    work = tmp_path / "repo"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": uf2_bytes})
    return work, commit(work, "first")


def gateway_key(gateway: GatewayProcess) -> str:
    """The gateway's own fleet key, read from its (stopped) database."""
    db = json.loads((gateway.data / "database" / "enm.db").read_text())
    for table in db.values():
        for doc in table.values():
            if isinstance(doc, dict) and doc.get("key") == "fleetGatewayKey":
                return str(doc["value"])
    raise AssertionError("the gateway has no fleet key in its database")


class ThrottlingRelay:
    """A TCP relay to ``target`` that caps the download rate and keeps what the client sent."""

    def __init__(self, target: str, rate: float | None) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.rate = rate  # bytes per second towards the client, None: as fast as it goes
        self.sent_upstream: list[bytearray] = []
        self.downstream_bytes = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            record = bytearray()
            with self.lock:
                self.sent_upstream.append(record)
            threading.Thread(target=self._up, args=(client, server, record), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, record: bytearray) -> None:
        try:
            while data := client.recv(65536):
                with self.lock:
                    record += data
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(16384):
                client.sendall(data)
                with self.lock:
                    self.downstream_bytes += len(data)
                rate = self.rate
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            _shut(client)

    def asset_requests(self, sha256: str) -> list[str | None]:
        """The Range header (or None) of every GET of the asset, in order."""
        with self.lock:
            text = "".join(bytes(record).decode("latin-1") for record in self.sent_upstream)
        found = []
        for match in re.finditer(rf"GET /v1/assets/{sha256} HTTP/1\.1\r\n(.*?)\r\n\r\n", text, re.S):
            ranged = re.search(r"^range:\s*(.+?)\s*$", match.group(1), re.I | re.M)
            found.append(ranged.group(1) if ranged else None)
        return found

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def stop_later() -> Iterator[Callable[[Any], Any]]:
    """Stop every process (or relay) handed to it at the end, whatever happened."""
    things: list[Any] = []
    yield lambda thing: things.append(thing) or thing
    for thing in reversed(things):
        if isinstance(thing, ThrottlingRelay):
            thing.close()
        else:
            thing.stop()


# -- 1. the fleet service stopped for a while --------------------------------------------------------
def test_gateways_keep_serving_while_the_fleet_is_down_and_converge_after_it_returns(
    tmp_path: Path, stop_later: Callable[[Any], Any]
) -> None:
    port = free_port()  # the gateways have the fleet's URL fixed: it comes back on the same port
    fleet = stop_later(FleetProcess(tmp_path / "fleet", "--port", str(port)).start())
    assert fleet.url == f"http://127.0.0.1:{port}"
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateways = [stop_later(g) for g in start_gateways(tmp_path, fleet.url, key, ("gw1", "gw2"))]

    work, first = new_repo(tmp_path, app_uf2("2.0.0"))
    git(work, "push", "-q", fleet.push_url("lab"), "main")
    wait_converged(gateways, first, 60, "every board at the first release")

    assert fleet.stop() == 0, fleet.output()
    for gateway in gateways:  # each notices the fleet is gone (and backs off)...
        wait_for(
            lambda g=gateway: "cannot follow the fleet's target" in g.output(), 20, "the gateway to notice"
        )
    for gateway in gateways:  # ...and keeps serving its API and boards as they were
        assert at_commit(gateway, first), gateway.devices()
        assert all(d["TargetEnvironment"]["MODE"] == "lab" for d in gateway.devices())

    # a gateway restarted while the fleet is down takes its targets from its stored target state
    assert gateways[0].stop() == 0
    gateways[0].start()
    gateways[0].wait_devices(
        lambda d: len(d) == 2 and all(x["Status"] == "Idle" for x in d), 20, "2 boards after restart"
    )
    assert at_commit(gateways[0], first), gateways[0].devices()
    assert all(d["TargetConfig"] == {"RATE": "5"} for d in gateways[0].devices())
    wait_for(
        lambda: "cannot follow the fleet's target" in gateways[0].output(),
        20,
        "the restarted gateway retrying",
    )
    assert at_commit(gateways[0], first) and at_commit(gateways[1], first)

    # the fleet comes back on the same data and port; a push reaches every board
    fleet.start()
    assert fleet.url == f"http://127.0.0.1:{port}"
    write(work, {"build/app.uf2": app_uf2("3.0.0")})
    second = commit(work, "v3")
    git(work, "push", "-q", fleet.push_url("lab"), "main")
    # the back-off is at most ENM_CONFIG_LOOP_DELAY, with growing delays while the fleet was down
    wait_converged(gateways, second, 60, "every board at the second release")
    assert [r["commit"] for r in fleet.releases("lab")] == [first, second]
    assert len(fleet.request("GET", "/v1/fleets/lab/gateways").json()) == 2  # nobody provisioned again


# -- 2. a gateway killed mid-download resumes -----------------------------------------------------------
def test_a_gateway_killed_mid_download_resumes_it(tmp_path: Path, stop_later: Callable[[Any], Any]) -> None:
    image = make_app_image("picofleet-app", "2.0.0", "pico2-ice", size=4 * 1024 * 1024)
    big = uf2.from_binary(image, FLASH_BASE, uf2.RP2350_ARM_S)
    assert len(big) == 8 * 1024 * 1024
    sha = sha256_of(big)

    fleet = stop_later(FleetProcess(tmp_path / "fleet").start())
    key = fleet.create_fleet("lab")["provisioning_key"]
    relay = stop_later(ThrottlingRelay(fleet.url, rate=2 * 1024 * 1024))
    (gateway,) = [stop_later(g) for g in start_gateways(tmp_path, relay.url, key, ("gw",))]
    partial = gateway.data / "assets" / "partial" / sha

    work, first = new_repo(tmp_path, big)
    git(work, "push", "-q", fleet.push_url("lab"), "main")

    def partway() -> int | None:
        size = partial.stat().st_size if partial.exists() else 0
        return size if 1024 * 1024 <= size < len(big) // 2 else None

    wait_for(partway, 30, "the download to be partway", interval=0.01)
    gateway.kill()
    kept = partial.stat().st_size
    assert 0 < kept < len(big)
    assert relay.asset_requests(sha) == [None]  # one plain GET so far
    fetched_before = relay.downstream_bytes

    relay.rate = None
    gateway.start()
    wait_converged([gateway], first, 60, "both boards at the release after the restart")

    ranges = relay.asset_requests(sha)
    assert len(ranges) == 2, ranges
    start = int(re.fullmatch(r"bytes=(\d+)-", ranges[1] or "").group(1))  # type: ignore[union-attr]
    assert start == kept  # resumed exactly from the bytes it had kept
    fetched_after = relay.downstream_bytes - fetched_before
    assert fetched_after < len(big) - kept + 256 * 1024  # the rest, plus the small JSON calls
    assert fetched_before + fetched_after < 2 * len(big)
    assert not partial.exists()
    assert all(d["FirmwareVersion"] == "picofleet-app 2.0.0" for d in gateway.devices())


# -- 3. the fleet's view is corrected within one cycle after a gateway restart -------------------------
def test_the_fleets_view_is_corrected_after_a_gateway_restart_and_an_unplug(
    tmp_path: Path, stop_later: Callable[[Any], Any]
) -> None:
    fleet = stop_later(FleetProcess(tmp_path / "fleet").start())
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateways = [stop_later(g) for g in start_gateways(tmp_path, fleet.url, key, ("gw1", "gw2"))]
    work, first = new_repo(tmp_path, app_uf2("2.0.0"))
    git(work, "push", "-q", fleet.push_url("lab"), "main")
    wait_converged(gateways, first, 60, "every board at the release")

    gateway = gateways[0]
    uuids = sorted(d["LocalUUID"] for d in gateway.devices())

    def fleet_boards() -> dict[str, dict[str, Any]]:
        response = fleet.request("GET", "/v1/fleets/lab/boards")
        assert response.status_code == 200, response.text
        return {b["LocalUUID"]: b for b in response.json()}

    def fleet_shows(uuid: str, online: bool, at: str | None) -> bool:
        board = fleet_boards().get(uuid)
        return bool(board) and board["online"] is online and board["Commit"] == at  # type: ignore[index]

    wait_for(lambda: all(fleet_shows(u, True, first) for u in uuids), 10, "the fleet seeing the release")

    # the gateway stops; meanwhile the fleet's view of it is made wrong (a stale, different report)
    assert gateway.stop() == 0
    stale = [
        {"LocalUUID": u, "BoardType": "pico2-ice", "Commit": None, "Status": "Offline", "online": False}
        for u in uuids
    ]
    response = fleet.as_gateway(gateway_key(gateway), "PUT", "/v1/gateway/state", json={"boards": stale})
    assert response.status_code == 200, response.text
    assert all(fleet_shows(u, False, None) for u in uuids)

    started = time.monotonic()
    gateway.start()
    wait_for(lambda: all(fleet_shows(u, True, first) for u in uuids), 10, "the fleet's view corrected")
    assert time.monotonic() - started < 10
    assert all(fleet_boards()[u]["gateway"] == fleet_boards()[uuids[0]]["gateway"] for u in uuids)

    # a board unplugged: the fleet shows it offline within a few seconds; the other stays online
    unplug = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "sim", "unplug", uuids[0], "--data", str(gateway.data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert unplug.returncode == 0, unplug.stdout + unplug.stderr
    started = time.monotonic()
    wait_for(lambda: fleet_shows(uuids[0], False, first), 5, "the unplugged board offline in the fleet")
    assert time.monotonic() - started < 5
    assert fleet_shows(uuids[1], True, first)
    assert all(fleet_shows(d["LocalUUID"], True, first) for d in gateways[1].devices())
