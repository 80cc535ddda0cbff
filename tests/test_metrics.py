"""Prometheus ``GET /metrics`` of the gateway and the fleet service (issue #15, item 6), scraped over
HTTP from real processes and read with prometheus-client's own parser: boards by status follow an
unplug, a flash is counted with its duration, a failed flash as failed; a push makes a release and a
refused one is counted as refused; requests are counted by route template and status; a gateway
following the fleet has a small sync lag."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picofleet.firmware.formats import image, uf2
from tests.helpers.boards import app_uf2, rack
from tests.helpers.fleet import FleetProcess, git
from tests.helpers.fleet_repo import push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_fleet_git import commit, write

pytestmark = pytest.mark.timeout(120)

OCTETS = {"Content-Type": "application/octet-stream"}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``GET url/metrics`` without credentials, parsed: samples by sample name, with their labels."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items()))


def until(url: str, check, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Scrape ``url`` until ``check(samples)`` holds; the samples then."""

    def attempt():  # type: ignore[no-untyped-def]
        samples = scrape(url)
        return samples if check(samples) else None

    return wait_for(attempt, timeout, what, interval=0.1)


def test_gateway_metrics_follow_unplugs_and_flashes(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway: GatewayProcess = gateway_factory("--simulate", "2", env={"ENM_UPDATE_RETRIES": "0"})
    boards = idle_boards(gateway, 2)
    board_type = boards[0]["BoardType"]
    first = scrape(gateway.url)
    assert value(first, "picofleet_boards", status="Idle", board_type=board_type) == 2
    assert value(first, "picofleet_gateway_paused") == 0
    assert value(first, "picofleet_reservations") == 0
    assert value(first, "picofleet_evaluation_units", state="queued") == 0
    assert value(first, "picofleet_flashes_started_total") == 0

    unplugged, flashed = boards[0]["LocalUUID"], boards[1]["LocalUUID"]
    rack(gateway.data, "unplug", serial=unplugged)
    until(
        gateway.url,
        lambda s: (
            value(s, "picofleet_boards", status="Offline", board_type=board_type) == 1
            and value(s, "picofleet_boards", status="Idle", board_type=board_type) == 1
        ),
        "one board Offline, one Idle",
    )

    response = httpx.post(
        f"{gateway.url}/v1/devices/{flashed}/flash?commit=c0ffee", content=app_uf2("2.0.0"), headers=OCTETS
    )
    assert response.status_code == 202, response.text
    done = until(
        gateway.url,
        lambda s: value(s, "picofleet_flashes_finished_total", outcome="succeeded") == 1,
        "the flash counted as succeeded",
        timeout=30,
    )
    assert value(done, "picofleet_flashes_started_total", board_type=board_type) == 1
    assert (
        value(done, "picofleet_flash_duration_seconds_count", board_type=board_type, outcome="succeeded") == 1
    )
    assert value(done, "picofleet_flash_duration_seconds_sum", outcome="succeeded") > 0
    assert value(done, "picofleet_flashes_finished_total", outcome="failed") == 0
    assert gateway.get(f"/v1/devices/{flashed}").json()["Commit"] == "c0ffee"

    # an image that boots as firmware the gateway cannot identify: as a release (a commit) it is
    # rolled back to the image before; as a one-off flash the board is Broken and the flash failed
    other = uf2.from_binary(
        image.make_app_image("other-app", "5.0.0", "pico2-ice"), image.FLASH_BASE, uf2.RP2350_ARM_S
    )
    url = f"{gateway.url}/v1/devices/{flashed}/flash"
    assert httpx.post(f"{url}?commit=bad", content=other, headers=OCTETS).status_code == 202
    rolled_back = until(
        gateway.url,
        lambda s: value(s, "picofleet_flashes_finished_total", outcome="rolled_back") == 1,
        "the release that did not run counted as rolled back",
        timeout=60,
    )
    assert value(rolled_back, "picofleet_boards", status="Idle", board_type=board_type) == 1
    assert gateway.get(f"/v1/devices/{flashed}").json()["FailedRelease"]["commit"] == "bad"
    assert httpx.post(url, content=other, headers=OCTETS).status_code == 202
    failed = until(
        gateway.url,
        lambda s: value(s, "picofleet_flashes_finished_total", outcome="failed") == 1,
        "the failed flash counted",
        timeout=30,
    )
    assert value(failed, "picofleet_flashes_started_total") == 3
    assert value(failed, "picofleet_flash_duration_seconds_count") == 3
    assert value(failed, "picofleet_boards", status="Broken", board_type=board_type) == 1


def test_fleet_metrics_count_requests_pushes_releases_and_sync_lag(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    assert fleet.request("GET", "/v1/fleets/lab").status_code == 200
    assert fleet.request("GET", "/v1/fleets/nope").status_code == 404
    assert fleet.request("GET", "/no/such/route").status_code == 404
    samples = scrape(fleet.url)  # no token
    requests = "picofleet_fleet_requests_total"
    assert value(samples, requests, route="/v1/fleets/{name}", method="GET", status="200") == 1
    assert value(samples, requests, route="/v1/fleets/{name}", method="GET", status="404") == 1
    assert value(samples, requests, route="unmatched", status="404") == 1
    assert value(samples, requests, route="/v1/fleets", method="POST", status="201") == 1
    assert not any("nope" in labels.get("route", "") for labels, _ in samples[requests])  # templates only
    assert value(samples, "picofleet_fleet_gateways", fleet="lab") == 0
    assert value(samples, "picofleet_fleet_releases_created_total") == 0

    work = tmp_path / "repo"
    push_first_release(fleet, work)
    pushed = until(
        fleet.url,
        lambda s: value(s, "picofleet_fleet_releases_created_total", fleet="lab") == 1,
        "the release counted",
    )
    assert value(pushed, "picofleet_fleet_pushes_total", fleet="lab", outcome="accepted") == 1
    assert value(pushed, "picofleet_fleet_pushes_total", outcome="refused") == 0

    write(work, {"fleet.yml": "- just\n- a list\n"})
    commit(work, "bad")
    assert git(work, "push", "-q", fleet.push_url("lab"), "main", check=False).returncode != 0
    refused = scrape(fleet.url)
    assert value(refused, "picofleet_fleet_pushes_total", fleet="lab", outcome="refused") == 1
    assert value(refused, "picofleet_fleet_releases_created_total", fleet="lab") == 1

    gateway = GatewayProcess(
        tmp_path / "gw", "--simulate", "1", "--fleet", fleet.url, f"--provisioning-key={key}"
    ).start()
    try:
        idle_boards(gateway, 1)
        synced = until(
            fleet.url,
            lambda s: (
                value(s, "picofleet_fleet_gateways", fleet="lab") == 1
                and value(s, "picofleet_fleet_boards", fleet="lab") == 1
                and value(s, "picofleet_fleet_long_polls") >= 1
                and len(s.get("picofleet_fleet_gateway_sync_lag_seconds", [])) == 1
            ),
            "the gateway reporting, its board and its long poll",
            timeout=60,
        )
        [(labels, lag)] = synced["picofleet_fleet_gateway_sync_lag_seconds"]
        assert labels["fleet"] == "lab" and len(labels["gateway"]) == 32
        assert 0 <= lag < 5
        assert value(synced, requests, route="/v1/gateway/state", method="PUT", status="200") >= 1
    finally:
        gateway.stop()
