"""Issue #6 end to end: a researcher evaluates real circuits on reserved boards of a real gateway.

A gateway with two virtual pico2-ice boards (``--simulate 2``) and two real iCE40UP5K circuits
built with yosys + nextpnr-ice40 (counters dividing the clock by 16 and by 4). The boards are
reserved, get the pulse-count firmware, and each circuit runs in the FPGA simulation for exactly
the window: at 1 MHz for 10 ms that is 10,000 clocks, so 625 and 2,500 rising edges.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from picofleet.client import EXTEND_MARGIN, PulseCountClient, TokenStore
from tests.helpers.fpga import FpgaBuild, session_counter, session_loop
from tests.helpers.gateway import GatewayProcess, running_gateway, wait_for

ARGS = {"clock_hz": 1_000_000, "window_ms": 10}
EXPECTED = {16: 625, 4: 2500}  # divider -> rising edges in 10,000 clocks
EVALUATION_TIMEOUT = 240.0  # first reservation: flashing the firmware, compiling both circuits
SIM_DEADLINE = 4  # seconds a simulated count may take: a circuit that never settles fails sooner


@pytest.fixture(scope="module")
def circuits(tmp_path_factory: pytest.TempPathFactory) -> dict[int, FpgaBuild]:
    """The divide-by-16 and divide-by-4 counters, built once."""
    return {divider: session_counter(tmp_path_factory, divider) for divider in EXPECTED}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with two virtual pico2-ice boards for the whole module."""
    env = {"PICOFLEET_SIM_FPGA_DEADLINE": str(SIM_DEADLINE)}
    with running_gateway(tmp_path_factory.mktemp("evaluation") / "data", 2, env=env) as process:
        yield process


def reservations(gateway: GatewayProcess, name: str | None = None) -> list[dict[str, Any]]:
    """``GET /v1/reservations`` (of ``name``)."""
    response = gateway.get("/v1/reservations", params={"name": name} if name else None)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["reservations"] if isinstance(body, dict) else body


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PICOFLEET_TOKENS": str(tmp_path / "tokens.json")}


