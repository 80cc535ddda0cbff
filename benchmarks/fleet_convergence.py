"""Fleet benchmarks (b) and (c): `git push` returning → all boards converged, and bytes per board.

Starts a real fleet service process on loopback and 200 simulated gateways in this process
(lightweight asyncio clients, not gateway processes), each with 4 virtual pico2-ice boards. Each
provisions, reports its boards with Commit null and long-polls ``GET /v1/gateway/state?wait=30``
with ``If-None-Match``. On a new target it downloads each asset it has not downloaded yet (the
firmware and, when the release has one, the FPGA image; once per gateway, like the real gateway's
asset cache; size and sha256 verified) and reports its boards with Commit, FpgaImage, Environment
and Config equal to the target, as a real gateway does once the boards confirm them. Converged = the
operator API (``GET /v1/fleets/<f>/boards``) shows ``converged: true`` for every board (the fleet
computes it: commit + FPGA image + environment/config).

Two phases in one run, each a ``git push`` with the real git client to the same fleet and gateways
(``--phases`` picks them):

- ``firmware``: a release of the firmware alone (no ``fpga:``, no environment/config), from boards
  that run nothing (Commit null): the figure the issue-13 benchmark measured;
- ``full``: the next release, firmware (a new version) + ``fpga:`` a real iCE40 ``.bin`` (built once
  by :mod:`picofleet.firmware.circuits`, cached in build/benchmarks/) + ``environment:`` and
  ``config:`` values.

Each simulated gateway has its own httpx client (one connection), as real gateways do.
``--shared-client`` runs them all over one client, as the issue-13 run that measured 6.8 s did:
httpcore's pool then scans every connection on each request event (quadratic in the gateways), so
that figure mostly measured this process (``cpu_s_push_to_converged`` shows whose CPU it was).

Bytes are counted as received by the simulated gateways. Prints one JSON document: per phase
figures (with the CPU seconds of the fleet service, this process and the machine from push to
converged), goals, ratios.

    .venv/bin/python benchmarks/fleet_convergence.py [--gateways 200] [--boards 4] [--workers 1]
        [--phases firmware,full] [--shared-client]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fleet_common import boards_of, commit_release, fpga_bitstream, provision_gateways, push

from tests.helpers.fleet import FleetProcess

GOAL_CONVERGED_S = 60.0
PHASES = ("firmware", "full")
ENVIRONMENT = {"MODE": "lab", "SITE": "bench"}
CONFIG = {"RATE": "5"}


def cpu_seconds(fleet: FleetProcess) -> dict[str, float]:
    """CPU seconds (user + system) so far of the fleet service (its process and children: the git
    push's hooks, the reaper), of this process (the simulated gateways, the operator's polls) and
    of the whole machine (all cores, other work included)."""
    import psutil

    assert fleet.process is not None
    service = psutil.Process(fleet.process.pid)
    processes = [service, *service.children(recursive=True)]
    times = psutil.cpu_times()
    return {
        "fleet_service": sum(sum(p.cpu_times()[:2]) for p in processes),
        "simulated_gateways": time.process_time(),
        "machine_busy": sum(times) - times.idle - getattr(times, "iowait", 0.0),
    }


class SimulatedGateway:
    """One simulated gateway: long polls, downloads each asset once, reports its boards."""

    def __init__(self, client: httpx.AsyncClient, info: dict[str, Any], boards: int) -> None:
        self.client = client
        self.index = info["index"]
        self.etag = info["etag"]
        self.auth = {"Authorization": f"Bearer {info['key']}"}
        self.boards = boards
        self.cache: dict[str, int] = {}  # sha256 → size: the gateway's asset cache
        self.reset()

    def reset(self) -> None:
        """Zero the per-phase counters (the asset cache and the ETag are kept)."""
        self.asset_bytes = 0  # as received
        self.downloads = 0
        self.polls = 0
        self.retries = 0  # requests sent again after a transport error, as the real gateway does
        self.polling = asyncio.Event()
        self.answered_at: float | None = None  # the long poll that brought the new target
        self.downloaded_at: float | None = None
        self.reported_at: float | None = None

    async def download(self, asset: dict[str, Any]) -> None:
        """Stream one asset, check its size and sha256, and keep it in the cache."""
        digest, received = hashlib.sha256(), 0
        async with self.client.stream("GET", asset["url"], headers=self.auth) as response:
            assert response.status_code == 200, response.status_code
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        self.asset_bytes += received
        self.downloads += 1
        assert received == asset["size"], (received, asset["size"])
        assert digest.hexdigest() == asset["sha256"], "sha256 mismatch"
        self.cache[asset["sha256"]] = received

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request, sent again (at most twice) after a transport error: a pooled keep-alive
        connection can be closed by the server just as a request goes out."""
        for attempt in range(3):
            try:
                return await self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                self.retries += 1
        raise AssertionError("unreachable")

    async def run(self, commit: str) -> None:
        """Sync until this gateway has reported all its boards at ``commit`` with the target's FPGA
        image, environment and config applied."""
        while True:
            self.polling.set()
            self.polls += 1
            response = await self._send(
                "GET",
                "/v1/gateway/state",
                params={"wait": "30"},
                headers={**self.auth, "If-None-Match": self.etag},
                timeout=45,
            )
            if response.status_code == 304:
                continue
            assert response.status_code == 200, response.text
            self.answered_at = time.monotonic()
            self.etag = response.headers["etag"]
            target = response.json()["boards"]
            for board in target.values():
                for asset in (board["firmware"], board.get("fpga")):
                    if asset is not None and asset["sha256"] not in self.cache:
                        await self.download(asset)
            commits = {board["commit"] for board in target.values()}
            if commits != {commit}:
                continue  # not (yet) the release under test
            self.downloaded_at = time.monotonic()
            response = await self._send(
                "PUT",
                "/v1/gateway/state",
                json={"boards": boards_of(self.index, commit, self.boards, target)},
                headers=self.auth,
            )
            assert response.status_code == 200, response.text
            self.reported_at = time.monotonic()
            return


