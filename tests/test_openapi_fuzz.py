"""Schemathesis `--checks all` against both services on 127.0.0.1 (issue #13, item 9): every answer is
documented (status, content type, schema), schema-valid requests are accepted, invalid ones refused
with a 4xx, no 5xx. Bounded (a fixed seed, 15 examples per operation) to stay well under a minute;
the exceptions JSON Schema cannot state are in tests/data/schemathesis.toml, each with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess
from tests.helpers.gateway import GatewayProcess, running_gateway

CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def schemathesis(url: str, cwd: Path, *options: str, env: dict[str, str] | None = None) -> None:
    """Run the schemathesis CLI on ``url``/openapi.json; fail with its report unless it found nothing."""
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--seed",
            "13",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
            *options,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # the config names a gateway key for the fleet's gateway routes (unused on the gateway)
        env={**os.environ, "PICOFLEET_FUZZ_GATEWAY_KEY": "none", **(env or {})},
    )
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("fuzz-gateway"), 2) as process:
        yield process


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProcess]:
    service = FleetProcess(tmp_path_factory.mktemp("fuzz-fleet")).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.timeout(300)
def test_the_gateway_answers_as_its_openapi_document_says(gateway: GatewayProcess, tmp_path: Path) -> None:
    schemathesis(gateway.url, tmp_path)


@pytest.mark.timeout(300)
def test_the_fleet_service_answers_as_its_openapi_document_says(fleet: FleetProcess, tmp_path: Path) -> None:
    created = fleet.create_fleet("fuzzed")
    gateway_key = fleet.provision(created["provisioning_key"], "fuzzer")["key"]
    schemathesis(
        fleet.url,
        tmp_path,
        "--header",
        f"Authorization: Bearer {fleet.token}",
        # an endless stream of changes (front workers follow it): no answer ever ends
        "--exclude-path",
        "/v1/internal/changes",
        # a fleet's live events: likewise endless (tests/test_fleet_events.py reads them)
        "--exclude-path",
        "/v1/fleets/{name}/events",
        env={"PICOFLEET_FUZZ_GATEWAY_KEY": gateway_key},
    )
