"""The gateway's control panel in a real browser (Chromium through Playwright), against a real
gateway with virtual boards: the boards show, pausing from the panel frees their ports live (the
page follows ``GET /v1/devices`` without a reload), Run brings them back, an unplugged board turns
Offline live, a flash shows its progress and then the new firmware and commit, reservations and
running evaluations show, names are shown literally (never run), the page fits a phone, and with
``PICOFLEET_API_KEY`` set the panel asks for the key first."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from picofleet.common.store import Store
from tests.helpers.boards import rack
from tests.helpers.browser import PHONE
from tests.helpers.gateway import GatewayProcess, idle_boards, running_gateway, wait_for

KEY = "browser-test-key-9876543210"
LIVE = 5_000
"""Milliseconds within which a change shows on the page (the stream pushes it at once)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without an API key, with two virtual boards (shared: each test leaves it Running,
    both boards Idle)."""
    data: Path = tmp_path_factory.mktemp("panel")
    with running_gateway(data, 2) as process:
        yield process


def row(page: Any, uuid: str) -> Any:
    return page.locator(f'tr[data-board="{uuid}"]')


def field(page: Any, uuid: str, name: str) -> Any:
    return row(page, uuid).locator(f'[data-field="{name}"]')


def badge(page: Any, uuid: str) -> Any:
    return field(page, uuid, "status").locator(".status")


def open_panel(page: Any, gateway: GatewayProcess) -> None:
    page.goto(gateway.url + "/")
    expect(page.locator("#live")).to_have_text("live", timeout=LIVE)


def assert_page_shows(page: Any, devices: list[dict[str, Any]]) -> None:
    """Every board's status and port on the page are what ``GET /v1/devices`` says."""
    for device in devices:
        uuid = device["LocalUUID"]
        expect(badge(page, uuid)).to_have_text(device["Status"], timeout=LIVE)
        expect(field(page, uuid, "port")).to_have_text(device["Port"] or "", timeout=LIVE)


def test_the_panel_shows_the_boards(page: Any, gateway: GatewayProcess) -> None:
    open_panel(page, gateway)
    devices = idle_boards(gateway, 2)
    expect(page.locator("tr[data-board]")).to_have_count(2)
    for device in devices:
        uuid = device["LocalUUID"]
        expect(field(page, uuid, "name")).to_contain_text(device["Name"])
        expect(field(page, uuid, "type")).to_have_text(device["BoardType"])
        expect(field(page, uuid, "firmware")).to_have_text(device["FirmwareVersion"])
        expect(row(page, uuid).locator('[data-action="identify"]')).to_be_visible()
        expect(row(page, uuid).locator('[data-action="restart"]')).to_be_visible()
    assert_page_shows(page, devices)
    expect(page.locator("#enm-status")).to_have_text("Running")
    identity = gateway.get("/v1/gateway").json()
    expect(page.locator(f'[data-gateway="{identity["id"]}"]')).to_have_count(1)
    expect(page.locator('[data-field="version"]')).to_have_text(identity["version"])


def test_pause_frees_the_ports_live_and_run_takes_them_again(page: Any, gateway: GatewayProcess) -> None:
    open_panel(page, gateway)
    before = idle_boards(gateway, 2)
    assert all(device["Port"] for device in before)

    page.locator("#pause").click()
    expect(page.locator("#enm-status")).to_have_text("Paused", timeout=LIVE)
    paused = gateway.wait_devices(lambda d: all(x["Port"] is None for x in d), 10, "every port freed")
    assert gateway.get("/v1/enm/status").json()["targetStatus"] == "Paused"
    assert_page_shows(page, paused)  # the same page, not reloaded
    expect(page.locator("#pause")).to_be_disabled()

    page.locator("#run").click()
    expect(page.locator("#enm-status")).to_have_text("Running", timeout=LIVE)
    running = idle_boards(gateway, 2)
    assert all(device["Port"] for device in running)
    assert_page_shows(page, running)


