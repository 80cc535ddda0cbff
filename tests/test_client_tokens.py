"""Client tokens are kept by the gateway's identity, not by how its URL is spelt (issue #13, item 12).

A researcher who reserved as ``alice`` through ``http://127.0.0.1:PORT`` and comes back through
``http://localhost:PORT`` used to be refused: 403 "the name 'alice' belongs to another client",
because the token file was keyed by the URL. The gateway now says who it is (``GET /v1/gateway``),
the client keys tokens by that id, and a name that really is another client's is refused with
where the tokens are kept and how to go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from picofleet.client import NameTaken, PulseCountClient, TokenStore
from tests.helpers.fpga import FpgaBuild
from tests.helpers.gateway import GatewayProcess, idle_boards, running_gateway

READY_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with one virtual pico2-ice board."""
    with running_gateway(tmp_path_factory.mktemp("tokens") / "data", 1) as process:
        yield process


def localhost_url(gateway: GatewayProcess) -> str:
    """The same gateway, spelt another way."""
    assert gateway.url.startswith("http://127.0.0.1:")
    return gateway.url.replace("127.0.0.1", "localhost")


def test_the_gateway_says_who_it_is_and_keeps_its_id(gateway: GatewayProcess) -> None:
    identity = gateway.get("/v1/gateway").json()
    assert set(identity) == {"id", "version"} and identity["id"].startswith("gw_")
    assert "/v1/gateway" in gateway.get("/openapi.json").json()["paths"]
    gateway.stop()
    gateway.start()
    idle_boards(gateway, 1)
    assert gateway.get("/v1/gateway").json()["id"] == identity["id"]  # stored: the tokens' key stays


@pytest.mark.timeout(READY_TIMEOUT * 2 + 60)
def test_a_token_minted_through_one_url_is_found_through_another(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    with PulseCountClient(gateway.url, "alice", token_store=tokens) as first:
        [serial] = first.reserve(1, timeout=READY_TIMEOUT)
    gateway_id = gateway.get("/v1/gateway").json()["id"]
    assert json.loads(tokens.path.read_text()) == {f"{gateway_id} alice": first.token}
    with PulseCountClient(localhost_url(gateway), "alice", token_store=TokenStore(tokens.path)) as again:
        assert again.token == first.token
        assert again.reserve(1, timeout=READY_TIMEOUT) == [serial]  # was: 403 belongs to another client
    assert gateway.get("/v1/reservations").json()["reservations"] == []


def test_a_name_that_is_another_clients_says_how_to_go_on(gateway: GatewayProcess, tmp_path: Path) -> None:
    with PulseCountClient(gateway.url, "carol", token_store=TokenStore(tmp_path / "carol.json")) as owner:
        owner.reserve(1, timeout=READY_TIMEOUT)
        stranger_tokens = TokenStore(tmp_path / "elsewhere.json")  # another computer, or a lost file
        stranger = PulseCountClient(localhost_url(gateway), "carol", token_store=stranger_tokens)
        with stranger, pytest.raises(NameTaken) as raised:
            stranger.reserve(1)
        message = str(raised.value)
        assert message.startswith("reserving boards: the name 'carol' belongs to another client")
        assert f"{stranger_tokens.path} holds no token for it on this gateway" in message
        assert "--token" in message and "--name" in message and "\n" not in message
        assert [r["name"] for r in gateway.get("/v1/reservations").json()["reservations"]] == ["carol"]


def test_the_command_tells_a_user_without_the_token_what_to_do(
    gateway: GatewayProcess, counter: FpgaBuild, tmp_path: Path
) -> None:
    with PulseCountClient(gateway.url, "dave", token_store=TokenStore(tmp_path / "dave.json")) as owner:
        owner.reserve(1, timeout=READY_TIMEOUT)
        owner.end()
    tokens = tmp_path / "someone-else.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "picofleet.cli", "evaluate", "--gateway", localhost_url(gateway),
            "--name", "dave", str(counter.bin),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PICOFLEET_TOKENS": str(tokens)},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("picofleet evaluate: reserving boards: the name 'dave' belongs to another client")
    assert f"{tokens} holds no token for it on this gateway" in line
    assert "--token or $PICOFLEET_TOKEN" in line and "another name (--name" in line