async def phase(
    name: str,
    fleet: FleetProcess,
    work: Path,
    commit: str,
    gateways: list[SimulatedGateway],
    operator: httpx.AsyncClient,
    total_boards: int,
    deadline: float,
) -> dict[str, Any]:
    """Push ``commit`` once every gateway's long poll is parked; wait until every board of the
    operator's board list is ``converged`` at it. The phase's figures."""
    for gateway in gateways:
        gateway.reset()
    tasks = [asyncio.create_task(g.run(commit)) for g in gateways]
    try:
        await asyncio.wait_for(asyncio.gather(*(g.polling.wait() for g in gateways)), 30)
        await asyncio.sleep(1.0)  # every long poll is parked at the fleet
        before = (await operator.get("/v1/fleets/bench/boards")).json()
        assert len(before) == total_boards and not any(b["Commit"] == commit for b in before), (
            "at the commit before its push"
        )

        cpu_before = cpu_seconds(fleet)
        push_started = time.monotonic()
        remote = await asyncio.to_thread(push, work, fleet.push_url("bench"))
        pushed = time.monotonic()
        assert f"release {commit[:12]} accepted" in remote, remote

        board_polls, at_commit_at = 0, None
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not converged before the deadline")
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            boards = (await operator.get("/v1/fleets/bench/boards")).json()
            board_polls += 1
            at_commit = sum(1 for b in boards if b["Commit"] == commit == b["target_commit"])
            if at_commit_at is None and len(boards) == total_boards and at_commit == total_boards:
                at_commit_at = time.monotonic()
            done = sum(1 for b in boards if b["converged"] and b["Commit"] == commit)
            if len(boards) == total_boards and done == total_boards:
                converged = time.monotonic()
                cpu_after = cpu_seconds(fleet)
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:
            task.cancel()

    release = fleet.releases("bench")[-1]
    assert release["commit"] == commit, (release["commit"], commit)
    entry = release["boards"]["pico2-ice"]
    sample = boards[0]
    fpga = entry.get("fpga")
    assets = entry["size"] + (fpga["size"] if fpga else 0)
    answered = [g.answered_at or 0.0 for g in gateways]
    received = sum(g.asset_bytes for g in gateways)
    downloads = sum(g.downloads for g in gateways)
    boards_per_gateway = total_boards // len(gateways)
    per_board = received / total_boards
    expected_per_board = assets / boards_per_gateway
    return {
        "release": commit[:12],
        "release_carries": {
            "firmware_bytes": entry["size"],
            "fpga_bytes": fpga["size"] if fpga else None,
            "fpga_kind": fpga["kind"] if fpga else None,
            "environment": sample["target_environment"],
            "config": sample["target_config"],
        },
        "push_s": round(pushed - push_started, 3),
        "push_to_converged_s": round(converged - pushed, 3),
        "push_to_all_at_commit_s": round((at_commit_at or converged) - pushed, 3),
        "push_to_first_long_poll_answer_s": round(min(answered) - pushed, 3),
        "push_to_last_long_poll_answer_s": round(max(answered) - pushed, 3),
        "push_to_last_download_done_s": round(max(g.downloaded_at or 0.0 for g in gateways) - pushed, 3),
        "push_to_last_gateway_report_s": round(max(g.reported_at or 0.0 for g in gateways) - pushed, 3),
        "asset_bytes_per_gateway": assets,
        "asset_bytes_received_total": received,
        "asset_downloads": downloads,
        "bytes_per_converged_board": round(per_board, 1),
        "asset_bytes_over_boards_per_gateway": round(expected_per_board, 1),
        "assets_once_per_gateway": downloads == len(gateways) * (2 if fpga else 1)
        and per_board == expected_per_board,
        "long_polls": sum(g.polls for g in gateways),
        "transport_retries": sum(g.retries for g in gateways),
        "operator_board_list_polls": board_polls,
        "cpu_s_push_to_converged": {
            name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before
        },
        "converged_vs_goal": round((converged - pushed) / GOAL_CONVERGED_S, 3),
        "goal_met": converged - pushed < GOAL_CONVERGED_S,
    }