def evaluate_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`picofleet evaluate ARGS` as a subprocess (stdout a pipe: no progress bar)."""
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=EVALUATION_TIMEOUT,
        env=cli_env(tmp_path),
    )


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_the_command_counts_every_circuit_on_every_board_then_ends(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    a, b = str(circuits[16].asc), str(circuits[4].asc)
    done = evaluate_cli(
        "--gateway", gateway.url, "--name", "alice", "--boards", "2",
        "--arg", "clock_hz=1000000", "--arg", "window_ms=10", "--json", a, b,
        tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr, gateway.output()[-3000:])
    assert done.stderr == ""
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    serials = sorted(device["LocalUUID"] for device in gateway.devices())
    assert sorted((line["file"], line["serial"], line["pulses"]) for line in lines) == sorted(
        [(a, serial, 625) for serial in serials] + [(b, serial, 2500) for serial in serials]
    )
    assert all("error" not in line for line in lines)
    assert reservations(gateway, "alice") == []
    assert reservations(gateway) == []


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_the_python_client_reserves_evaluates_bytes_and_paths_and_ends(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    by_16, by_4 = circuits[16].bin.read_bytes(), circuits[4].asc
    with PulseCountClient(gateway.url, "bob", token_store=TokenStore(tmp_path / "tokens.json")) as client:
        serials = client.reserve(2, args=ARGS, timeout=EVALUATION_TIMEOUT)
        assert sorted(serials) == sorted(client.serials())
        assert {r["serial"]: r["state"] for r in reservations(gateway, "bob")} == dict.fromkeys(
            serials, "ready"
        )
        results = []
        for result in client.evaluate([by_16, by_4]):
            results.append(result)
        assert sorted((r.label, r.serial, r.pulses, r.error) for r in results) == sorted(
            [("bytes #0", serial, 625, None) for serial in serials]
            + [(str(by_4), serial, 2500, None) for serial in serials]
        )
        any_board = list(client.evaluate([by_4], mode="any", args={"clock_hz": 1_000_000, "window_ms": 20}))
        assert [(r.label, r.pulses) for r in any_board] == [(str(by_4), 5000)]
        assert any_board[0].serial in serials
    assert reservations(gateway, "bob") == []


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_a_program_that_exits_without_ending_still_ends_its_reservation(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        from picofleet.client import PulseCountClient
        client = PulseCountClient({gateway.url!r}, "carol")
        print(client.reserve(1, timeout={EVALUATION_TIMEOUT}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=EVALUATION_TIMEOUT,
        env=cli_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert reservations(gateway, "carol") == []


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_a_circuit_that_fails_is_reported_per_board_and_exits_1(
    gateway: GatewayProcess,
    circuits: dict[int, FpgaBuild],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    loop, good = str(session_loop(tmp_path_factory).asc), str(circuits[16].asc)
    done = evaluate_cli(
        "--gateway", gateway.url, "--name", "heidi", "--boards", "2",
        "--arg", "clock_hz=1000000", "--arg", "window_ms=10", "--json", loop, good,
        tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == ""  # the reasons are in the results
    results = [json.loads(line) for line in done.stdout.splitlines()]
    lines = sorted((line["file"], line.get("pulses"), line.get("error")) for line in results)
    reason = f"circuit did not settle within {SIM_DEADLINE} s"
    assert lines == [(good, 625, None), (good, 625, None), (loop, None, reason), (loop, None, reason)]
    assert reservations(gateway, "heidi") == []


def test_a_bad_file_stops_the_command_before_any_board_is_reserved(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.bin"
    broken.write_bytes(circuits[16].bin.read_bytes()[:-300])
    before = gateway.devices()
    done = evaluate_cli(
        "--gateway", gateway.url, "--name", "dave", "--boards", "2", str(circuits[4].asc), str(broken),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"picofleet evaluate: {broken} is not a valid iCE40 bitstream: ")
    assert reservations(gateway) == []
    assert [d["Status"] for d in gateway.devices()] == [d["Status"] for d in before]
    assert "dave" not in gateway.output()  # the gateway never heard of this client


def test_a_refused_reservation_is_one_line_and_reserves_nothing(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    done = evaluate_cli(
        "--gateway", gateway.url, "--name", "erin", "--boards", "3", str(circuits[4].asc), tmp_path=tmp_path
    )
    assert done.returncode == 1, done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("picofleet evaluate: reserving boards: ")
    assert "(HTTP 409)" in lines[0]
    wait_for(lambda: reservations(gateway) == [], 5, "no reservation left")


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_an_evaluation_extends_a_reservation_about_to_expire(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    with PulseCountClient(gateway.url, "frank", token_store=TokenStore(tmp_path / "tokens.json")) as client:
        [serial] = client.reserve(1, seconds=120, timeout=EVALUATION_TIMEOUT)
        assert reservations(gateway, "frank")[0]["expires_at"] < time.time() + 121
        slow = {"clock_hz": 1_000, "window_ms": 2_000}  # long enough for the extender's first look
        [result] = client.evaluate([circuits[16].asc], args=slow)
        assert (result.serial, result.pulses) == (serial, 125)

        def extended() -> bool:
            return reservations(gateway, "frank")[0]["expires_at"] > time.time() + EXTEND_MARGIN

        wait_for(extended, 10, "the reservation to be extended beyond the margin")
    assert reservations(gateway, "frank") == []


@pytest.mark.timeout(EVALUATION_TIMEOUT + 60)
def test_stopping_the_command_mid_evaluation_ends_its_reservations(
    gateway: GatewayProcess, circuits: dict[int, FpgaBuild], tmp_path: Path
) -> None:
    command = subprocess.Popen(
        [
            sys.executable, "-m", "picofleet.cli", "evaluate", "--gateway", gateway.url, "--name", "grace",
            "--boards", "2", "--arg", "clock_hz=1000", "--arg", "window_ms=5000", "--json",
            str(circuits[16].asc),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path),
    )  # fmt: skip
    try:
        wait_for(
            lambda: [r["state"] for r in reservations(gateway, "grace")] == ["ready", "ready"],
            EVALUATION_TIMEOUT,
            "grace's two boards to be ready",
        )
        gateway.wait_devices(
            lambda d: [b["Status"] for b in d] == ["Evaluating", "Evaluating"], 30, "both boards evaluating"
        )
        command.send_signal(signal.SIGTERM)
        stdout, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert stdout == ""  # no result came back in time
    assert reservations(gateway, "grace") == []