def test_an_unplugged_board_turns_offline_live(page: Any, gateway: GatewayProcess) -> None:
    open_panel(page, gateway)
    uuid = sorted(device["LocalUUID"] for device in idle_boards(gateway, 2))[0]
    expect(badge(page, uuid)).to_have_text("Idle")
    rack(gateway.data, "unplug", serial=uuid)
    try:
        expect(badge(page, uuid)).to_have_text("Offline", timeout=LIVE)
        expect(field(page, uuid, "port")).to_have_text("")
    finally:
        rack(gateway.data, "plug", serial=uuid)
    expect(badge(page, uuid)).to_have_text("Idle", timeout=15_000)
    idle_boards(gateway, 2)


def rename_stored_board(data: Path, uuid: str, name: str) -> None:
    """Give a board another ``Name`` in the database of a stopped gateway (as the balena
    supervisor's proxyvisor would, with any text a balena user typed)."""

    async def rename() -> None:
        async with Store(data / "database" / "enm.db") as store:
            (record,) = [r for r in await store.all("devices") if r["LocalUUID"] == uuid]
            await store.upsert("devices", "LocalUUID", {**record, "Name": name})

    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API runs a loop in this one
        thread.submit(asyncio.run, rename()).result()


def test_names_show_literally_and_run_nothing(page: Any, tmp_path: Path) -> None:
    evil = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>'
    with running_gateway(tmp_path, 1) as first:
        (device,) = idle_boards(first, 1)
    uuid = device["LocalUUID"]
    rename_stored_board(tmp_path, uuid, evil)
    named = {"BALENA_DEVICE_NAME_AT_INIT": f"<b>bench</b>{evil}"}
    with running_gateway(tmp_path, 1, env=named) as gateway:
        assert gateway.get(f"/v1/devices/{uuid}").json()["Name"] == evil
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_panel(page, gateway)
        expect(row(page, uuid).locator(".name")).to_have_text(evil, timeout=LIVE)
        expect(page.locator('[data-field="name"]').first).to_have_text(f"<b>bench</b>{evil}")
        expect(page.locator("main img, main script, main b")).to_have_count(0)
        assert page.evaluate("window.__pwned") is None
        assert dialogs == []


WATCH_STATUSES = """(uuid) => {
  window.__statuses = [];
  const record = () => {
    const row = document.querySelector(`tr[data-board="${uuid}"]`);
    if (!row) return;
    const status = row.querySelector('[data-field="status"] .status').textContent;
    const bar = row.querySelector('[role="progressbar"]');
    const last = window.__statuses[window.__statuses.length - 1];
    const seen = status + (bar ? " " + bar.getAttribute("aria-valuenow") + "%" : "");
    if (last !== seen) window.__statuses.push(seen);
  };
  new MutationObserver(record).observe(document.getElementById("boards"), {childList: true, subtree: true});
  record();
}"""


