"""A connection that is gone gets no more work (issue #13, item 10): clients that pipeline requests and
close without reading used to have every queued request run and answered into the dead socket, one
asyncio warning per write; clients that read keep their pipelined answers, half-closed or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.gateway import GatewayProcess, running_gateway
from tests.helpers.pipelining import SEND_FAILED, abandon_pipelines, connections_from, pipelined_answers
from tests.helpers.wait import wait_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(Path(tmp_path_factory.mktemp("gone-peers")), 1) as process:
        yield process


def test_abandoned_pipelines_are_dropped_without_a_warning_flood(gateway: GatewayProcess) -> None:
    ports = abandon_pipelines(gateway.url, clients=20, requests=100)
    # the gateway is done with the clients once it holds none of their connections
    wait_for(lambda: connections_from(gateway.pid, ports) == 0, 20, "the abandoned connections to be closed")
    assert gateway.output().count(SEND_FAILED) == 0
    assert len(gateway.devices()) == 1


def test_pipelined_requests_are_all_answered(gateway: GatewayProcess) -> None:
    assert pipelined_answers(gateway.url, 50) == [200] * 50


def test_a_client_that_half_closes_still_reads_every_answer(gateway: GatewayProcess) -> None:
    assert pipelined_answers(gateway.url, 5, half_close=True) == [200] * 5
