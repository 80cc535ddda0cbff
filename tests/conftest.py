"""Shared fixtures: a real gateway process with virtual boards, on an ephemeral loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.gateway import GatewayProcess


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