async def scenario(
    fleet: FleetProcess,
    work: Path,
    phases: list[str],
    release: Callable[[str, str], str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Provision the gateways, then run each phase in order: ``{"provision_s", phase: figures}``."""
    deadline = time.monotonic() + args.deadline
    created = fleet.create_fleet("bench")
    started = time.perf_counter()
    infos = await provision_gateways(
        fleet.url,
        created["provisioning_key"],
        args.gateways,
        args.provision_concurrency,
        deadline,
        args.boards,
    )
    result: dict[str, Any] = {"provision_s": time.perf_counter() - started}
    total_boards = args.gateways * args.boards

    admin = {"Authorization": f"Bearer {fleet.token}"}
    async with contextlib.AsyncExitStack() as stack:
        operator = await stack.enter_async_context(
            httpx.AsyncClient(base_url=fleet.url, timeout=30, headers=admin)
        )
        if args.shared_client:  # the issue-13 run: one pool of gateways + 16 connections for all
            limits = httpx.Limits(
                max_connections=args.gateways + 16, max_keepalive_connections=args.gateways + 16
            )
            shared = await stack.enter_async_context(
                httpx.AsyncClient(base_url=fleet.url, timeout=30, limits=limits)
            )
            clients = [shared] * len(infos)
        else:  # as real gateways: each its own client and connection
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=fleet.url, timeout=30))
                for _ in infos
            ]
        gateways = [
            SimulatedGateway(client, info, args.boards) for client, info in zip(clients, infos, strict=True)
        ]
        for number, name in enumerate(phases):
            commit = await asyncio.to_thread(release, name, f"2.{number}.0")
            result[name] = await phase(name, fleet, work, commit, gateways, operator, total_boards, deadline)
    return result


def main() -> None:
    """Parse the options, run the phases and print the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="fleet service processes (--workers)")
    parser.add_argument("--provision-concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=300.0, help="for the whole scenario, seconds")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated, run in this order: firmware (firmware alone), full (firmware + FPGA"
        " image + environment/config); default both",
    )
    parser.add_argument(
        "--shared-client",
        action="store_true",
        help="all simulated gateways share one httpx client (one connection pool), as the issue-13"
        " run that measured 6.8 s did; its pool's bookkeeping grows with the connections and makes"
        " this process, not the fleet, the bottleneck. Default: one client per gateway",
    )
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or any(p not in PHASES for p in phases) or len(set(phases)) != len(phases):
        parser.error(f"--phases: a comma-separated list of {', '.join(PHASES)}, each once")

    fpga_build = None
    if "full" in phases:
        try:
            bitstream, fpga_build = fpga_bitstream()
        except Exception as error:  # the circuit builder's failure, said in one line
            sys.exit(f"fleet_convergence: no FPGA image: {str(error).splitlines()[0]}")

    with tempfile.TemporaryDirectory(prefix="pf-bench-fleet-") as tmp:
        work = Path(tmp) / "work"

        def release(name: str, version: str) -> str:
            """Commit the release of phase ``name`` (before its push; not timed)."""
            if name == "full":
                return commit_release(work, version, fpga=bitstream, environment=ENVIRONMENT, config=CONFIG)
            return commit_release(work, version)

        fleet = FleetProcess(Path(tmp) / "data", "--log-level", "warning", "--workers", str(args.workers))
        fleet.start()
        try:
            result = asyncio.run(
                asyncio.wait_for(scenario(fleet, work, phases, release, args), args.deadline + 60)
            )
        finally:
            fleet.stop()

    figures = {name: result[name] for name in phases}
    ratios: dict[str, Any] = {
        f"{name}_converged_vs_goal": figures[name]["converged_vs_goal"] for name in phases
    }
    if len(phases) == 2:
        ratios["full_vs_firmware_converged"] = round(
            figures["full"]["push_to_converged_s"] / figures["firmware"]["push_to_converged_s"], 3
        )
    print(
        json.dumps(
            {
                "benchmark": "fleet_convergence",
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "setup": {
                    "gateways": args.gateways,
                    "boards_per_gateway": args.boards,
                    "boards": args.gateways * args.boards,
                    "phases": phases,
                    "fpga_image": fpga_build and f"iCE40UP5K divide-by-16 counter .bin ({fpga_build})",
                    "provision_and_report_s": round(result["provision_s"], 2),
                    "long_poll_wait_s": 30,
                    "fleet_workers": args.workers,
                    "client": "one httpx client shared by all gateways"
                    if args.shared_client
                    else "one httpx client per gateway",
                },
                "figures": figures,
                "goals": {"push_to_converged_s_max": GOAL_CONVERGED_S},
                "ratios": ratios,
                "goal_met": all(figures[name]["goal_met"] for name in phases),
                "assets_once_per_gateway": all(figures[name]["assets_once_per_gateway"] for name in phases),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
