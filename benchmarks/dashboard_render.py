"""Fleet dashboard benchmark: the fleet page with 1,000 gateways × 4 boards, measured in Chromium.

Starts a real fleet service process on loopback, provisions the gateways and has each report its
boards over real HTTP (as benchmarks/fleet_convergence.py simulates gateways: :func:`provision_gateways`
of ``_fleet_common``), then drives Debian's Chromium (``/usr/bin/chromium``, headless, through
Playwright, launched as the page tests launch it: ``tests/helpers/browser.py``). It signs in with the
admin token on the login form (the session cookie), then measures:

- **first render**: navigation to ``/fleets/NAME`` until every board's row (``[data-board]``) is in
  the DOM. Timed inside the page (``performance.now()`` counts from the navigation's start; a
  ``MutationObserver`` installed before the page's own scripts notes when the count is reached; also
  when the stream's first ``fleet`` event arrived, and when the frame showing the rows was painted),
  and by this process (``page.goto`` until the page reports the rows). ``--loads`` page loads;
- **apply a change pushed on the stream**: one simulated gateway reports a board ``Offline``
  (``PUT /v1/gateway/state``) and the open page shows ``Offline`` in that row's
  ``[data-field="status"]`` cell, without reloading. Timed from just before the ``PUT`` to the DOM
  mutation that shows it (the page's clock, ``performance.timeOrigin + performance.now()``, is
  compared with this process's wall clock through a calibration round-trip taken just before). The
  board is reported ``Idle`` again (untimed) before the next of ``--changes`` repetitions, each on
  another gateway.

Prints one JSON document: the figures (p50/p95/max), the goals (< 1 s each, issue 15) and ratios.

    .venv/bin/python benchmarks/dashboard_render.py [--gateways 1000] [--boards 4] [--loads 5]
        [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fleet_common import boards_of, provision_gateways

from tests.helpers.browser import CHROMIUM, DESKTOP, launch
from tests.helpers.fleet import FleetProcess

FLEET = "bench"
GOAL_FIRST_RENDER_S = 1.0
GOAL_APPLY_CHANGE_S = 1.0

ROWS_WATCH = """
(() => {
  // installed before the page's scripts: note when every board's row is in the DOM
  const want = %d;
  window.__rowsAt = null;
  window.__paintedAt = null;
  window.__fleetEventAt = null;
  // when the stream's first `fleet` event (the whole view) reached the page: a listener added as
  // the page opens its EventSource runs before the page's own
  const Native = window.EventSource;
  window.EventSource = function (...args) {
    const source = new Native(...args);
    source.addEventListener('fleet', () => {
      if (window.__fleetEventAt === null) window.__fleetEventAt = performance.now();
    });
    return source;
  };
  window.EventSource.prototype = Native.prototype;
  Object.assign(window.EventSource, {CONNECTING: 0, OPEN: 1, CLOSED: 2});
  const check = () => {
    if (window.__rowsAt === null && document.querySelectorAll('[data-board]').length >= want) {
      window.__rowsAt = performance.now();
      observer.disconnect();
      // the frame that shows them: a task after the next animation frame runs after its paint
      requestAnimationFrame(() => setTimeout(() => { window.__paintedAt = performance.now(); }, 0));
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true});
})();
"""

CHANGE_WATCH = """
([uuid, want]) => {
  // note (as wall-clock ms) the first DOM mutation after which the board's status cell shows `want`
  window.__changedAt = null;
  const selector = `[data-board="${CSS.escape(uuid)}"] [data-field="status"]`;
  const shows = () => {
    const cell = document.querySelector(selector);
    return cell !== null && cell.textContent.toLowerCase().includes(want.toLowerCase());
  };
  if (shows()) { window.__changedAt = 0; return false; }
  const observer = new MutationObserver(() => {
    if (window.__changedAt === null && shows()) {
      window.__changedAt = performance.timeOrigin + performance.now();
      observer.disconnect();
    }
  });
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
  return true;
}
"""

SHOWS = """
([uuid, want]) => {
  const cell = document.querySelector(`[data-board="${CSS.escape(uuid)}"] [data-field="status"]`);
  return cell !== null && cell.textContent.toLowerCase().includes(want.toLowerCase());
}
"""


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    """p50, p95, max and every value, in milliseconds (rounded)."""
    return {
        "p50_ms": round(statistics.median(values), 1),
        "p95_ms": round(percentile(values, 0.95), 1),
        "max_ms": round(max(values), 1),
        "all_ms": [round(v, 1) for v in values],
    }


def clock_offset_ms(page: Any) -> tuple[float, float]:
    """The page's wall clock (``performance.timeOrigin + performance.now()``) minus this process's
    ``time.time()``, in ms, and the uncertainty of that (half the round-trip)."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time() * 1000
        page_now = page.evaluate("() => performance.timeOrigin + performance.now()")
        after = time.time() * 1000
        estimate = (page_now - (before + after) / 2, (after - before) / 2)
        if best is None or estimate[1] < best[1]:
            best = estimate
    assert best is not None
    return best


