"""picofleet.client.PulseCountClient against a scripted gateway (an httpx MockTransport).

These pin the client's own behaviour — waiting for ready boards, uploading each file once,
yielding results while the stream is still open, extending expiring reservations, ending them,
remembering the token — independently of the real gateway, which tests/test_evaluation_e2e.py
drives end to end.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from picofleet import client as client_module
from picofleet.client import (
    BitstreamFileError,
    ClientError,
    GatewayRefused,
    GatewayUnreachable,
    PulseCountClient,
    ReservationTimeout,
    TokenStore,
)

URL = "http://gateway.test"
BIN = b"\x7e\xaa\x99\x7e" + b"\x01" * 64  # looks like a .bin to the client; the fake never validates
ASC = b".comment fake\n.device 5k\n"
WAIT = 10.0  # seconds: the deadline of anything a test waits on


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeGateway:
    """Just enough of the gateway's reservation and evaluation API, recording every request."""

    def __init__(self, boards: int = 2, polls_until_ready: int = 0, seconds_left: float = 3600) -> None:
        self.free = [f"BOARD{i}" for i in range(boards)]
        self.reservations: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.stored: dict[str, bytes] = {}
        self.aliases: dict[str, str] = {}  # sha256 of an .asc upload -> its .bin's
        self.polls_until_ready = polls_until_ready
        self.seconds_left = seconds_left
        self.requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.extended = threading.Event()
        self.stream: Iterator[bytes] | None = None  # the next evaluation's body, when set
        self.lose_answer = False  # reservations are made, but their answer never arrives

    def calls(self, method: str, path: str) -> list[dict[str, Any] | None]:
        return [body for m, p, body, _ in self.requests if (m, p) == (method, path)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        body = (
            json.loads(request.content) if request.headers.get("content-type") == "application/json" else None
        )
        self.requests.append((method, path, body, request.headers.get("authorization")))
        if method == "POST" and path == "/v1/reservations":
            answer = self.reserve(request, body or {})
            if self.lose_answer:
                raise httpx.ReadTimeout("the answer was lost", request=request)
            return answer
        if method == "GET" and path == "/v1/reservations":
            name = request.url.params.get("name")
            for record in self.reservations.values():
                if record["state"] == "preparing":
                    record["polls"] += 1
                    if record["polls"] >= self.polls_until_ready:
                        record["state"] = "ready"
            mine = [self.public(r) for r in self.reservations.values() if r["name"] == name]
            return httpx.Response(200, json={"reservations": mine})
        if method == "POST" and path == "/v1/reservations/extend":
            for record in self.reservations.values():
                record["expires_at"] = time.time() + body["seconds"]
            self.extended.set()
            return httpx.Response(
                200, json={"reservations": [self.public(r) for r in self.reservations.values()]}
            )
        if method == "POST" and path == "/v1/reservations/end":
            ended = [s for s in list(self.reservations) if s in (body.get("serials") or self.reservations)]
            for serial in ended:
                self.free.append(self.reservations.pop(serial)["serial"])
            return httpx.Response(200, json={"ended": ended})
        if method == "GET" and path.startswith("/v1/bitstreams/"):
            wanted = path.rsplit("/", 1)[1]
            known = self.aliases.get(wanted, wanted)
            if known not in self.stored:
                return httpx.Response(404, json={"error": f"no bitstream {wanted} on the gateway"})
            return httpx.Response(
                200, json={"sha256": known, "size": len(self.stored[known]), "source": "bin"}
            )
        if method == "PUT" and path == "/v1/bitstreams":
            packed = request.content if request.content[:1] != b"." else b"packed:" + request.content
            self.stored[sha(packed)] = packed
            self.aliases[sha(request.content)] = sha(packed)
            return httpx.Response(201, json={"sha256": sha(packed), "size": len(packed), "source": "bin"})
        if method == "POST" and path == "/v1/evaluations":
            stream = self.stream or self.results(body or {})
            return httpx.Response(200, content=stream, headers={"content-type": "application/x-ndjson"})
        return httpx.Response(404, json={"error": f"no route {method} {path}"})

    def reserve(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        name = body["name"]
        if name in self.tokens and request.headers.get("authorization") != f"Bearer {self.tokens[name]}":
            return httpx.Response(403, json={"error": f"the name '{name}' belongs to another client"})
        if body["count"] > len(self.free):
            return httpx.Response(409, json={"error": f"only {len(self.free)} boards are free"})
        token = None
        if name not in self.tokens:
            token = self.tokens[name] = f"rt_{name}"
        records = []
        for _ in range(body["count"]):
            serial = self.free.pop(0)
            self.reservations[serial] = record = {
                "serial": serial,
                "name": name,
                "kind": body["kind"],
                "args": body["args"],
                "created_at": time.time(),
                "expires_at": time.time() + min(body.get("seconds", 3600), self.seconds_left),
                "state": "preparing",
                "polls": 0,
            }
            records.append(self.public(record))
        return httpx.Response(201, json={"name": name, "token": token, "reservations": records})

    @staticmethod
    def public(record: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in record.items() if key != "polls"}

    def results(self, body: dict[str, Any]) -> Iterator[bytes]:
        serials = body.get("serials") or sorted(self.reservations)
        count = 0
        for unit in body["bitstreams"]:
            for serial in serials:
                count += 1
                line = {"evaluation": 1, "serial": serial, "sha256": unit["sha256"], "label": unit["label"]}
                yield (json.dumps({**line, "pulses": len(self.stored[unit["sha256"]])}) + "\n").encode()
        yield (json.dumps({"evaluation": 1, "done": True, "results": count, "failed": 0}) + "\n").encode()


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "config" / "tokens.json")


def connect(
    gateway: FakeGateway, tokens: TokenStore | None, name: str = "alice", **kwargs: Any
) -> PulseCountClient:
    return PulseCountClient(
        URL, name, token_store=tokens, transport=httpx.MockTransport(gateway.handle), **kwargs
    )


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "READY_POLL_INTERVAL", 0.001)


