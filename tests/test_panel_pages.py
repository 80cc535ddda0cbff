"""The gateway's control panel over plain HTTP: the page, its static files, and signing in with the
API key (form, cookie flags, wrong key, throttle, CSRF header, sign-out). The browser tests are in
test_panel_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.gateway import GatewayProcess, running_gateway

KEY = "panel-test-key-0123456789"
NAME = "<b>lab</b> & bench"


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without an API key (ENM's open API), named with markup by balena's variable."""
    data: Path = tmp_path_factory.mktemp("open")
    with running_gateway(data, 1, env={"BALENA_DEVICE_NAME_AT_INIT": NAME}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with ``PICOFLEET_API_KEY`` set."""
    data: Path = tmp_path_factory.mktemp("keyed")
    with running_gateway(data, 1, env={"PICOFLEET_API_KEY": KEY}) as gateway:
        yield gateway


def client(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=False)


def test_without_a_key_the_panel_is_open(open_gateway: GatewayProcess) -> None:
    with client(open_gateway) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert 'id="boards"' in html and 'id="live"' in html
        assert 'type="password"' not in html  # no sign-in without a key
        assert "Sign out" not in html
        gateway_id = open_gateway.get("/v1/gateway").json()["id"]
        assert f'data-gateway="{gateway_id}"' in html
        # the name is escaped, never markup
        assert "&lt;b&gt;lab&lt;/b&gt; &amp; bench" in html and "<b>lab</b>" not in html
        assert "not provisioned" in html
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["cache-control"] == "no-store"
        # nothing to sign in to: the form posts land back on the panel
        assert http.post("/login", data={"key": "anything"}).status_code == 303
        assert "set-cookie" not in http.post("/login", data={"key": "anything"}).headers


def test_static_files(open_gateway: GatewayProcess) -> None:
    with client(open_gateway) as http:
        script = http.get("/static/panel/panel.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert "/v1/gateway/events" in script.text
        assert "innerHTML" not in script.text
        assert http.get("/static/common/live.js").status_code == 200
        assert http.get("/static/common/picofleet.css").status_code == 200
        assert http.get("/static/panel/nothing.js").status_code == 404
        assert http.get("/static/panel/../pages.py").status_code == 404


def test_with_a_key_the_panel_asks_for_it(keyed_gateway: GatewayProcess) -> None:
    with client(keyed_gateway) as http:
        form = http.get("/")
        assert form.status_code == 200
        assert 'type="password"' in form.text and 'name="key"' in form.text
        assert 'id="boards"' not in form.text

        wrong = http.post("/login", data={"key": "not-the-key"})
        assert wrong.status_code == 401
        assert "wrong API key" in wrong.text
        assert "set-cookie" not in wrong.headers

        right = http.post("/login", data={"key": KEY})
        assert right.status_code == 303
        assert right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert KEY not in cookie and KEY not in right.headers["location"]

        panel = http.get("/")
        assert 'id="boards"' in panel.text and "Sign out" in panel.text
        assert KEY not in panel.text

        # the session cookie stands in for X-Api-Key, with the CSRF header
        paused = {"targetStatus": "Paused"}
        assert http.put("/v1/enm/status", json=paused).status_code == 403
        assert http.get("/v1/enm/status").json()["targetStatus"] == "Running"
        done = http.put("/v1/enm/status", json=paused, headers={"X-Picofleet-Request": "1"})
        assert done.status_code == 200, done.text
        assert http.get("/v1/enm/status").json()["targetStatus"] == "Paused"
        assert (
            http.put(
                "/v1/enm/status", json={"targetStatus": "Running"}, headers={"X-Picofleet-Request": "1"}
            ).status_code
            == 200
        )

        out = http.post("/logout")
        assert out.status_code == 303
        assert 'type="password"' in http.get("/").text
        assert (
            http.put("/v1/enm/status", json=paused, headers={"X-Picofleet-Request": "1"}).status_code == 401
        )


def test_a_tampered_cookie_is_no_session(keyed_gateway: GatewayProcess) -> None:
    with client(keyed_gateway) as http:
        assert http.post("/login", data={"key": KEY}).status_code == 303
        value = http.cookies["picofleet_panel_session"]
        forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    with client(keyed_gateway) as http:
        http.cookies.set("picofleet_panel_session", forged)
        assert 'type="password"' in http.get("/").text


def test_wrong_keys_are_throttled(tmp_path: Path) -> None:
    with running_gateway(tmp_path, 1, env={"PICOFLEET_API_KEY": KEY}) as gateway, client(gateway) as http:
        answers = [http.post("/login", data={"key": f"guess-{n}"}).status_code for n in range(6)]
        assert answers[:5] == [401] * 5
        assert answers[5] == 429
        throttled = http.post("/login", data={"key": KEY})  # even the right key waits
        assert throttled.status_code == 429
        assert "too many attempts, try again in" in throttled.text
        assert "set-cookie" not in throttled.headers
