"""Fleet benchmark (a): target-state checks per second on the 304 and the 200 path, 1,000 gateways.

Starts a real fleet service on loopback (``--workers 2``: the primary and one front worker on one
port, as an operator runs it on a 2-core machine), creates a fleet, pushes one release with the
real git client, provisions 1,000 gateways that each report 4 pico2-ice boards once, then measures
``GET /v1/gateway/state`` with ``If-None-Match`` = the gateway's ETag (304) and without it (200),
requests going round-robin over all gateways. In the same run the limit: a bare Hypercorn +
Starlette hello endpoint (same Hypercorn config, the same number of processes on one port with
``SO_REUSEPORT``), measured with the same client. The client is a minimal HTTP/1.1 keep-alive
client in several processes (see ``_fleet_common``). Prints one JSON document: figures, goal, ratios.

    .venv/bin/python benchmarks/fleet_target_state.py [--gateways 1000] [--duration 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fleet_common import (
    HelloProcess,
    make_release_repo,
    measure_rps,
    provision_gateways,
    push,
    request_bytes,
)

from tests.helpers.fleet import FleetProcess

GOAL_304_PER_S = 3000.0  # on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per path")
    parser.add_argument("--workers", type=int, default=2, help="fleet service processes (and hello's)")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32, help="per client process")
    parser.add_argument("--provision-concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=600.0, help="for the whole run, seconds")
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline

    with tempfile.TemporaryDirectory(prefix="pf-bench-fleet-") as tmp:
        fleet = FleetProcess(
            Path(tmp) / "data", "--log-level", "warning", "--workers", str(args.workers)
        ).start()
        hello = HelloProcess(args.workers).start()
        try:
            created = fleet.create_fleet("bench")
            commit, firmware = make_release_repo(Path(tmp) / "work")
            push(Path(tmp) / "work", fleet.push_url("bench"))
            assert fleet.fleet("bench")["target"] == commit

            started = time.perf_counter()
            gateways = asyncio.run(
                provision_gateways(
                    fleet.url,
                    created["provisioning_key"],
                    args.gateways,
                    args.provision_concurrency,
                    deadline,
                    args.boards,
                )
            )
            provision_s = time.perf_counter() - started
            for gateway in gateways:
                boards = gateway["target"]["boards"]
                assert len(boards) == args.boards and all(b["commit"] == commit for b in boards.values())

            def state_requests(conditional: bool) -> list[bytes]:
                return [
                    request_bytes(
                        fleet.url,
                        "/v1/gateway/state",
                        {
                            "Authorization": f"Bearer {g['key']}",
                            **({"If-None-Match": g["etag"]} if conditional else {}),
                        },
                    )
                    for g in gateways
                ]

            assert fleet.process is not None
            common = {
                "processes": args.client_processes,
                "conns": args.connections,
                "duration": args.duration,
            }
            not_modified = measure_rps(fleet.url, state_requests(True), 304, fleet.process.pid, **common)
            full = measure_rps(fleet.url, state_requests(False), 200, fleet.process.pid, **common)
            limit = measure_rps(hello.url, [request_bytes(hello.url, "/hello")], 200, hello.pid, **common)
            assert time.monotonic() < deadline, "deadline passed"
        finally:
            hello.stop()
            fleet.stop()

    rate_304, rate_200, rate_hello = (
        not_modified["requests_per_s"],
        full["requests_per_s"],
        limit["requests_per_s"],
    )
    ok = all(not (m["unexpected_status"] or m["errors"]) for m in (not_modified, full, limit))
    print(
        json.dumps(
            {
                "benchmark": "fleet_target_state",
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "setup": {
                    "gateways": args.gateways,
                    "boards_per_gateway": args.boards,
                    "release": commit[:12],
                    "asset_bytes": len(firmware),
                    "provision_and_report_s": round(provision_s, 2),
                    "provision_concurrency": args.provision_concurrency,
                },
                "figures": {
                    "state_304_per_s": rate_304,
                    "state_200_per_s": rate_200,
                    "hello_per_s": rate_hello,
                },
                "ratios": {
                    "304_vs_hello": round(rate_304 / rate_hello, 3),
                    "200_vs_hello": round(rate_200 / rate_hello, 3),
                    "304_vs_goal": round(rate_304 / GOAL_304_PER_S, 3),
                },
                "goals": {"state_304_per_s_min": GOAL_304_PER_S, "on_cores": 2},
                "server_processes": args.workers,
                "goal_met": rate_304 >= GOAL_304_PER_S,
                "all_responses_as_expected": ok,
                "detail": {"state_304": not_modified, "state_200": full, "hello": limit},
                "note": (
                    "server and client processes share this machine's cores; the fleet service and "
                    "the hello server each run server_processes Hypercorn processes on one port"
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
