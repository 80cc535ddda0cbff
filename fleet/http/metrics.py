"""``GET /metrics``: the fleet service's Prometheus metrics in the text exposition format
(docs/fleet-api.md, "Metrics").

:class:`FleetMetrics` counts events where they happen (requests by route template and status, through
:class:`RequestCounter`; pushes and releases, through the git backend's callbacks) and the long polls
held now; :func:`live_families` reads the store at scrape time (gateways by fleet, reported boards by
status, each gateway's sync lag). Every application has its own registry, never prometheus-client's
global one.

No token: Prometheus scrapes without credentials, and no label holds a secret (fleet names, gateway
ids, route templates and statuses only; never a key, a token or a raw path). With ``--workers N`` a
front worker forwards ``GET /metrics`` to the primary, so every process answers the primary's
numbers: the requests it served, including every request a front worker forwarded, but not the
plain target-state checks a front worker answered from its cache (those still keep ``last_seen``, and
so the sync lag, right).
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from picofleet.fleet.http.context import FleetService

__all__ = ["STATE_PATH", "FleetMetrics", "RequestCounter", "get_metrics", "live_families", "parse_iso"]

STATE_PATH = "/v1/gateway/state"
"""The route of the plain target-state checks answered before routing (fleet/state_checks.py)."""


class FleetMetrics:
    """The fleet service's event metrics, in their own registry (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "picofleet_fleet_requests",
            "HTTP requests answered, by route template (unmatched: no route), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.long_polls = Gauge(
            "picofleet_fleet_long_polls",
            "Target-state long polls (?wait=N) held open now.",
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "picofleet_fleet_event_streams",
            "Live event streams (GET /v1/fleets/{name}/events) open now.",
            registry=self.registry,
        )
        self.pushes = Counter(
            "picofleet_fleet_pushes",
            "git pushes to fleet repositories, by fleet and outcome: accepted, refused (the pre-receive"
            " hook declined it) or failed (git answered neither).",
            ["fleet", "outcome"],
            registry=self.registry,
        )
        self.releases = Counter(
            "picofleet_fleet_releases_created",
            "Releases recorded (a pushed commit with its assets), by fleet.",
            ["fleet"],
            registry=self.registry,
        )
        self.polling: Tally[str] = Tally()
        """Long polls held now, by gateway id (a gateway holding one is in sync: lag 0)."""

    @contextlib.contextmanager
    def long_poll(self, gateway_id: str) -> Iterator[None]:
        """Count a long poll of ``gateway_id`` as held for the duration of the ``with`` block."""
        self.long_polls.inc()
        self.polling[gateway_id] += 1
        try:
            yield
        finally:
            self.long_polls.dec()
            self.polling[gateway_id] -= 1
            if self.polling[gateway_id] <= 0:
                del self.polling[gateway_id]

    def push_done(self, fleet: str, outcome: str) -> None:
        """Count a push (the git backend's ``on_push``)."""
        self.pushes.labels(fleet, outcome).inc()


class RequestCounter:
    """Starlette middleware counting every HTTP request by route template (the router's
    ``scope["route"]``), method and status in ``service.metrics``: the label values are bounded by
    the routes, never raw paths. (Plain target-state checks answered before routing are counted by
    ``FleetService.answer_known``.)"""

    def __init__(self, app: ASGIApp, service: FleetService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            if path is None:
                path = STATE_PATH if scope.get("path") == STATE_PATH else "unmatched"
            method = str(scope.get("method", ""))
            if method not in ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"):
                method = "other"
            self.service.metrics.requests.labels(path, method, str(status or "none")).inc()


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of a ``YYYY-MM-DDTHH:MM:SS[.mmm]Z`` time; None when absent or unreadable."""
    if not text:
        return None
    try:
        whole, _, fraction = text.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return seconds + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)
    except ValueError:
        return None


async def live_families(service: FleetService) -> list[Metric]:
    """Gateways by fleet, reported boards by fleet and status, and each gateway's sync lag, now."""
    gateways = GaugeMetricFamily(
        "picofleet_fleet_gateways", "Provisioned gateways, by fleet.", labels=["fleet"]
    )
    boards = GaugeMetricFamily(
        "picofleet_fleet_boards",
        "Boards the gateways last reported, by fleet and status (Offline: reported but unplugged).",
        labels=["fleet", "status"],
    )
    lag = GaugeMetricFamily(
        "picofleet_fleet_gateway_sync_lag_seconds",
        "Seconds since the gateway was last heard from (a report, a target-state check, a log batch);"
        " 0 while it holds a long poll. Absent for a gateway never heard from.",
        labels=["fleet", "gateway"],
    )
    now = time.time()
    metrics: FleetMetrics = service.metrics
    for fleet in await service.store.fleets():
        name = str(fleet["name"])
        records: list[dict[str, Any]] = await service.store.gateways(name)
        gateways.add_metric([name], len(records))
        statuses: Tally[str] = Tally()
        for record in records:
            statuses.update(str(board.get("Status") or "unknown") for board in record.get("boards") or [])
            if metrics.polling.get(record["id"]):
                lag.add_metric([name, record["id"]], 0.0)
                continue
            seen = parse_iso(service.last_seen(record))
            if seen is not None:
                lag.add_metric([name, record["id"]], max(0.0, now - seen))
        for status, count in sorted(statuses.items()):
            boards.add_metric([name, status], count)
    return [gateways, boards, lag]


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


async def get_metrics(request: Request) -> Response:
    """The fleet service's metrics in Prometheus' text format (no token: see the module docstring)."""
    service: FleetService = request.app.state.fleet
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(service.metrics.registry.collect()))
    registry.register(_Fixed(await live_families(service)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