def sign_in(page: Any, url: str, token: str) -> None:
    """Sign in on the dashboard's login form with the admin token, as an operator does."""
    page.goto(url + "/")
    field = page.locator('input[name="token"]')
    field.fill(token)
    with page.expect_navigation():
        field.press("Enter")
    cookies = {cookie["name"] for cookie in page.context.cookies()}
    if "picofleet_session" not in cookies:
        raise RuntimeError(f"signing in set no session cookie (cookies: {sorted(cookies)}): {page.url}")


def first_renders(browser: Any, url: str, token: str, rows: int, loads: int) -> dict[str, Any]:
    """Load the fleet page ``loads`` times (each in a fresh signed-in context): the time from the
    navigation's start until ``rows`` board rows are in the DOM, and until the frame that shows them."""
    in_page, painted, driver, event, rendering = [], [], [], [], []
    for _ in range(loads):
        context = browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(60_000)
        try:
            page = context.new_page()
            sign_in(page, url, token)
            page.add_init_script(ROWS_WATCH % rows)
            started = time.perf_counter()
            page.goto(f"{url}/fleets/{FLEET}", wait_until="commit")
            page.wait_for_function("() => window.__paintedAt !== null", polling="raf", timeout=60_000)
            driver.append((time.perf_counter() - started) * 1000)
            in_page.append(page.evaluate("() => window.__rowsAt"))
            fleet_event = page.evaluate("() => window.__fleetEventAt")
            if fleet_event is not None and fleet_event <= in_page[-1]:  # rows built from the event
                event.append(fleet_event)
                rendering.append(in_page[-1] - fleet_event)
            painted.append(page.evaluate("() => window.__paintedAt"))
        finally:
            context.close()
    return {
        "loads": loads,
        "rows_in_dom": summary(in_page),
        "rows_painted": summary(painted),
        "observed_by_driver": summary(driver),
        # of the rows' time: until the stream's first `fleet` event reached the page, then the
        # page's building of the rows from it (absent when the rows came with the HTML)
        "fleet_event_received": summary(event) if event else None,
        "rows_built_from_event": summary(rendering) if rendering else None,
    }


