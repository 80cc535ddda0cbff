"""Gateway core benchmark: hotplug → listed latency, GET /v1/devices latency, RSS, with 64 virtual boards.

Runs a real gateway process (`picofleet gateway --simulate 64`) on a loopback port and prints
one JSON document: the figures, the goals of the gateway-core issue, and figure/goal ratios
(below 1.0 meets the goal). The virtual rack is a separate process; its memory is reported
apart and not counted in the gateway's RSS.

    .venv/bin/python benchmarks/gateway_core.py [--boards 64] [--requests 2000] [--hotplugs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.boards import rack  # noqa: E402
from tests.helpers.gateway import GatewayProcess, wait_for  # noqa: E402

GOALS = {"listed_p99_s": 2.0, "offline_p99_s": 2.0, "devices_p99_ms": 20.0, "gateway_rss_mb": 80.0}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_devices_latency(gateway: GatewayProcess, requests: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(50):  # warm-up
            client.get("/v1/devices")
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get("/v1/devices")
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    return timings


def measure_hotplug(gateway: GatewayProcess, count: int) -> tuple[list[float], list[float], list[float]]:
    """New board → listed; unplug → Offline; replug → Idle again (seconds each)."""
    listed, offline, replugged = [], [], []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:

        def status(serial: str) -> str | None:
            response = client.get(f"/v1/devices/{serial}")
            return response.json()["Status"] if response.status_code == 200 else None

        for _ in range(count):
            started = time.perf_counter()
            serial = rack(gateway.data, "add", board_type="pico2-ice")["serial"]
            wait_for(lambda s=serial: status(s) == "Idle", 10, "new board listed", interval=0.002)
            listed.append(time.perf_counter() - started)

            started = time.perf_counter()
            rack(gateway.data, "unplug", serial=serial)
            wait_for(lambda s=serial: status(s) == "Offline", 10, "Offline", interval=0.002)
            offline.append(time.perf_counter() - started)

            started = time.perf_counter()
            rack(gateway.data, "plug", serial=serial)
            wait_for(lambda s=serial: status(s) == "Idle", 10, "Idle again", interval=0.002)
            replugged.append(time.perf_counter() - started)
    return listed, offline, replugged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--hotplugs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        started = time.perf_counter()
        gateway = GatewayProcess(Path(tmp) / "data", "--simulate", str(args.boards), "--log-level", "warning")
        gateway.start()
        try:
            gateway.wait_devices(
                lambda d: len(d) == args.boards and all(x["Status"] == "Idle" for x in d),
                120,
                f"{args.boards} idle boards",
                interval=0.05,
            )
            all_idle_s = time.perf_counter() - started
            devices_ms = measure_devices_latency(gateway, args.requests)
            process = psutil.Process(gateway.pid)
            gateway_rss_mb = process.memory_info().rss / 2**20
            rack_rss_mb = sum(child.memory_info().rss for child in process.children(recursive=True)) / 2**20
            listed, offline, replugged = measure_hotplug(gateway, args.hotplugs)
        finally:
            gateway.stop()

    figures = {
        "boards": args.boards,
        "start_to_all_idle_s": round(all_idle_s, 3),
        "devices_requests": args.requests,
        "devices_p50_ms": round(statistics.median(devices_ms), 3),
        "devices_p99_ms": round(percentile(devices_ms, 0.99), 3),
        "devices_max_ms": round(max(devices_ms), 3),
        "gateway_rss_mb": round(gateway_rss_mb, 1),
        "rack_rss_mb_not_counted": round(rack_rss_mb, 1),
        "hotplugs": args.hotplugs,
        "listed_p50_s": round(statistics.median(listed), 4),
        "listed_p99_s": round(percentile(listed, 0.99), 4),
        "offline_p50_s": round(statistics.median(offline), 4),
        "offline_p99_s": round(percentile(offline, 0.99), 4),
        "replug_idle_p50_s": round(statistics.median(replugged), 4),
        "replug_idle_p99_s": round(percentile(replugged, 0.99), 4),
    }
    ratios = {f"{name}_vs_goal": round(figures[name] / goal, 3) for name, goal in GOALS.items()}
    print(
        json.dumps(
            {
                "benchmark": "gateway_core",
                "figures": figures,
                "goals": GOALS,
                "ratios": ratios,
                "goals_met": all(value < 1.0 for value in ratios.values()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