def test_reserve_returns_once_every_board_is_ready(tokens: TokenStore) -> None:
    gateway = FakeGateway(polls_until_ready=3)
    with connect(gateway, tokens) as client:
        serials = client.reserve(2, args={"clock_hz": 1_000_000})
        assert serials == ["BOARD0", "BOARD1"]
        assert all(r.state == "ready" for r in client.reservations())
        assert len(gateway.calls("GET", "/v1/reservations")) >= 3
        assert gateway.calls("POST", "/v1/reservations")[0]["args"] == {"clock_hz": 1_000_000}
        assert client.serials() == ["BOARD0", "BOARD1"]


def test_reserve_gives_up_at_its_deadline_naming_the_boards(tokens: TokenStore) -> None:
    gateway = FakeGateway(polls_until_ready=10**9)
    with connect(gateway, tokens) as client, pytest.raises(ReservationTimeout) as raised:
        client.reserve(1, timeout=0.05)
    assert "BOARD0 not ready after 0.05 s (state: preparing)" in str(raised.value)
    assert gateway.reservations == {}  # the with block ended what was reserved


def test_a_refused_reservation_says_why(gateway: FakeGateway, tokens: TokenStore) -> None:
    with connect(gateway, tokens) as client, pytest.raises(GatewayRefused) as raised:
        client.reserve(3)
    assert raised.value.status == 409
    assert str(raised.value) == "reserving boards: only 2 boards are free (HTTP 409)"


def test_the_token_is_remembered_for_the_next_client_of_that_name(
    gateway: FakeGateway, tokens: TokenStore
) -> None:
    first = connect(gateway, tokens)
    first.reserve(1)
    assert first.token == "rt_alice"
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    second = connect(gateway, TokenStore(tokens.path))  # a later run: only the file is shared
    assert second.token == "rt_alice"
    second.reserve(1)
    assert gateway.requests[-2][3] == "Bearer rt_alice"  # the second POST /v1/reservations
    stranger = connect(gateway, None)
    with pytest.raises(GatewayRefused, match="belongs to another client"):
        stranger.reserve(1)
    first.close()  # ends what it reserved, not the other program's board of the same name
    assert list(gateway.reservations) == ["BOARD1"]
    assert gateway.calls("POST", "/v1/reservations/end")[-1] == {"name": "alice", "serials": ["BOARD0"]}
    third = connect(gateway, TokenStore(tokens.path))
    third.reserve(1)
    assert sorted(gateway.reservations) == ["BOARD0", "BOARD1"]
    third.end()  # without serials: every reservation of the name, also the second's
    assert gateway.reservations == {}