def apply_changes(
    browser: Any, url: str, token: str, gateways: list[dict[str, Any]], boards: int, changes: int
) -> dict[str, Any]:
    """On one open fleet page: ``changes`` times, one gateway reports a board Offline; the time from
    just before that report until the page's row shows Offline. The board is then reported Idle again
    and the page shows it before the next change (each change on another gateway)."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(60_000)
    applied, report_ms, uncertainty = [], [], []
    try:
        page = context.new_page()
        sign_in(page, url, token)
        page.goto(f"{url}/fleets/{FLEET}")
        rows = boards * len(gateways)
        page.wait_for_function(
            "(rows) => document.querySelectorAll('[data-board]').length >= rows", arg=rows, timeout=60_000
        )
        step = max(1, len(gateways) // changes)
        with httpx.Client(base_url=url, timeout=30) as client:
            for number in range(changes):
                gateway = gateways[(number * step + 7) % len(gateways)]
                slot = number % boards
                report = boards_of(gateway["index"], None, boards)
                uuid = report[slot]["LocalUUID"]
                auth = {"Authorization": f"Bearer {gateway['key']}"}
                if not page.evaluate(SHOWS, [uuid, "Idle"]):
                    raise RuntimeError(f"the row of {uuid} does not show Idle before the change")
                offset, error = clock_offset_ms(page)
                if not page.evaluate(CHANGE_WATCH, [uuid, "Offline"]):
                    raise RuntimeError(f"the row of {uuid} shows Offline before it was reported")
                report[slot] = {**report[slot], "Status": "Offline", "online": False}
                started = time.time() * 1000
                response = client.put("/v1/gateway/state", json={"boards": report}, headers=auth)
                answered = time.time() * 1000
                response.raise_for_status()
                page.wait_for_function("() => window.__changedAt !== null", polling="raf", timeout=30_000)
                shown = page.evaluate("() => window.__changedAt") - offset
                applied.append(shown - started)
                report_ms.append(answered - started)
                uncertainty.append(error)
                # back to Idle (untimed), so that every change starts from the same page
                response = client.put(
                    "/v1/gateway/state",
                    json={"boards": boards_of(gateway["index"], None, boards)},
                    headers=auth,
                )
                response.raise_for_status()
                page.wait_for_function(SHOWS, arg=[uuid, "Idle"], polling="raf", timeout=30_000)
    finally:
        context.close()
    return {
        "changes": changes,
        "report_to_row_shows_offline": summary(applied),
        "report_put_answered": summary(report_ms),
        "clock_calibration_uncertainty_ms_max": round(max(uncertainty), 2),
    }


def main() -> None:
    """Parse the options, build the fleet, measure and print the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--boards", type=int, default=4, help="boards per gateway")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed (first render)")
    parser.add_argument("--changes", type=int, default=20, help="board changes timed")
    parser.add_argument("--provision-concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=300.0, help="for provisioning, seconds")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"dashboard_render: {CHROMIUM} is missing (./dev installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    rows = args.gateways * args.boards
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine slows the browser too
    with tempfile.TemporaryDirectory(prefix="pf-bench-dashboard-") as tmp:
        fleet = FleetProcess(Path(tmp) / "data", "--log-level", "warning")
        fleet.start()
        try:
            created = fleet.create_fleet(FLEET)
            started = time.perf_counter()
            gateways = asyncio.run(
                provision_gateways(
                    fleet.url,
                    created["provisioning_key"],
                    args.gateways,
                    args.provision_concurrency,
                    time.monotonic() + args.deadline,
                    args.boards,
                )
            )
            provision_s = time.perf_counter() - started
            print(f"dashboard_render: {rows} boards reported in {provision_s:.1f} s", file=sys.stderr)
            listed = fleet.request("GET", f"/v1/fleets/{FLEET}/boards").json()
            assert len(listed) == rows, (len(listed), rows)
            with sync_playwright() as playwright:
                browser = launch(playwright)
                try:
                    version = browser.version
                    render = first_renders(browser, fleet.url, fleet.token, rows, args.loads)
                    change = apply_changes(
                        browser, fleet.url, fleet.token, gateways, args.boards, args.changes
                    )
                finally:
                    browser.close()
        finally:
            fleet.stop()

    first_s = render["rows_in_dom"]["p50_ms"] / 1000
    first_max_s = render["rows_in_dom"]["max_ms"] / 1000
    change_p50_s = change["report_to_row_shows_offline"]["p50_ms"] / 1000
    change_p95_s = change["report_to_row_shows_offline"]["p95_ms"] / 1000
    print(
        json.dumps(
            {
                "benchmark": "dashboard_render",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
                },
                "setup": {
                    "gateways": args.gateways,
                    "boards_per_gateway": args.boards,
                    "boards": rows,
                    "provision_and_report_s": round(provision_s, 2),
                    "browser": f"Chromium {version} ({CHROMIUM}, headless, Playwright)",
                    "viewport": DESKTOP,
                    "page": f"/fleets/{FLEET}",
                },
                "figures": {"first_render": render, "apply_change": change},
                "goals": {
                    "first_render_s_max": GOAL_FIRST_RENDER_S,
                    "apply_change_s_max": GOAL_APPLY_CHANGE_S,
                },
                "ratios": {
                    "first_render_p50_vs_goal": round(first_s / GOAL_FIRST_RENDER_S, 3),
                    "first_render_max_vs_goal": round(first_max_s / GOAL_FIRST_RENDER_S, 3),
                    "apply_change_p50_vs_goal": round(change_p50_s / GOAL_APPLY_CHANGE_S, 3),
                    "apply_change_p95_vs_goal": round(change_p95_s / GOAL_APPLY_CHANGE_S, 3),
                },
                "goal_met": first_max_s < GOAL_FIRST_RENDER_S and change_p95_s < GOAL_APPLY_CHANGE_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
