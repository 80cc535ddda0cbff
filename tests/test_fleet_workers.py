"""``picofleet fleet serve --workers N``: front workers answer target-state checks from a cache that
never outlives a change, report the gateways they answered, and live and die with the primary.

Requests meant for one process go to a standalone front worker on its own port (forwarding to the
primary of a ``--workers 2`` service); the shared-port tests look at the processes themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from picofleet.fleet.workers.front_worker import TargetCache
from tests.helpers.fleet import FleetProcess, FrontWorkerProcess
from tests.helpers.wait import wait_for
from tests.test_fleet_api import Fleet, boards, report

pytestmark = pytest.mark.timeout(120)

GENERATION = "x-picofleet-generation"


@pytest.fixture
def fleet_and_worker(tmp_path: Path) -> Iterator[tuple[FleetProcess, FrontWorkerProcess]]:
    fleet = FleetProcess(tmp_path / "data", "--workers", "2").start()
    worker = FrontWorkerProcess(fleet).start()
    yield fleet, worker
    worker.stop()
    fleet.stop()


def state(url: str, key: str, etag: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"If-None-Match": etag} if etag else {})}
    return httpx.get(f"{url}/v1/gateway/state", headers=headers, timeout=10)


@contextlib.contextmanager
def primary_frozen(fleet: FleetProcess) -> Iterator[None]:
    """The primary stopped (SIGSTOP) meanwhile: whatever is answered comes from a worker alone."""
    os.kill(fleet.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(fleet.pid, signal.SIGCONT)


def gateway_seen_through(worker: FrontWorkerProcess, lab: Fleet) -> tuple[Fleet, str, str]:
    """A new gateway of ``lab`` that asked for its target through ``worker`` (a forwarded request,
    cached by the worker): the fleet, the gateway's key and its target's ETag."""
    key = lab.service.provision(lab.provisioning_key)["key"]
    return lab, key, state(worker.url, key).headers["etag"]


def front_workers(primary_pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(primary_pid).children()
        if "picofleet.fleet.workers.front_worker" in " ".join(child.cmdline())
    ]


def test_a_cached_answer_never_outlives_a_change(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess], tmp_path: Path
) -> None:
    fleet, worker = fleet_and_worker
    lab = Fleet(fleet, "lab", tmp_path)
    first = lab.push("1.0.0")
    key = fleet.provision(lab.provisioning_key)["key"]
    report(fleet, key, boards(("b1", "pico2-ice")))

    fresh = state(worker.url, key)
    assert fresh.status_code == 200 and fresh.json()["boards"]["b1"]["commit"] == first
    assert fresh.headers["etag"] == state(fleet.url, key).headers["etag"]  # the primary's own answer
    etag = fresh.headers["etag"]
    with primary_frozen(fleet):
        for _ in range(5):
            unchanged = state(worker.url, key, etag)
            assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag

    # A fleet variable, set through the primary: the worker stops answering 304 for the old ETag.
    assert lab.admin("PUT", "/env/LED", json={"value": "on"}).status_code == 200
    changed = wait_for(
        lambda: (r := state(worker.url, key, etag)).status_code == 200 and r,
        10,
        "the worker to answer the changed target",
    )
    assert changed.json()["boards"]["b1"]["environment"]["LED"] == "on"
    assert all(state(worker.url, key, etag).status_code == 200 for _ in range(5))

    # A push through the worker itself, and a board the gateway reports: the same.
    lab.url = f"http://x:{fleet.token}@{worker.url.removeprefix('http://')}/git/lab.git"
    second = lab.push("2.0.0")  # the feed line may come a moment after the push returns
    wait_for(
        lambda: state(worker.url, key).json()["boards"]["b1"]["commit"] == second, 10, "the pushed commit"
    )
    report(fleet, key, boards(("b1", "pico2-ice"), ("b2", "pico2-ice")))
    wait_for(lambda: set(state(worker.url, key).json()["boards"]) == {"b1", "b2"}, 10, "the new board")


def test_gateways_answered_from_the_cache_are_seen(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess], tmp_path: Path
) -> None:
    fleet, worker = fleet_and_worker
    lab, key, etag = gateway_seen_through(worker, Fleet(fleet, "seen", tmp_path))  # the primary notes it seen
    before = lab.admin("GET", "/gateways").json()[0]["last_seen"]

    with primary_frozen(fleet):
        assert state(worker.url, key, etag).status_code == 304  # answered by the worker alone
    wait_for(
        lambda: lab.admin("GET", "/gateways").json()[0]["last_seen"] > before,
        10,
        "the worker to report the gateway as seen",
    )


def test_a_worker_forwards_past_the_primarys_requests_per_connection(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess],
) -> None:
    """Hypercorn ends a keep-alive connection after 1,000 requests: the worker must notice and use a
    fresh one, not break the client's connection."""
    fleet, worker = fleet_and_worker
    headers = {"Authorization": f"Bearer {fleet.token}"}
    with httpx.Client(base_url=worker.url, headers=headers, timeout=10) as client:
        statuses = Counter(client.get("/v1/fleets").status_code for _ in range(1100))
    assert statuses == {200: 1100}


