"""Remake the screenshots of docs/images/: the fleet dashboard and the gateway control panel.

Runs ``picofleet demo`` (a fleet service and a gateway with four virtual pico2-ice boards) in a
fresh temporary folder (on the demo's ports 1337 and 8080 when free, else on free loopback ports),
pushes the demo's example release with the real git client, waits until every board runs it,
unplugs one virtual board (so that the pictures show an Offline board next to Idle ones), then
opens both pages in Debian's Chromium (headless, through Playwright, launched as the page tests
launch it: tests/helpers/browser.py) and saves:

- ``docs/images/dashboard.png`` and ``docs/images/dashboard-phone.png``: the fleet page
  (``/fleets/demo``), signed in with the admin token on the login form;
- ``docs/images/panel.png`` and ``docs/images/panel-phone.png``: the gateway's ``/``;

at 1280×800 and at a phone's 390×844 (``--full-page`` keeps the whole page, not only the first
screen). The script lives beside the pictures it makes so that whoever edits the docs finds it:

    .venv/bin/python docs/screenshots.py [--out docs/images] [--full-page] [--no-unplug]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.browser import CHROMIUM, DESKTOP, PHONE, launch  # noqa: E402

SIZES = {"": DESKTOP, "-phone": PHONE}
DEMO_TIMEOUT_S = 240.0


def free_port(preferred: int) -> int:
    """``preferred`` (the demo's own port, so that the pictures show the URLs the docs name) when
    nothing listens on it, else any free loopback port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise SystemExit("screenshots: no free loopback port")


def wait_for(check: Callable[[], Any], timeout: float, what: str, demo: subprocess.Popen[bytes]) -> Any:
    """``check()`` once it is truthy; exits naming ``what`` after ``timeout`` s or when the demo ended."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError):
            pass
        if demo.poll() is not None:
            raise SystemExit(f"screenshots: the demo ended (exit {demo.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def cli(folder: Path, *args: str) -> str:
    """``picofleet ARGS`` run in ``folder``; its output (exits with its error when it fails)."""
    done = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", *args], cwd=folder, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise SystemExit(f"screenshots: picofleet {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def ready_demo(folder: Path, gateway: str, demo: subprocess.Popen[bytes], unplug: bool) -> str:
    """Wait for the demo's boards, push its example release, wait until every board runs it and
    (``unplug``) pull one board's cable. The admin token."""

    def devices() -> list[dict[str, Any]]:
        return list(httpx.get(f"{gateway}/v1/devices", timeout=5).json())

    wait_for(
        lambda: len(devices()) == 4 and all(d["Status"] == "Idle" for d in devices()),
        DEMO_TIMEOUT_S,
        "the demo's four boards",
        demo,
    )
    log = (folder / "demo.log").read_text()
    push = re.search(r"^  (git -C \S+ push \S+ main)$", log, re.M)
    if push is None:
        raise SystemExit(f"screenshots: the demo printed no git push command:\n{log}")
    subprocess.run(["bash", "-c", push[1]], cwd=folder, check=True, capture_output=True, timeout=120)
    head = subprocess.run(
        ["git", "-C", "demo-data/example-repo", "rev-parse", "HEAD"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    wait_for(
        lambda: all(d["Commit"] == head and d["Status"] == "Idle" for d in devices()),
        DEMO_TIMEOUT_S,
        "every board at the pushed release",
        demo,
    )
    if unplug:
        serial = json.loads(cli(folder, "sim", "list", "--data", "demo-data", "--json"))[-1]["serial"]
        cli(folder, "sim", "unplug", serial, "--data", "demo-data")
        wait_for(lambda: any(d["Status"] == "Offline" for d in devices()), 30, f"{serial} Offline", demo)
    return (folder / "demo-data" / "fleet" / "admin-token").read_text().strip()


def shoot(browser: Any, fleet: str, gateway: str, token: str, out: Path, full_page: bool) -> list[Path]:
    """Save both pages at both sizes in ``out``; the files written."""
    saved = []
    for suffix, viewport in SIZES.items():
        context = browser.new_context(viewport=viewport, device_scale_factor=1)
        context.set_default_timeout(30_000)
        try:
            page = context.new_page()
            page.goto(f"{fleet}/")
            field = page.locator('input[name="token"]')
            field.fill(token)
            with page.expect_navigation():
                field.press("Enter")
            for name, url in (("dashboard", f"{fleet}/fleets/demo"), ("panel", f"{gateway}/")):
                page.goto(url)
                page.wait_for_function("() => document.querySelectorAll('[data-board]').length >= 4")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('[data-board] [data-field=\"status\"]')]"
                    ".every(cell => cell.textContent.trim() !== '')"
                )
                path = out / f"{name}{suffix}.png"
                page.screenshot(path=str(path), full_page=full_page)
                saved.append(path)
        finally:
            context.close()
    return saved


def main() -> None:
    """Run the demo, make the screenshots, stop the demo; print the files written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="default docs/images")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not only its first screen")
    parser.add_argument("--no-unplug", action="store_true", help="keep every board plugged in")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"screenshots: {CHROMIUM} is missing (./dev installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port, fleet_port = free_port(1337), free_port(8080)
    gateway, fleet = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fleet_port}"
    with tempfile.TemporaryDirectory(prefix="pf-screenshots-") as tmp:
        folder = Path(tmp)
        command = [sys.executable, "-m", "picofleet.cli", "demo", "--port", str(port)]
        command += ["--fleet-port", str(fleet_port)]
        with open(folder / "demo.log", "wb") as log:
            demo = subprocess.Popen(
                command,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            token = ready_demo(folder, gateway, demo, unplug=not args.no_unplug)
            with sync_playwright() as playwright:
                browser = launch(playwright)
                try:
                    saved = shoot(browser, fleet, gateway, token, args.out, args.full_page)
                finally:
                    browser.close()
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(20)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    for path in saved:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
