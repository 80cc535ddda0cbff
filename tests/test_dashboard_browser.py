"""The fleet dashboard in a real browser (Debian's Chromium driven by Playwright): sign in, the
boards of a gateway with virtual boards, a board going Offline after ``picofleet sim unplug``
without a reload, a board pinned from the page until its gateway converges, the wrong-token
message, an expired session back at the login form, HTML in names, log lines, env values and
commit messages shown as text, and the phone-width layout.

One fleet service and one gateway (three virtual boards, two releases) serve the whole module;
each test has its own browser context (no cookies).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.browser import PHONE
from tests.helpers.fleet import FleetProcess, git
from tests.helpers.fleet_repo import next_release, push_first_release
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_dashboard_pages import COOKIE, cookie_signed_at

pytestmark = pytest.mark.timeout(180)

FLEET = "lab"


@dataclass
class Lab:
    fleet: FleetProcess
    gateway: GatewayProcess
    work: Path
    first: str
    second: str
    provisioning_key: str
    uuids: list[str]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A fleet service, a gateway with three virtual boards following fleet ``lab``, and two
    releases pushed: every board runs the second."""
    root = tmp_path_factory.mktemp("dashboard")
    fleet = FleetProcess(root / "fleet").start()
    gateway = None
    try:
        key = fleet.create_fleet(FLEET)["provisioning_key"]
        gateway = GatewayProcess(
            root / "gateway", "--simulate", "3", "--fleet", fleet.url, f"--provisioning-key={key}"
        ).start()
        idle_boards(gateway, 3)
        work = root / "repo"
        first = push_first_release(fleet, work, name=FLEET)
        second = next_release(work, "3.0.0")
        git(work, "push", "-q", fleet.push_url(FLEET), "main")
        wait_for(
            lambda: all(d["Commit"] == second and d["Status"] == "Idle" for d in gateway.devices()),
            60,
            "every board at the second release",
            interval=0.2,
        )
        uuids = sorted(d["LocalUUID"] for d in gateway.devices())
        yield Lab(fleet, gateway, work, first, second, key, uuids)
    finally:
        if gateway is not None:
            gateway.stop()
        fleet.stop()


def sign_in(page: Any, lab: Lab, token: str | None = None) -> None:
    """The login form, filled and sent as a user does."""
    page.goto(lab.fleet.url + "/")
    page.fill("#token", token or lab.fleet.token)
    page.click("form.login button[type=submit]")


def open_fleet(page: Any, lab: Lab) -> None:
    """Signed in, the fleet's page, once its stream delivered the first view."""
    from playwright.sync_api import expect

    sign_in(page, lab)
    page.click(f'a[href="/fleets/{FLEET}"]')
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def board_cell(page: Any, uuid: str, field: str) -> Any:
    """A cell of the board's row in its gateway's table."""
    return page.locator(f'tr[data-board="{uuid}"] [data-field="{field}"]')


