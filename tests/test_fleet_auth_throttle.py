"""Wrong admin tokens on the fleet service's API are throttled per client address, as the
dashboard's login form is (they share its count): after 5 wrong ones within a minute every request
of that address presenting a token, the right one included, answers 429 with ``Retry-After``.
No token at all counts nothing; ``git push``'s basic-auth password counts as well; a gateway's own
key is never a wrong admin token. Through a front worker of ``--workers N`` each client address
keeps its own count (two addresses on loopback: 127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.fleet import FleetProcess, FrontWorkerProcess

pytestmark = pytest.mark.timeout(120)

MESSAGE = "too many wrong admin tokens, try again in {} s"


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z works on Linux loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def guess_five_times(http: httpx.Client, url: str) -> None:
    for _ in range(5):
        wrong = http.get(f"{url}/v1/fleets", headers=bearer("guess"))
        assert wrong.status_code == 401, wrong.text
        assert "wrong admin token" in wrong.json()["error"]


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 60
    assert response.json() == {"error": MESSAGE.format(wait)}


def git_refs(http: httpx.Client, url: str, password: str | None) -> httpx.Response:
    auth = ("x", password) if password is not None else None
    return http.get(f"{url}/git/lab.git/info/refs", params={"service": "git-upload-pack"}, auth=auth)


def test_five_wrong_tokens_and_the_sixth_request_is_refused_even_with_the_right_token(
    fleet: FleetProcess,
) -> None:
    fleet.create_fleet("lab")
    with from_address("127.0.0.1") as http, from_address("127.0.0.2") as other:
        for _ in range(10):  # no token at all: a plain 401, nothing counted
            assert http.get(f"{fleet.url}/v1/fleets").status_code == 401
        assert http.get(f"{fleet.url}/v1/fleets", headers=bearer(fleet.token)).status_code == 200

        guess_five_times(http, fleet.url)
        sixth = http.put(
            f"{fleet.url}/v1/fleets/lab/env/LED", headers=bearer(fleet.token), json={"value": "on"}
        )
        assert_throttled(sixth)
        assert_throttled(http.get(f"{fleet.url}/v1/fleets", headers=bearer("guess")))
        assert http.get(f"{fleet.url}/v1/fleets").status_code == 401  # no token: still a plain 401
        assert_throttled(http.get(f"{fleet.url}/v1/assets/{'0' * 64}", headers=bearer(fleet.token)))
        refused = git_refs(http, fleet.url, fleet.token)  # git too, for git's own text answer
        assert refused.status_code == 429 and "too many wrong admin tokens" in refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60

        # nothing changed, and another address is not throttled
        unchanged = other.get(f"{fleet.url}/v1/fleets/lab/env", headers=bearer(fleet.token))
        assert unchanged.status_code == 200 and unchanged.json() == {}


def test_wrong_git_passwords_count_and_gateway_keys_never_do(fleet: FleetProcess) -> None:
    created = fleet.create_fleet("lab")
    key = fleet.provision(created["provisioning_key"])["key"]
    with from_address("127.0.0.3") as http:
        for _ in range(6):  # a gateway's key on the asset route is not a wrong admin token
            asset = http.get(f"{fleet.url}/v1/assets/{'0' * 64}", headers=bearer(key))
            assert asset.status_code == 404, asset.text
        assert git_refs(http, fleet.url, fleet.token).status_code == 200
        for _ in range(3):  # git's first request, without credentials: counts nothing
            assert git_refs(http, fleet.url, None).status_code == 401
        for _ in range(5):
            wrong = git_refs(http, fleet.url, "guess")
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
        assert_throttled(http.get(f"{fleet.url}/v1/fleets", headers=bearer(fleet.token)))
        assert git_refs(http, fleet.url, fleet.token).status_code == 429
        assert http.get(f"{fleet.url}/v1/assets/{'0' * 64}", headers=bearer(key)).status_code == 404


@pytest.fixture
def through_a_worker(tmp_path: Path) -> Iterator[tuple[FleetProcess, FrontWorkerProcess]]:
    fleet = FleetProcess(tmp_path / "data", "--workers", "2").start()
    worker = FrontWorkerProcess(fleet).start()
    yield fleet, worker
    worker.stop()
    fleet.stop()


def test_through_a_front_worker_each_client_address_has_its_own_count(
    through_a_worker: tuple[FleetProcess, FrontWorkerProcess],
) -> None:
    fleet, worker = through_a_worker
    with from_address("127.0.0.1") as first, from_address("127.0.0.2") as second:
        spoofed = {**bearer(fleet.token), "X-Picofleet-Client": "127.0.0.9"}
        guess_five_times(second, worker.url)
        assert_throttled(second.get(f"{worker.url}/v1/fleets", headers=bearer(fleet.token)))
        # a client cannot name another address: the worker replaces the header, the primary's
        # own port ignores it (its peer is known)
        assert_throttled(second.get(f"{worker.url}/v1/fleets", headers=spoofed))
        for _ in range(4):  # the service's port: the primary or its own front worker, as the kernel picks
            assert_throttled(second.get(f"{fleet.url}/v1/fleets", headers=spoofed))

        assert first.get(f"{worker.url}/v1/fleets", headers=bearer(fleet.token)).status_code == 200
        assert first.get(f"{fleet.url}/v1/fleets", headers=bearer(fleet.token)).status_code == 200
