"""Pages tested in a real browser: Debian's Chromium driven by Playwright.

Playwright's own browser download is not reachable from the test machines, so the fixtures launch
the system's ``/usr/bin/chromium`` (``./dev`` installs Debian's ``chromium`` package) through
``executable_path``, headless, with the background services that would try the network turned off.
``browser`` is one Chromium per test module; ``page`` is a fresh context (no cookies) and page per
test, 1280×800. Tests using them skip, saying why, only when Chromium is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("PICOFLEET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else it dials Google's hosts, refused on a closed network
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, as every page test, the screenshots and the benchmark use it."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module. Not per session: while Playwright's sync API is
    started it holds an event loop on the main thread, and ``asyncio.run`` in a later module's
    tests would fail ("cannot be called from a running event loop")."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (./dev installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies, 1280×800) and a page in it; closed after the test."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()
