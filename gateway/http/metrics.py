"""``GET /metrics``: the gateway's Prometheus metrics in the text exposition format (docs/api.md,
"Metrics").

Two sources: the event counters and histograms of gateway/metrics.py (``manager.metrics``: flashes,
evaluations, bitstream results), and :class:`LiveCollector`, which reads the gateway's state at
scrape time (boards by status and type, the process loop's status, reservations, evaluation work
queued and running). Each application has its own registry holding both, never prometheus-client's
global one (the tests run several gateways in one process).

No token, like ENM's other read routes: the numbers carry no secrets (no client names, tokens or
serials in labels) and Prometheus scrapes without credentials.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from picofleet.gateway.boards.manager import PAUSED
from picofleet.gateway.http.context import GatewayApi, gateway_of

__all__ = ["ROUTES", "LiveCollector", "RegistryCollector", "get_metrics", "metrics_registry"]


class LiveCollector(Collector):
    """The gateway's state now, read from :class:`GatewayApi` at each scrape."""

    def __init__(self, api: GatewayApi) -> None:
        self.api = api

    def collect(self) -> Iterable[Metric]:
        """Boards by status and type, the loop status, reservations, evaluation work."""
        manager = self.api.manager
        boards = GaugeMetricFamily(
            "picofleet_boards",
            "Boards the gateway knows, by status and board type.",
            labels=["status", "board_type"],
        )
        counts = Counter(
            (str(board.record.get("Status") or "unknown"), str(board.record.get("BoardType") or "unknown"))
            for board in list(manager.boards.values())
        )
        for (status, board_type), count in sorted(counts.items()):
            boards.add_metric([status, board_type], count)
        yield boards
        yield GaugeMetricFamily(
            "picofleet_gateway_paused",
            "1 while the gateway's process loop is paused (ENM currentStatus Paused), else 0.",
            value=1 if manager.current_status == PAUSED else 0,
        )
        reservations = self.api.reservations.all()
        yield GaugeMetricFamily(
            "picofleet_reservations", "Boards reserved for evaluations now.", value=len(reservations)
        )
        yield GaugeMetricFamily(
            "picofleet_reservation_clients",
            "Clients holding at least one reservation now.",
            value=len({reservation.name for reservation in reservations}),
        )
        queued = running = unfinished = 0
        for evaluation in list(self.api.evaluations.evaluations.values()):
            if evaluation.done:
                continue
            unfinished += 1
            for unit in evaluation.units:
                if unit.done:
                    continue
                if unit.running_on is None:
                    queued += 1
                else:
                    running += 1
        yield GaugeMetricFamily(
            "picofleet_evaluations_running", "Evaluations not finished yet.", value=unfinished
        )
        units = GaugeMetricFamily(
            "picofleet_evaluation_units",
            "Bitstreams of unfinished evaluations waiting for a board (queued) or on one (running).",
            labels=["state"],
        )
        units.add_metric(["queued"], queued)
        units.add_metric(["running"], running)
        yield units
        yield GaugeMetricFamily(
            "picofleet_gateway_event_streams",
            "Open GET /v1/gateway/events streams (control panels and other watchers).",
            value=self.api.event_streams,
        )


class RegistryCollector(Collector):
    """Every metric of another registry (the device manager's event metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        """The other registry's metrics, as they are now."""
        return self.registry.collect()


def metrics_registry(api: GatewayApi) -> CollectorRegistry:
    """The registry ``GET /metrics`` of the application serving ``api`` exposes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(api.manager.metrics.registry))
    registry.register(LiveCollector(api))
    return registry


async def get_metrics(request: Request) -> Response:
    """The gateway's metrics in Prometheus' text format (no token: see the module docstring)."""
    registry: CollectorRegistry = request.app.state.metrics
    gateway_of(request)  # the application is a gateway's
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES: list[BaseRoute] = [Route("/metrics", get_metrics, methods=["GET"])]
"""The metrics route, for ``create_app``."""