def sim(lab: Lab, action: str, serial: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "sim", action, serial, "--data", str(lab.gateway.data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_sign_in_and_see_the_gateways_boards(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_fleet(page, lab)
    gateway_card = page.locator("[data-gateway]").filter(has=page.locator(f'[data-board="{lab.uuids[0]}"]'))
    expect(gateway_card.locator("[data-board]")).to_have_count(3)
    for uuid in lab.uuids:
        expect(board_cell(page, uuid, "type")).to_have_text("pico2-ice")
        expect(board_cell(page, uuid, "status")).not_to_have_text("")
        expect(board_cell(page, uuid, "firmware")).to_contain_text("picofleet-app")
    expect(gateway_card.locator('[data-field="last_seen"]')).not_to_have_text("never")
    # the releases, newest first, with what each board type gets
    expect(page.locator(f'[data-release="{lab.second}"] [data-field="message"]')).to_have_text("v3.0.0")
    expect(page.locator(f'[data-release="{lab.second}"] [data-field="boards"]')).to_contain_text(
        "build/app.uf2"
    )
    expect(page.locator('#summary [data-field="target"]')).to_contain_text(lab.second[:7])


def test_a_board_unplugged_goes_offline_on_the_page_without_a_reload(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_fleet(page, lab)
    uuid = lab.uuids[2]
    expect(board_cell(page, uuid, "status")).to_have_text("Idle")
    page.evaluate("window.__sameDocument = true")
    started = time.monotonic()
    sim(lab, "unplug", uuid)
    try:
        expect(board_cell(page, uuid, "status")).to_have_text("Offline", timeout=10_000)
        assert time.monotonic() - started < 10
        assert page.evaluate("window.__sameDocument") is True  # live: the page was not reloaded
        expect(page.locator(f'[data-board="{uuid}"]')).to_have_class(re.compile(r"\boff\b"))
    finally:
        sim(lab, "plug", uuid)
    expect(board_cell(page, uuid, "status")).to_have_text("Idle", timeout=30_000)


def test_pin_a_board_from_the_page_and_see_its_gateway_converge(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_fleet(page, lab)
    uuid = lab.uuids[0]
    commit = board_cell(page, uuid, "commit")
    expect(commit).to_have_attribute("data-commit", lab.second)
    board_cell(page, uuid, "type").click()  # opens the board's panel
    expect(page.locator("#board")).to_have_attribute("data-selected", uuid)
    page.select_option("#board-pin-select", lab.first)
    page.click("#board-pin")
    expect(board_cell(page, uuid, "pin")).to_have_attribute("data-pin", lab.first)
    expect(commit).to_have_attribute("data-commit", lab.first, timeout=60_000)
    expect(commit.locator('[data-field="converged"]')).to_be_visible(timeout=30_000)
    assert lab.gateway.get(f"/v1/devices/{uuid}").json()["Commit"] == lab.first
    # the other boards stay on the fleet's target
    expect(board_cell(page, lab.uuids[1], "commit")).to_have_attribute("data-commit", lab.second)

    page.click("#board-unpin")
    expect(board_cell(page, uuid, "pin")).to_have_attribute("data-pin", "")
    expect(commit).to_have_attribute("data-commit", lab.second, timeout=60_000)


def test_wrong_token_shows_a_message_and_no_session(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    sign_in(page, lab, token="not-the-admin-token")
    expect(page.locator("#login-error")).to_have_text("wrong admin token")
    expect(page.locator("#token")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
    page.goto(f"{lab.fleet.url}/fleets/{FLEET}")
    expect(page.locator("#token")).to_be_visible()  # sent back to the login form
    assert page.url == lab.fleet.url + "/"


def test_an_expired_session_goes_back_to_the_login_form(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    open_fleet(page, lab)
    page.context.clear_cookies()
    page.context.add_cookies(
        [
            {
                "name": COOKIE,
                "value": cookie_signed_at(lab.fleet, time.time() - 9 * 3600),
                "url": lab.fleet.url,
            }
        ]
    )
    # the next action finds the session over: the page says so and goes to the login form
    page.fill('form[data-scope="fleet"][data-kind="env"] input[name="key"]', "AFTER_EXPIRY")
    page.click('form[data-scope="fleet"][data-kind="env"] button[type="submit"]')
    expect(page.locator("#messages")).to_contain_text("sign in again")
    expect(page.locator("#token")).to_be_visible()
    assert page.url == lab.fleet.url + "/"
    assert "AFTER_EXPIRY" not in lab.fleet.fleet(FLEET)["env"]  # nothing changed


def test_markup_in_names_log_lines_env_values_and_commit_messages_shows_as_text(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    name = '<img src=x onerror="window.pwned=1">board'
    line = "<script>window.pwned=2</script> boot"
    value = '<img src=x onerror="window.pwned=3">'
    message = "<script>window.pwned=4</script> fix"
    # a second gateway of the fleet reports a board with that name and posts that log line
    fake = lab.fleet.provision(lab.provisioning_key, name="<b>gw</b>")
    report = {
        "boards": [
            {"LocalUUID": "evil-1", "BoardType": "pico2-ice", "Name": name, "Status": "Idle", "online": True}
        ]
    }
    assert lab.fleet.as_gateway(fake["key"], "PUT", "/v1/gateway/state", json=report).status_code == 200
    logs = {"lines": [{"board": "evil-1", "time": "2026-01-01T00:00:00Z", "level": "info", "text": line}]}
    assert lab.fleet.as_gateway(fake["key"], "POST", "/v1/gateway/logs", json=logs).status_code == 200
    assert lab.fleet.request("PUT", f"/v1/fleets/{FLEET}/env/SHOWN", json={"value": value}).status_code == 200
    # a release on another branch (the boards' target does not move) with that message
    git(lab.work, "commit", "-q", "--allow-empty", "-m", message)
    git(lab.work, "push", "-q", lab.fleet.push_url(FLEET), "HEAD:refs/heads/xss")
    tip = git(lab.work, "rev-parse", "HEAD").stdout.strip()
    git(lab.work, "reset", "-q", "--hard", "HEAD~1")

    open_fleet(page, lab)
    expect(board_cell(page, "evil-1", "name").locator("button")).to_have_text(name)
    expect(page.locator('[data-gateway="{}"] h3'.format(fake["gateway"]))).to_have_text("<b>gw</b>")
    expect(page.locator('#fleet-env [data-var="SHOWN"] [data-field="value"]')).to_have_text(value)
    expect(page.locator(f'[data-release="{tip}"] [data-field="message"]')).to_have_text(message)
    board_cell(page, "evil-1", "type").click()
    expect(page.locator("#board-log")).to_contain_text(line)
    expect(page.locator('#board [data-field="name"]')).to_have_text(name)
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_a_boards_log_tail_shows_then_new_lines_arrive_live_each_once(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    fake = lab.fleet.provision(lab.provisioning_key, name="logger")
    board = {
        "LocalUUID": "log-1",
        "BoardType": "pico2-ice",
        "Name": "logger-1",
        "Status": "Idle",
        "online": True,
    }
    assert (
        lab.fleet.as_gateway(fake["key"], "PUT", "/v1/gateway/state", json={"boards": [board]}).status_code
        == 200
    )

    def post(*texts: str) -> None:
        lines = [
            {"board": "log-1", "time": f"2026-01-01T00:00:0{i}Z", "level": "info", "text": t}
            for i, t in enumerate(texts)
        ]
        assert (
            lab.fleet.as_gateway(fake["key"], "POST", "/v1/gateway/logs", json={"lines": lines}).status_code
            == 200
        )

    post("booted", "ready")
    open_fleet(page, lab)
    board_cell(page, "log-1", "type").click()
    log = page.locator("#board-log li .text")
    expect(log).to_have_text(["booted", "ready"])  # the tail, loaded once the stream holds our place
    post("counting")
    expect(log).to_have_text(["booted", "ready", "counting"])  # live, and nothing twice


def test_the_fleet_page_fits_a_phone_width_screen(browser: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        open_fleet(page, lab)
        expect(board_cell(page, lab.uuids[0], "status")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        context.close()


def test_the_live_indicator_says_reconnecting_when_the_service_goes_away(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    fleet = FleetProcess(tmp_path / "fleet").start()
    try:
        fleet.create_fleet("quiet")
        page.goto(fleet.url + "/")
        page.fill("#token", fleet.token)
        page.click("form.login button[type=submit]")
        page.click('a[href="/fleets/quiet"]')
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator("#gateways")).to_contain_text("No gateways yet")
    finally:
        fleet.stop()
    expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#live")).to_have_text("reconnecting…")
