"""The fleet dashboard's pages without a browser: the login form, the session cookie it sets, the
wrong-token message and its throttle, an expired or tampered session back at the login form, the
static files; a real fleet service on loopback, spoken to with httpx."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from unittest import mock

import httpx
import pytest
from starlette.responses import Response

from picofleet.common.web.sessions import SessionCookies
from picofleet.fleet.http.context import SESSION_PURPOSE
from tests.helpers.fleet import FleetProcess

pytestmark = pytest.mark.timeout(60)

COOKIE = "picofleet_session"


def client(fleet: FleetProcess) -> httpx.Client:
    """A browser-like client: keeps cookies, does not follow redirects (the tests look at them)."""
    return httpx.Client(base_url=fleet.url, timeout=10, follow_redirects=False)


def sign_in(http: httpx.Client, token: str) -> httpx.Response:
    return http.post("/login", data={"token": token})


def cookie_signed_at(fleet: FleetProcess, when: float) -> str:
    """A session cookie as the service would have signed it at ``when`` (its key, derived from the
    admin token)."""
    secret = hmac.new(fleet.token.encode(), SESSION_PURPOSE, hashlib.sha256).digest()
    answer = Response()
    with mock.patch("itsdangerous.timed.time.time", return_value=when):
        SessionCookies(secret).issue(mock.Mock(url=httpx.URL("http://x/")), answer, "admin")
    found = re.search(rf"{COOKIE}=([^;]+)", answer.headers["set-cookie"])
    assert found
    return found[1]


def test_not_signed_in_the_root_is_a_login_form_with_a_password_field(fleet: FleetProcess) -> None:
    with client(fleet) as http:
        page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.search(r'<form[^>]*method="post"[^>]*action="/login"', html)
    assert re.search(r'<input[^>]*name="token"[^>]*type="password"', html)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert fleet.token not in html


def test_right_token_sets_a_strict_http_only_cookie_and_lists_the_fleets(fleet: FleetProcess) -> None:
    fleet.create_fleet("lab")
    with client(fleet) as http:
        answer = sign_in(http, fleet.token)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"  # nothing secret in a URL
        set_cookie = answer.headers["set-cookie"]
        assert set_cookie.startswith(f"{COOKIE}=")
        flags = {part.strip().lower() for part in set_cookie.split(";")}
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert "path=/" in flags
        assert "secure" not in flags  # plain http on loopback; set when served over https
        assert fleet.token not in set_cookie

        fleets = http.get("/")
        assert fleets.status_code == 200
        assert 'href="/fleets/lab"' in fleets.text
        assert 'type="password"' not in fleets.text
        page = http.get("/fleets/lab")
        assert page.status_code == 200
        assert 'data-fleet="lab"' in page.text
        assert 'id="live"' in page.text

        # the page's own API calls ride on the cookie (changes with the CSRF header only)
        assert http.get("/v1/fleets/lab").json()["fleet"] == "lab"
        refused = http.put("/v1/fleets/lab/env/COLOR", json={"value": "blue"})
        assert refused.status_code == 403, refused.text
        done = http.put(
            "/v1/fleets/lab/env/COLOR", json={"value": "blue"}, headers={"X-Picofleet-Request": "1"}
        )
        assert done.status_code == 200, done.text

        out = http.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/"
        assert COOKIE not in http.cookies
        assert http.get("/fleets/lab").status_code == 303


def test_wrong_token_answers_the_form_again_with_a_message_and_no_cookie(fleet: FleetProcess) -> None:
    with client(fleet) as http:
        answer = sign_in(http, "not-the-token")
        assert answer.status_code == 401
        assert "wrong admin token" in answer.text
        assert 'type="password"' in answer.text
        assert "set-cookie" not in answer.headers
        assert "not-the-token" not in answer.text  # not echoed back
        assert http.get("/fleets/lab").status_code == 303


def test_repeated_wrong_tokens_are_throttled_even_the_right_one_for_a_while(fleet: FleetProcess) -> None:
    with client(fleet) as http:
        for _ in range(5):
            assert sign_in(http, "guess").status_code == 401
        throttled = sign_in(http, "guess")
        assert throttled.status_code == 429
        waited = re.search(r"too many attempts, try again in (\d+) s", throttled.text)
        assert waited and 1 <= int(waited[1]) <= 60, throttled.text
        right = sign_in(http, fleet.token)
        assert right.status_code == 429  # no guessing at network speed, even a lucky one
        assert "set-cookie" not in right.headers


def test_a_token_in_the_url_signs_nobody_in(fleet: FleetProcess) -> None:
    with client(fleet) as http:
        sent_to_form = http.get("/login", params={"token": fleet.token})
        assert sent_to_form.status_code == 303 and sent_to_form.headers["location"] == "/"
        assert http.get("/", params={"token": fleet.token}).text.count('type="password"') == 1
        assert COOKIE not in http.cookies


@pytest.mark.parametrize("kind", ["expired", "tampered", "other secret"])
def test_an_expired_or_tampered_session_goes_back_to_the_login_form(fleet: FleetProcess, kind: str) -> None:
    fleet.create_fleet("lab")
    if kind == "expired":
        value = cookie_signed_at(fleet, time.time() - 9 * 3600)  # sessions last 8 hours
    elif kind == "tampered":
        fresh = cookie_signed_at(fleet, time.time())
        value = fresh[:-2] + ("AA" if not fresh.endswith("AA") else "BB")
    else:
        value = SessionCookies(b"another service's secret")._serializer.dumps({"sub": "admin"})
    with client(fleet) as http:
        http.cookies.set(COOKIE, value)
        page = http.get("/fleets/lab")
        assert page.status_code == 303
        assert page.headers["location"] == "/"
        assert 'type="password"' in http.get("/").text
        api = http.get("/v1/fleets/lab")
        assert api.status_code == 401
        assert "error" in api.json()


def test_a_fresh_cookie_signed_with_the_service_key_is_accepted(fleet: FleetProcess) -> None:
    """The counterpart of the expired case: the same forging path, a current time, works."""
    fleet.create_fleet("lab")
    with client(fleet) as http:
        http.cookies.set(COOKIE, cookie_signed_at(fleet, time.time()))
        assert http.get("/fleets/lab").status_code == 200


def test_a_live_stream_signed_in_by_cookie_ends_when_its_session_expires(fleet: FleetProcess) -> None:
    """An open page does not go on receiving the fleet after its session: the stream ends cleanly
    when the cookie expires, and the browser's reconnection gets 401 (live.js: the login form). A
    stream opened with the admin token is not bound to a cookie it happens to carry."""
    fleet.create_fleet("lab")
    expiring = cookie_signed_at(fleet, time.time() - 8 * 3600 + 2)  # sessions last 8 hours: ~2 s left
    with client(fleet) as http, client(fleet) as admin:
        http.cookies.set(COOKIE, expiring)
        admin.cookies.set(COOKIE, expiring)
        token = {"Authorization": f"Bearer {fleet.token}"}
        with admin.stream("GET", "/v1/fleets/lab/events", headers=token) as by_token:
            lines = by_token.iter_lines()
            assert next(lines) == "event: fleet"
            started = time.monotonic()
            with http.stream("GET", "/v1/fleets/lab/events") as by_cookie:
                assert by_cookie.status_code == 200
                body = "".join(by_cookie.iter_text())  # to its end: a clean one, or httpx raises
            lasted = time.monotonic() - started
            assert body.startswith("event: fleet\n")
            assert 1.0 < lasted < 6.0, f"the stream lasted {lasted:.1f} s for a session of ~2 s"
            assert http.get("/v1/fleets/lab/events").status_code == 401  # the reconnection

            assert fleet.request("PUT", "/v1/fleets/lab/env/AFTER", json={"value": "1"}).status_code == 200
            assert any('"AFTER":"1"' in line for line in lines), "the admin token's stream goes on"


def test_unknown_fleet_page_is_a_404_page(fleet: FleetProcess) -> None:
    with client(fleet) as http:
        sign_in(http, fleet.token)
        page = http.get("/fleets/nope")
    assert page.status_code == 404
    assert "No fleet nope" in page.text


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/static/common/live.js", "javascript"),
        ("/static/common/picofleet.css", "text/css"),
        ("/static/dashboard/dashboard.js", "javascript"),
    ],
)
def test_static_files_are_served_without_a_session(fleet: FleetProcess, path: str, kind: str) -> None:
    answer = httpx.get(fleet.url + path, timeout=10)
    assert answer.status_code == 200
    assert kind in answer.headers["content-type"]