def test_a_reservation_whose_answer_was_lost_is_ended_on_close(
    gateway: FakeGateway, tokens: TokenStore
) -> None:
    gateway.tokens["alice"] = "rt_alice"
    client = connect(gateway, tokens, token="rt_alice")
    gateway.lose_answer = True
    with pytest.raises(GatewayUnreachable, match="the answer was lost"):
        client.reserve(1)
    assert list(gateway.reservations) == ["BOARD0"]  # held, though the client never learnt which
    client.close()
    assert gateway.reservations == {}


INTERRUPTED_RESERVE = """\
import atexit, json
import httpx
from picofleet.client import PulseCountClient
from tests.test_client import URL, FakeGateway

gateway = FakeGateway()
gateway.tokens["alice"] = "rt_alice"
atexit.register(lambda: print("held at exit:", json.dumps(sorted(gateway.reservations))))

def handle(request):
    response = gateway.handle(request)
    if (request.method, request.url.path) == ("POST", "/v1/reservations"):
        raise KeyboardInterrupt  # Ctrl-C while the answer is on its way
    return response

client = PulseCountClient(URL, "alice", "rt_alice", token_store=None, transport=httpx.MockTransport(handle))
client.reserve(1)  # no with, no close(): the program just ends
"""


def test_a_program_interrupted_while_reserving_ends_the_reservation_when_it_exits() -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_RESERVE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert "KeyboardInterrupt" in done.stderr
    assert "held at exit: []" in done.stdout, (done.stdout, done.stderr)


def test_each_file_is_uploaded_once_and_results_carry_the_label(
    gateway: FakeGateway, tokens: TokenStore, tmp_path: Path
) -> None:
    asc = tmp_path / "a.asc"
    asc.write_bytes(ASC)
    with connect(gateway, tokens) as client:
        client.reserve(2)
        first = list(client.evaluate([asc, BIN]))
        again = list(client.evaluate([str(asc), BIN, BIN]))
    assert len(gateway.calls("PUT", "/v1/bitstreams")) == 2
    packed = sha(b"packed:" + ASC)
    assert [(r.serial, r.label, r.sha256, r.pulses) for r in first] == [
        ("BOARD0", str(asc), packed, len(ASC) + 7),
        ("BOARD1", str(asc), packed, len(ASC) + 7),
        ("BOARD0", "bytes #1", sha(BIN), len(BIN)),
        ("BOARD1", "bytes #1", sha(BIN), len(BIN)),
    ]
    assert all(result.ok and result.error is None for result in first)
    assert len(again) == 6


def test_bitstreams_the_gateway_already_holds_are_not_sent(gateway: FakeGateway, tokens: TokenStore) -> None:
    with connect(gateway, tokens) as earlier_run:
        packed = earlier_run.upload(ASC)
        earlier_run.upload(BIN)
    assert len(gateway.calls("PUT", "/v1/bitstreams")) == 2
    with connect(gateway, tokens) as client:
        assert client.upload(BIN) == sha(BIN)
        assert client.upload(ASC) == packed == sha(b"packed:" + ASC)  # asked by the .asc's own sha256
    assert len(gateway.calls("PUT", "/v1/bitstreams")) == 2
    assert len(gateway.calls("GET", f"/v1/bitstreams/{sha(ASC)}")) == 2