def test_a_flash_shows_live(page: Any, gateway: GatewayProcess, tmp_path: Path) -> None:
    image = tmp_path / "app.uf2"
    make = subprocess.run(
        [
            sys.executable,
            "-m",
            "picofleet.cli",
            "sim",
            "image",
            "--board",
            "pico2-ice",
            "--version",
            "2.0.0",
            str(image),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert make.returncode == 0, make.stderr
    open_panel(page, gateway)
    uuid = sorted(device["LocalUUID"] for device in idle_boards(gateway, 2))[0]
    expect(badge(page, uuid)).to_have_text("Idle")
    page.evaluate(WATCH_STATUSES, uuid)
    answer = httpx.post(
        f"{gateway.url}/v1/devices/{uuid}/flash?commit=panel01", content=image.read_bytes(), timeout=10
    )
    assert answer.status_code == 202, answer.text
    expect(field(page, uuid, "commit")).to_have_text("panel01", timeout=15_000)
    expect(field(page, uuid, "firmware")).to_have_text("picofleet-app 2.0.0")
    expect(badge(page, uuid)).to_have_text("Idle", timeout=LIVE)
    statuses = page.evaluate("window.__statuses")
    assert any(s.startswith(("Installing", "Flashing")) for s in statuses), statuses
    assert all("%" not in s for s in statuses if s.startswith(("Idle", "Starting"))), statuses
    idle_boards(gateway, 2)


def sse(*events: tuple[str, Any]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def test_reservations_and_running_evaluations(page: Any, gateway: GatewayProcess) -> None:
    """What the stream says about reservations and evaluations (canned here, so that an
    evaluation is caught mid-way every time) shows as rows, progress included, client names as plain text."""
    devices = idle_boards(gateway, 2)
    serials = sorted(device["LocalUUID"] for device in devices)
    names = {device["LocalUUID"]: device["Name"] for device in devices}
    client = "<i>bob</i>"
    until = time.time() + 600
    reservations = [
        {
            "serial": serial,
            "name": client,
            "kind": "pulsecount",
            "args": {},
            "created_at": until - 900,
            "expires_at": until,
            "state": "ready",
        }
        for serial in serials
    ]
    evaluation = {
        "evaluation": "0123456789abcdef",
        "name": client,
        "mode": "each",
        "args": {},
        "created_at": until - 60,
        "units": 8,
        "done": False,
        "failed": 1,
        "completed": 6,
        "running": 2,
    }
    body = sse(
        ("devices", devices),
        ("status", {"currentStatus": "Running", "targetStatus": "Running"}),
        ("reservations", {"reservations": reservations}),
        ("evaluations", [evaluation, {**evaluation, "evaluation": "finished", "done": True}]),
    )
    page.route(
        "**/v1/gateway/events",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body),
    )
    page.goto(gateway.url + "/")
    reserved = page.locator("#reservations tr")
    expect(reserved).to_have_count(1)
    expect(reserved.locator('[data-field="name"]')).to_have_text(client)
    for serial in serials:
        expect(reserved.locator('[data-field="boards"]')).to_contain_text(f"{names[serial]} ({serial})")
    expect(reserved.locator('[data-field="until"]')).to_contain_text("in 10 min")
    running = page.locator("#evaluations tr")
    expect(running).to_have_count(1)  # the finished one is not running
    expect(running.locator('[data-field="name"]')).to_have_text(client)
    expect(running.locator('[data-field="progress"]')).to_contain_text("6 / 8, 2 running, 1 failed")
    expect(running.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "75")
    expect(page.locator("main i")).to_have_count(0)


def test_the_panel_fits_a_phone(page: Any, gateway: GatewayProcess) -> None:
    page.set_viewport_size(PHONE)
    open_panel(page, gateway)
    devices = idle_boards(gateway, 2)
    for device in devices:
        expect(badge(page, device["LocalUUID"])).to_be_visible()
        expect(row(page, device["LocalUUID"]).locator('[data-action="identify"]')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than a 390 px phone"


def test_with_a_key_the_panel_asks_for_it_first(page: Any, tmp_path: Path) -> None:
    with running_gateway(tmp_path, 1, env={"PICOFLEET_API_KEY": KEY}) as gateway:
        page.goto(gateway.url + "/")
        expect(page.locator("input[type=password]")).to_be_visible()
        expect(page.locator("tr[data-board]")).to_have_count(0)

        page.locator("input[type=password]").fill("not-the-key")
        page.locator("button[type=submit]").click()
        expect(page.locator("#login-error")).to_have_text("wrong API key")

        page.locator("input[type=password]").fill(KEY)
        page.locator("button[type=submit]").click()
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
        (device,) = idle_boards(gateway, 1)
        expect(badge(page, device["LocalUUID"])).to_have_text("Idle", timeout=LIVE)
        assert KEY not in page.url and KEY not in page.content()

        page.locator("#pause").click()
        expect(page.locator("#enm-status")).to_have_text("Paused", timeout=LIVE)
        wait_for(
            lambda: gateway.get("/v1/enm/status").json()["targetStatus"] == "Paused", 5, "the gateway paused"
        )
        paused = gateway.wait_devices(lambda d: d[0]["Port"] is None, 10, "the port freed")
        assert_page_shows(page, paused)
