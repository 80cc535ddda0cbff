"""The fleet service's gateway and operator API against a real service process on loopback.

Releases are made with the real ``git`` client pushing to the service; gateways are plain HTTP
clients here (the gateway's sync loop is tested elsewhere).

Every test runs twice: against a one-process service, and with every request (git pushes, long
polls, asset ranges, the CLI) going through a front worker of a ``--workers 2`` service, which
must answer exactly as the primary does.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.fleet import FleetProcess, FrontWorkerProcess, git
from tests.helpers.fleet import fleet_cli as cli
from tests.test_fleet_git import MANIFEST, app_uf2, commit, write

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["one-process", "through-a-front-worker"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetProcess]:
    data = tmp_path_factory.mktemp("fleet-api") / "data"
    if request.param == "one-process":
        fleet = FleetProcess(data).start()
        yield fleet
        assert fleet.stop() == 0, fleet.output()
        return
    fleet = FleetProcess(data, "--workers", "2").start()
    worker = FrontWorkerProcess(fleet).start()
    fleet.url = worker.url  # every request of the tests goes through the front worker
    yield fleet
    assert worker.stop() == 0, worker.output()
    assert fleet.stop() == 0, fleet.output()


class Fleet:
    """A fleet of the service, its work tree and its push URL."""

    def __init__(self, service: FleetProcess, name: str, tmp_path: Path) -> None:
        self.service = service
        self.name = name
        created = service.create_fleet(name)
        self.provisioning_key: str = created["provisioning_key"]
        self.work = tmp_path / f"work-{name}"
        self.work.mkdir()
        git(self.work, "init", "-q", "-b", "main")
        self.url = service.push_url(name)

    def push(self, version: str, manifest: str = MANIFEST) -> str:
        """Commit an app UF2 of ``version`` and push it; the new commit."""
        write(self.work, {"fleet.yml": manifest, "build/app.uf2": app_uf2(version)})
        head = commit(self.work, f"release {version}")
        git(self.work, "push", "-q", self.url, "main")
        return head

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.service.request(method, f"/v1/fleets/{self.name}{path}", **kwargs)


def boards(*entries: tuple[str, str]) -> dict[str, Any]:
    return {
        "boards": [
            {
                "LocalUUID": uuid,
                "BoardType": board_type,
                "Name": f"board-{uuid}",
                "Commit": None,
                "Status": "Idle",
                "FirmwareVersion": None,
                "online": True,
                "Progress": None,
            }
            for uuid, board_type in entries
        ]
    }


def report(service: FleetProcess, key: str, body: dict[str, Any]) -> None:
    response = service.as_gateway(key, "PUT", "/v1/gateway/state", json=body)
    assert response.status_code == 200, response.text


def target(service: FleetProcess, key: str) -> dict[str, Any]:
    response = service.as_gateway(key, "GET", "/v1/gateway/state")
    assert response.status_code == 200, response.text
    return response.json()


def test_provisioning_keys_are_checked_and_stored_hashed(service: FleetProcess, tmp_path: Path) -> None:
    fleet = Fleet(service, "prov", tmp_path)
    wrong = httpx.post(f"{service.url}/v1/gateways", json={"provisioning_key": "nope"}, timeout=10)
    assert wrong.status_code == 401 and "provisioning key" in wrong.json()["error"]
    assert httpx.post(f"{service.url}/v1/gateways", json={}, timeout=10).status_code == 400

    gateway = service.provision(fleet.provisioning_key, name="rack-1")
    assert gateway["fleet"] == "prov" and len(gateway["gateway"]) == 32 and gateway["key"]
    assert target(service, gateway["key"]) == {"fleet": "prov", "boards": {}}
    assert service.as_gateway("bad-key", "GET", "/v1/gateway/state").status_code == 401
    assert httpx.get(f"{service.url}/v1/gateway/state", timeout=10).status_code == 401

    database = (service.data / "fleet.db").read_text()
    assert fleet.provisioning_key not in database and gateway["key"] not in database
    assert hashlib.sha256(gateway["key"].encode()).hexdigest() in database

    rotated = fleet.admin("POST", "/provisioning-key")
    assert rotated.status_code == 200
    new_key = rotated.json()["provisioning_key"]
    old = httpx.post(
        f"{service.url}/v1/gateways", json={"provisioning_key": fleet.provisioning_key}, timeout=10
    )
    assert old.status_code == 401
    assert service.provision(new_key)["fleet"] == "prov"
    assert target(service, gateway["key"])["fleet"] == "prov"  # provisioned gateways keep working
    listed = fleet.admin("GET", "/gateways").json()
    assert listed[0]["name"] == "rack-1" and len(listed) == 2


def test_report_is_validated(service: FleetProcess, tmp_path: Path) -> None:
    fleet = Fleet(service, "shape", tmp_path)
    key = service.provision(fleet.provisioning_key)["key"]
    bad = [
        ({}, "boards"),
        ({"boards": [{"BoardType": "pico2-ice"}]}, "boards[0].LocalUUID"),
        ({"boards": [{"LocalUUID": "a", "BoardType": "x", "online": "yes"}]}, "boards[0].online"),
        ({"boards": [{"LocalUUID": "a", "BoardType": "x", "Progress": "50"}]}, "boards[0].Progress"),
        (boards(("a", "pico2-ice"), ("a", "pico2-ice")), "reported twice"),
    ]
    for body, reason in bad:
        response = service.as_gateway(key, "PUT", "/v1/gateway/state", json=body)
        assert response.status_code == 400 and reason in response.json()["error"], (body, response.text)
    report(service, key, boards(("a", "pico2-ice")))
    report(service, key, boards(("a", "pico2-ice")))  # idempotent
    assert list(target(service, key)["boards"]) == ["a"]


def test_target_state_follows_pushes_pins_and_long_polls(service: FleetProcess, tmp_path: Path) -> None:
    fleet = Fleet(service, "lab", tmp_path)
    key = service.provision(fleet.provisioning_key)["key"]
    report(service, key, boards(("b1", "pico2-ice"), ("b2", "pico2-ice"), ("old", "rp2040")))
    empty = target(service, key)["boards"]
    assert empty["b1"] == {"commit": None, "firmware": None, "fpga": None, "environment": {}, "config": {}}

    first = fleet.push("2.0.0")
    state = target(service, key)
    data = app_uf2("2.0.0")
    sha = hashlib.sha256(data).hexdigest()
    for uuid in ("b1", "b2"):
        assert state["boards"][uuid] == {
            "commit": first,
            "firmware": {"sha256": sha, "size": len(data), "url": f"/v1/assets/{sha}", "kind": "uf2"},
            "fpga": None,
            "environment": {"MODE": "lab"},
            "config": {"RATE": "5"},
        }
    assert state["boards"]["old"]["commit"] is None and state["boards"]["old"]["firmware"] is None

    # ETag / 304
    response = service.as_gateway(key, "GET", "/v1/gateway/state")
    etag = response.headers["etag"]
    same = service.as_gateway(key, "GET", "/v1/gateway/state", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    assert service.as_gateway(key, "GET", "/v1/gateway/state?wait=61").status_code == 400

    # long poll: nothing changes -> 304 after about the wait
    started = time.monotonic()
    idle = service.as_gateway(key, "GET", "/v1/gateway/state?wait=1", headers={"If-None-Match": etag})
    assert idle.status_code == 304 and 0.9 <= time.monotonic() - started < 5

    # long poll: a push answers it at once
    def long_poll(tag: str) -> tuple[httpx.Response, float]:
        answer = service.as_gateway(
            key, "GET", "/v1/gateway/state?wait=30", headers={"If-None-Match": tag}, timeout=40
        )
        return answer, time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(long_poll, etag)
        time.sleep(0.2)  # lets the poll reach the service first; the asserts hold either way
        assert not waiting.done()
        second = fleet.push("2.1.0")
        pushed = time.monotonic()
        answer, answered = waiting.result(timeout=10)
    assert answer.status_code == 200 and answered - pushed < 2
    assert answer.json()["boards"]["b1"]["commit"] == second
    etag = answer.headers["etag"]

    # the gateway's own report adding a board wakes its long poll
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(long_poll, etag)
        report(
            service,
            key,
            boards(("b1", "pico2-ice"), ("b2", "pico2-ice"), ("old", "rp2040"), ("b3", "pico2-ice")),
        )
        answer, _ = waiting.result(timeout=10)
    assert answer.status_code == 200 and answer.json()["boards"]["b3"]["commit"] == second

    # fleet pin: back to the first release, even after another push
    assert fleet.admin("PUT", "/pin", json={"commit": "0" * 40}).status_code == 409
    assert fleet.admin("PUT", "/pin", json={"commit": "xyz"}).status_code == 400
    assert service.request("PUT", "/v1/fleets/none/pin", json={"commit": first}).status_code == 404
    pinned = fleet.admin("PUT", "/pin", json={"commit": first[:10]})
    assert pinned.status_code == 200 and pinned.json()["pinned"] == first
    assert {b["commit"] for u, b in target(service, key)["boards"].items() if u != "old"} == {first}
    third = fleet.push("2.2.0")
    assert target(service, key)["boards"]["b1"]["commit"] == first

    # a board pin overrides the fleet's
    assert fleet.admin("PUT", "/boards/b2/pin", json={"commit": third}).status_code == 200
    assert fleet.admin("PUT", "/boards/nope/pin", json={"commit": third}).status_code == 404
    state = target(service, key)["boards"]
    assert (state["b1"]["commit"], state["b2"]["commit"]) == (first, third)
    listed = {b["LocalUUID"]: b for b in fleet.admin("GET", "/boards").json()}
    assert listed["b2"]["pin"] == third and listed["b2"]["target_commit"] == third
    assert listed["b1"]["target_commit"] == first and listed["b1"]["online"] is True

    # unpin both: the latest release again
    assert fleet.admin("DELETE", "/pin").json()["target"] == third
    assert fleet.admin("DELETE", "/boards/b2/pin").status_code == 200
    assert {b["commit"] for u, b in target(service, key)["boards"].items() if u != "old"} == {third}
    gateways = fleet.admin("GET", "/gateways").json()
    assert gateways[0]["last_seen"] and len(gateways[0]["boards"]) == 4


def test_variables_board_over_release_over_fleet(service: FleetProcess, tmp_path: Path) -> None:
    fleet = Fleet(service, "vars", tmp_path)
    key = service.provision(fleet.provisioning_key)["key"]
    report(service, key, boards(("a", "pico2-ice"), ("b", "pico2-ice")))
    fleet.push("2.0.0")  # fleet.yml: environment MODE=lab, config RATE=5

    for path, value in [
        ("/env/MODE", "fleet"),
        ("/env/OTHER", "f"),
        ("/config/RATE", "1"),
        ("/config/BALENA_HOST_X", "y"),
        ("/boards/a/env/MODE", "board"),
        ("/boards/a/config/RATE", "9"),
    ]:
        response = fleet.admin("PUT", path, json={"value": value})
        assert response.status_code == 200, response.text
    state = target(service, key)["boards"]
    assert state["a"]["environment"] == {"MODE": "board", "OTHER": "f"}
    assert state["b"]["environment"] == {"MODE": "lab", "OTHER": "f"}
    assert state["a"]["config"] == {"RATE": "9", "BALENA_HOST_X": "y"}
    assert state["b"]["config"] == {"RATE": "5", "BALENA_HOST_X": "y"}

    assert fleet.admin("DELETE", "/boards/a/env/MODE").json() == {}
    assert target(service, key)["boards"]["a"]["environment"]["MODE"] == "lab"
    assert fleet.admin("GET", "/env").json() == {"MODE": "fleet", "OTHER": "f"}

    for method, path, body, status, reason in [
        ("PUT", "/env/lower", {"value": "x"}, 400, "invalid env variable name"),
        ("PUT", "/env/BALENA_X", {"value": "x"}, 400, "configuration variables"),
        ("PUT", "/env/OK", {"value": 5}, 400, "value"),
        ("DELETE", "/env/UNSET", None, 404, "not set"),
        ("PUT", "/boards/zz/env/OK", {"value": "x"}, 404, "no board 'zz'"),
    ]:
        response = fleet.admin(method, path, json=body)
        assert response.status_code == status and reason in response.json()["error"], response.text
    assert service.request("PUT", "/v1/fleets/ghost/env/A", json={"value": "x"}).status_code == 404


def test_assets_ranges_and_fleet_isolation(service: FleetProcess, tmp_path: Path) -> None:
    fleet = Fleet(service, "assets", tmp_path)
    other = Fleet(service, "other", tmp_path)
    key = service.provision(fleet.provisioning_key)["key"]
    stranger = service.provision(other.provisioning_key)["key"]
    report(service, key, boards(("a", "pico2-ice")))
    report(service, stranger, boards(("z", "pico2-ice")))
    fleet.push("3.0.0")
    data = app_uf2("3.0.0")
    url = target(service, key)["boards"]["a"]["firmware"]["url"]

    whole = service.as_gateway(key, "GET", url)
    assert whole.status_code == 200 and whole.content == data
    part = service.as_gateway(key, "GET", url, headers={"Range": "bytes=100-611"})
    assert part.status_code == 206 and part.content == data[100:612]
    assert part.headers["content-range"] == f"bytes 100-611/{len(data)}"
    tail = service.as_gateway(key, "GET", url, headers={"Range": f"bytes={len(data) - 7}-"})
    assert tail.status_code == 206 and tail.content == data[-7:]
    past = service.as_gateway(key, "GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert service.request("GET", url).content == data  # the admin token works too

    assert service.as_gateway(stranger, "GET", url).status_code == 404
    assert service.as_gateway(key, "GET", "/v1/assets/" + "0" * 64).status_code == 404
    assert httpx.get(service.url + url, timeout=10).status_code == 401
    seen = target(service, stranger)
    assert seen == {
        "fleet": "other",
        "boards": {"z": {"commit": None, "firmware": None, "fpga": None, "environment": {}, "config": {}}},
    }


def test_operator_cli(service: FleetProcess, tmp_path: Path) -> None:
    created = cli(service, "create", "cli", "--json")
    assert created.returncode == 0, created.stderr
    answer = json.loads(created.stdout)
    host = service.url.removeprefix("http://")
    assert answer["git_url"] == f"http://admin:{service.token}@{host}/git/cli.git"
    assert service.provision(answer["provisioning_key"])["fleet"] == "cli"

    work = tmp_path / "cli-work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2()})
    first = commit(work, "one")
    git(work, "push", "-q", answer["git_url"], "main")  # the printed remote is all git needs
    write(work, {"build/app.uf2": app_uf2("2.0.1")})
    second = commit(work, "two")
    git(work, "push", "-q", answer["git_url"], "main")

    text = cli(service, "create", "cli-text", "--token", service.token)
    assert text.returncode == 0 and "git remote:" in text.stdout and "provisioning key:" in text.stdout

    releases = json.loads(cli(service, "releases", "cli", "--json").stdout)
    assert [r["commit"] for r in releases] == [first, second]
    assert "cli" in [f["fleet"] for f in json.loads(cli(service, "list", "--json").stdout)]
    pinned = json.loads(cli(service, "pin", "cli", first, "--json").stdout)
    assert pinned["pinned"] == first and pinned["target"] == first
    unpinned = json.loads(cli(service, "unpin", "cli", "--json").stdout)
    assert unpinned["pinned"] is None and unpinned["target"] == second

    assert json.loads(cli(service, "env", "cli", "set", "MODE", "x", "--json").stdout) == {"MODE": "x"}
    assert json.loads(cli(service, "config", "cli", "set", "RATE", "7", "--json").stdout) == {"RATE": "7"}
    assert json.loads(cli(service, "env", "cli", "unset", "MODE", "--json").stdout) == {}

    key = service.provision(answer["provisioning_key"])["key"]
    report(service, key, boards(("u1", "pico2-ice")))
    assert json.loads(cli(service, "pin-board", "cli", "u1", first, "--json").stdout)["pin"] == first
    assert json.loads(cli(service, "env", "cli", "set", "K", "v", "--board", "u1", "--json").stdout) == {
        "K": "v"
    }
    listed = json.loads(cli(service, "boards", "cli", "--json").stdout)
    assert listed[0]["target_commit"] == first and listed[0]["board_env"] == {"K": "v"}
    assert json.loads(cli(service, "unpin-board", "cli", "u1", "--json").stdout)["pin"] is None
    gateways = json.loads(cli(service, "gateways", "cli", "--json").stdout)
    assert [b["target_commit"] for g in gateways for b in g["boards"]] == [second]
    assert cli(service, "boards", "cli").returncode == 0

    for args, reason in [
        (("pin", "cli", "0" * 40), "is not a release of fleet 'cli' (HTTP 409)"),
        (("pin", "ghost", first), "no fleet 'ghost' (HTTP 404)"),
        (("env", "cli", "set", "bad-key", "v"), "invalid env variable name"),
        (("create", "cli"), "fleet 'cli' already exists (HTTP 409)"),
        (("list", "--token", "wrong"), "missing or wrong admin token"),
        (("list", "--url", "http://127.0.0.1:9"), "cannot reach the fleet service"),
    ]:
        failed = cli(service, *args)
        assert failed.returncode == 1, failed
        lines = failed.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("picofleet fleet: ") and reason in lines[0], lines


def test_errors_are_json_unknown_routes_wrong_methods_and_bad_bodies(service: FleetProcess) -> None:
    unknown = service.request("GET", "/v2/nothing")
    assert unknown.status_code == 404 and unknown.json() == {"error": "no route GET /v2/nothing"}

    for method, path, allow in [
        ("PATCH", "/v1/fleets", "GET, HEAD, POST"),
        ("POST", "/v1/fleets/any/pin", "PUT, DELETE"),
        ("DELETE", "/v1/gateway/state", "GET, HEAD, PUT"),
        ("POST", "/v1/fleets/any/boards/b/env/KEY", "PUT, DELETE"),
        ("PUT", "/git/any.git/info/refs", "GET, HEAD, POST"),
    ]:
        wrong = service.request(method, path)
        assert wrong.status_code == 405, (method, path, wrong.text)
        assert wrong.json() == {"error": f"method {method} is not allowed on {path}"}
        assert wrong.headers["allow"] == allow, (method, path)

    malformed = service.request(
        "POST", "/v1/fleets", content=b"{bad", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["error"].startswith("malformed JSON: ")
    oversize = service.request("POST", "/v1/fleets", content=b" " * (1024 * 1024 + 1))
    assert oversize.status_code == 413 and "at most 1048576 bytes" in oversize.json()["error"]
    service.create_fleet("errors")
    for path, body in [
        ("/v1/fleets/errors/env/KEY", b'{"value": NaN}'),
        ("/v1/fleets/errors/pin", b'{"commit":'),
    ]:
        refused = service.request("PUT", path, content=body)
        assert refused.status_code == 400 and refused.json()["error"].startswith("malformed JSON: "), path
    assert service.fleet("errors")["env"] == {}
    assert service.request("GET", "/v1/fleets").status_code == 200  # the service is fine


def test_status_line_carries_the_reason_phrase(service: FleetProcess) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"GET /v1/fleets HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 401 Unauthorized\r\n")