def test_a_worker_whose_primary_is_gone_answers_503(
    fleet_and_worker: tuple[FleetProcess, FrontWorkerProcess], tmp_path: Path
) -> None:
    fleet, worker = fleet_and_worker
    _, key, etag = gateway_seen_through(worker, Fleet(fleet, "gone", tmp_path))
    fleet.kill()

    # Its cached answer went with the change feed: nothing stale is served.
    refused = wait_for(
        lambda: (r := state(worker.url, key, etag)).status_code == 503 and r, 10, "the worker to refuse"
    )
    assert "primary" in refused.json()["error"] and refused.headers["retry-after"] == "1"
    listed = httpx.get(
        f"{worker.url}/v1/fleets", headers={"Authorization": f"Bearer {fleet.token}"}, timeout=10
    )
    assert listed.status_code == 503


def test_workers_start_with_the_primary_are_replaced_and_die_with_it(tmp_path: Path) -> None:
    fleet = FleetProcess(tmp_path / "data", "--workers", "3").start()
    try:
        workers = wait_for(lambda: len(w := front_workers(fleet.pid)) == 2 and w, 10, "two front workers")
        assert "PICOFLEET_ADMIN_TOKEN" not in " ".join(" ".join(w.cmdline()) for w in workers)

        workers[0].kill()
        replaced = wait_for(
            lambda: (
                len(w := front_workers(fleet.pid)) == 2 and workers[0].pid not in {p.pid for p in w} and w
            ),
            10,
            "the dead worker to be replaced",
        )
        assert workers[1].pid in {p.pid for p in replaced}

        fleet.kill()
        psutil.wait_procs(replaced, timeout=10)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in replaced)

        fleet.start()  # the same data, and it serves again
        assert fleet.request("GET", "/v1/fleets").status_code == 200
        wait_for(lambda: len(front_workers(fleet.pid)) == 2, 10, "the restarted service's workers")
        stopped = front_workers(fleet.pid)
    finally:
        fleet.stop()
    psutil.wait_procs(stopped, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in stopped)


def test_the_internal_endpoints_need_the_admin_token_and_good_input(tmp_path: Path) -> None:
    fleet = FleetProcess(tmp_path / "data").start()
    try:
        assert httpx.get(f"{fleet.url}/v1/internal/changes", timeout=10).status_code == 401
        assert httpx.post(f"{fleet.url}/v1/internal/seen", json={"keys": []}, timeout=10).status_code == 401
        for bad in ({"keys": ["not-a-hash"]}, {"keys": "x"}, [1]):
            refused = fleet.request("POST", "/v1/internal/seen", json=bad)
            assert refused.status_code == 400 and "keys" in refused.json()["error"]
        unknown = hashlib.sha256(b"nobody").hexdigest()
        assert fleet.request("POST", "/v1/internal/seen", json={"keys": [unknown]}).json() == {"known": 0}

        headers = {"Authorization": f"Bearer {fleet.token}"}
        with httpx.stream("GET", f"{fleet.url}/v1/internal/changes", headers=headers, timeout=10) as feed:
            lines = feed.iter_lines()
            before = json.loads(next(lines))["generation"]
            fleet.create_fleet("feed")
            assert fleet.request("PUT", "/v1/fleets/feed/env/A", json={"value": "1"}).status_code == 200
            assert json.loads(next(lines))["generation"] > before
    finally:
        fleet.stop()


