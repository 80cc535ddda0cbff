"""The gateway's event metrics (Prometheus, docs/api.md "Metrics"): what happened since the process
started, counted where it happens. What the gateway *is* now (boards by status, reservations,
queued evaluations) is read at scrape time by gateway/http/metrics.py instead.

One :class:`GatewayMetrics` per device manager (``DeviceManager.metrics``), each with its own
:class:`~prometheus_client.CollectorRegistry`: the tests run several gateways in one process, so
nothing is registered in prometheus-client's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["FLASH_DURATION_BUCKETS", "GatewayMetrics"]

FLASH_DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds: a virtual board flashes in about a second, a real Pico in 5-20 s, a rollback doubles it."""


class GatewayMetrics:
    """Counters and histograms of the gateway's events, in their own registry (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.flashes_started = Counter(
            "picofleet_flashes_started",
            "Flash jobs started (each with its retries and rollback), by board type.",
            ["board_type"],
            registry=self.registry,
        )
        self.flashes_finished = Counter(
            "picofleet_flashes_finished",
            "Flash jobs finished, by board type and outcome: succeeded (the image runs), rolled_back"
            " (a release that did not run; the board runs its previous image), failed (the board is Broken).",
            ["board_type", "outcome"],
            registry=self.registry,
        )
        self.flash_duration = Histogram(
            "picofleet_flash_duration_seconds",
            "Seconds from a flash job's start to its end (retries and rollback included), by board type"
            " and outcome.",
            ["board_type", "outcome"],
            buckets=FLASH_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.evaluations_submitted = Counter(
            "picofleet_evaluations_submitted",
            "Evaluations accepted by POST /v1/evaluations.",
            registry=self.registry,
        )
        self.evaluations_completed = Counter(
            "picofleet_evaluations_completed",
            "Evaluations whose every bitstream has a result (a count or an error).",
            registry=self.registry,
        )
        self.bitstream_results = Counter(
            "picofleet_bitstream_results",
            "Results of evaluated bitstreams (one per bitstream and board), by outcome: counted (a"
            " pulse count) or failed (an error).",
            ["outcome"],
            registry=self.registry,
        )

    def flash_finished(self, board_type: str, outcome: str, seconds: float) -> None:
        """Count a finished flash job (``outcome``: succeeded, rolled_back or failed) and its duration."""
        self.flashes_finished.labels(board_type, outcome).inc()
        self.flash_duration.labels(board_type, outcome).observe(seconds)
