"""Shared fixtures: real gateway processes with virtual boards, on ephemeral loopback ports; the
divide-by-16 counter bitstream; a fleet service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess
from tests.helpers.fpga import FpgaBuild, session_counter
from tests.helpers.gateway import GatewayProcess

pytest_plugins = ["tests.helpers.browser"]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator:
    """Start gateways in tmp_path; every one started is stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def start(*args: str, data: Path | None = None, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = GatewayProcess(data or tmp_path / "data", *args, env=env).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def counter(tmp_path_factory: pytest.TempPathFactory) -> FpgaBuild:
    """The divide-by-16 counter (CLK pin 35 → ICE_27 pin 27), built once per session (skips the
    test when yosys, nextpnr-ice40 or icepack is missing)."""
    return session_counter(tmp_path_factory)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    """A fleet service (one process) in tmp_path/fleet, stopped at the end of the test."""
    service = FleetProcess(tmp_path / "fleet").start()
    yield service
    service.stop()