def test_a_bad_workers_count_is_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "picofleet.fleet.service", "--data", str(tmp_path), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "picofleet fleet: --workers must be from 1 to 64, not 0"


def test_the_cache_keeps_only_answers_of_the_current_generation() -> None:
    cache = TargetCache()
    cache.put("gw", 1, '"a"', b"{}")
    assert cache.get("gw") is None  # no feed yet: nothing is kept

    cache.set_generation(1)
    cache.put("gw", 0, '"old"', b"{}")  # read before the change the feed announced
    cache.put("gw", 2, '"new"', b"{}")  # the feed line is still on its way
    assert cache.get("gw") is None
    cache.put("gw", 1, '"a"', b'{"boards": {}}')
    cache.put("gw", 1, '"a"', None)  # a 304 keeps the document known for the same ETag
    assert cache.get("gw") == ('"a"', b'{"boards": {}}')

    cache.set_generation(2)
    assert cache.get("gw") is None and len(cache) == 0
    cache.put("gw", 2, '"b"', b"{}")
    cache.set_generation(None)  # the feed is lost
    assert cache.get("gw") is None


def test_the_primary_answers_plain_checks_as_its_endpoint_does(tmp_path: Path) -> None:
    fleet = FleetProcess(tmp_path / "data").start()
    try:
        lab = Fleet(fleet, "plain", tmp_path)
        key = fleet.provision(lab.provisioning_key)["key"]
        computed = state(fleet.url, key)  # by the endpoint, which caches it
        known = state(fleet.url, key)  # before routing, from that cache
        assert known.status_code == computed.status_code == 200
        assert known.content == computed.content
        for header in ("etag", "content-type", GENERATION):
            assert known.headers[header] == computed.headers[header], header

        seen = lab.admin("GET", "/gateways").json()[0]["last_seen"]
        assert state(fleet.url, key, computed.headers["etag"]).status_code == 304
        wait_for(lambda: lab.admin("GET", "/gateways").json()[0]["last_seen"] > seen, 5, "last_seen to move")
        assert state(fleet.url, "gk_not-a-key").status_code == 401  # unknown keys still reach the endpoint
    finally:
        fleet.stop()


def test_stopping_answers_waiting_long_polls_instead_of_cutting_them_off(tmp_path: Path) -> None:
    fleet = FleetProcess(tmp_path / "data", "--workers", "2").start()
    lab = Fleet(fleet, "stop", tmp_path)
    key = fleet.provision(lab.provisioning_key)["key"]
    etag = state(fleet.url, key).headers["etag"]
    port = int(fleet.url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {key}", "If-None-Match": etag}

    def held_connections() -> int:
        processes = [psutil.Process(fleet.pid), *front_workers(fleet.pid)]
        return sum(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            for p in processes
            for c in p.net_connections("tcp")
        )

    with ThreadPoolExecutor(3) as pool:
        polls = [
            pool.submit(httpx.get, f"{fleet.url}/v1/gateway/state?wait=30", headers=headers, timeout=40)
            for _ in range(3)
        ]
        wait_for(lambda: held_connections() >= 3, 10, "the long polls to be held by the service")
        assert fleet.stop() == 0
        answers = [poll.result(timeout=20) for poll in polls]
    # A poll already waiting gets its 304 at once; one that arrives while the service stops, 503.
    assert {answer.status_code for answer in answers} <= {304, 503}
    assert "Traceback" not in fleet.output()
