"""Abandoned pipelines: clients sending many pipelined requests and closing without reading the answers.

Runs a real gateway (`picofleet gateway --simulate 2`) on a loopback port; CLIENTS connections at once
each send REQUESTS pipelined `GET /v1/devices` and close. Prints one JSON document: the asyncio
"socket.send() raised exception" warnings the gateway logged, its RSS before and after, and how long
it took to let go of every connection. Issue #13, item 10: before picofleet/common/http/gone_peers.py,
50 x 200 cost 19,700 warnings, 3.7 s of work for nobody and 45 → 74 MB here (7,200 warnings and
65 → 144 MB in the review); after it, 0 warnings, 0.07 s and under 1 MB.

    .venv/bin/python benchmarks/abandoned_pipelines.py [--clients 50] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.gateway import running_gateway  # noqa: E402
from tests.helpers.pipelining import SEND_FAILED, abandon_pipelines, connections_from  # noqa: E402
from tests.helpers.wait import wait_for  # noqa: E402

GOALS = {"send_warnings": 0, "rss_growth_mb": 10.0, "released_s": 2.0}


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, running_gateway(Path(data), 2) as gateway:
        process = psutil.Process(gateway.pid)
        rss_before = process.memory_info().rss / 2**20
        started = time.perf_counter()
        ports = abandon_pipelines(gateway.url, args.clients, args.requests)
        wait_for(lambda: connections_from(gateway.pid, ports) == 0, 120, "every connection released")
        released = time.perf_counter() - started
        figures = {
            "send_warnings": gateway.output().count(SEND_FAILED),
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(process.memory_info().rss / 2**20, 1),
            "rss_growth_mb": round(process.memory_info().rss / 2**20 - rss_before, 1),
            "released_s": round(released, 3),
        }
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests_each": args.requests,
                "figures": figures,
                "goals": GOALS,
                "met": {name: figures[name] <= goal for name, goal in GOALS.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