def test_results_are_yielded_while_the_stream_is_still_open(gateway: FakeGateway, tokens: TokenStore) -> None:
    second_line_asked = threading.Event()

    def slow_stream() -> Iterator[bytes]:
        line = {"evaluation": 7, "serial": "BOARD0", "sha256": sha(BIN), "label": "bytes #0", "pulses": 5}
        yield (json.dumps(line) + "\n").encode()
        second_line_asked.set()
        yield (
            json.dumps({**line, "serial": "BOARD1", "pulses": None, "error": "board lost"}) + "\n"
        ).encode()
        yield b'{"evaluation": 7, "done": true, "results": 2, "failed": 1}\n'

    gateway.stream = slow_stream()
    with connect(gateway, tokens) as client:
        client.reserve(2)
        results = client.evaluate([BIN])
        first = next(results)
        assert (first.serial, first.pulses, first.ok) == ("BOARD0", 5, True)
        assert not second_line_asked.is_set()  # the first result came before the rest was produced
        second = next(results)
        assert (second.serial, second.pulses, second.error, second.ok) == (
            "BOARD1",
            None,
            "board lost",
            False,
        )
        assert list(results) == []


def test_a_stream_cut_before_its_last_line_is_an_error(gateway: FakeGateway, tokens: TokenStore) -> None:
    gateway.stream = iter(
        [b'{"evaluation": 1, "serial": "BOARD0", "sha256": "x", "label": "l", "pulses": 1}\n']
    )
    with connect(gateway, tokens) as client:
        client.reserve(1)
        with pytest.raises(ClientError, match="ended the evaluation stream before its last line"):
            list(client.evaluate([BIN]))


def test_reservations_about_to_expire_are_extended_during_an_evaluation(tokens: TokenStore) -> None:
    gateway = FakeGateway(seconds_left=60)  # expires well within the 10-minute margin

    def stream_after_extension() -> Iterator[bytes]:
        assert gateway.extended.wait(WAIT), "the client did not extend the reservation"
        yield b'{"evaluation": 1, "done": true, "results": 0, "failed": 0}\n'

    gateway.stream = stream_after_extension()
    with connect(gateway, tokens) as client:
        client.reserve(1, seconds=60)
        assert list(client.evaluate([BIN])) == []
        extension = gateway.calls("POST", "/v1/reservations/extend")[0]
        assert extension == {
            "name": "alice",
            "seconds": 2 * client_module.EXTEND_MARGIN,
            "serials": ["BOARD0"],
        }
        assert client.reservations()[0].expires_at > time.time() + client_module.EXTEND_MARGIN


def test_reservations_far_from_expiry_are_left_alone(gateway: FakeGateway, tokens: TokenStore) -> None:
    with connect(gateway, tokens) as client:
        client.reserve(1)
        assert client.extend_if_expiring() == []
    assert gateway.calls("POST", "/v1/reservations/extend") == []


def test_a_missing_file_fails_before_any_request(
    gateway: FakeGateway, tokens: TokenStore, tmp_path: Path
) -> None:
    missing = r"nothing\.asc: No such file or directory"
    with connect(gateway, tokens) as client, pytest.raises(BitstreamFileError, match=missing):
        client.evaluate([BIN, tmp_path / "nothing.asc"])  # raised by the call, before any iteration
    assert gateway.requests == []


def test_bad_arguments_and_modes_are_refused_before_any_request(
    gateway: FakeGateway, tokens: TokenStore
) -> None:
    with connect(gateway, tokens) as client:
        with pytest.raises(ValueError, match="window_ms must be a whole number from 1 to 60000"):
            list(client.evaluate([BIN], args={"window_ms": 0}))
        with pytest.raises(ValueError, match="unknown argument 'clock'"):
            client.reserve(1, args={"clock": 5})
        with pytest.raises(ValueError, match="mode must be one of each, any"):
            list(client.evaluate([BIN], mode="all"))
    assert gateway.requests == []


def test_an_unreachable_gateway_is_one_clear_error(tokens: TokenStore) -> None:
    client = PulseCountClient("http://127.0.0.1:9", "alice", token_store=tokens)
    with pytest.raises(GatewayUnreachable) as raised:
        client.reserve(1)
    assert str(raised.value).startswith("cannot reach the gateway at http://127.0.0.1:9: ")
    assert "\n" not in str(raised.value)
    client.close()


def test_the_default_token_file_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PICOFLEET_TOKENS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert TokenStore().path == tmp_path / "picofleet" / "tokens.json"
    monkeypatch.setenv("PICOFLEET_TOKENS", str(tmp_path / "elsewhere.json"))
    assert TokenStore().path == tmp_path / "elsewhere.json"
