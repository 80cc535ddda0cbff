"""Fleet benchmarks (b) and (c): `git push` returning → all boards converged, and bytes per board.

Starts a real fleet service process on loopback and 200 simulated gateways in this process
(lightweight asyncio clients, not gateway processes), each with 4 virtual pico2-ice boards. Each
provisions, reports its boards with Commit null and long-polls ``GET /v1/gateway/state?wait=30``
with ``If-None-Match``. On a new target it downloads each firmware asset it has not downloaded yet
(once per gateway, like the real gateway's asset cache; sha256 verified) and reports its boards at
the target commit. The release is pushed with the real git client; converged = the operator API
(``GET /v1/fleets/<f>/boards``) shows every board at the pushed commit. Bytes are counted as
received by the simulated gateways. Prints one JSON document: figures, goals, ratios.

    .venv/bin/python benchmarks/fleet_convergence.py [--gateways 200] [--boards 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fleet_common import boards_of, make_release_repo, provision_gateways, push

from tests.helpers.fleet import FleetProcess

GOAL_CONVERGED_S = 60.0


class SimulatedGateway:
    """One simulated gateway: long polls, downloads each asset once, reports its boards."""

    def __init__(self, client: httpx.AsyncClient, info: dict[str, Any], boards: int) -> None:
        self.client = client
        self.index = info["index"]
        self.etag = info["etag"]
        self.auth = {"Authorization": f"Bearer {info['key']}"}
        self.boards = boards
        self.cache: dict[str, int] = {}  # sha256 → size: the gateway's asset cache
        self.asset_bytes = 0  # as received
        self.downloads = 0
        self.polls = 0
        self.retries = 0  # requests sent again after a transport error, as the real gateway does
        self.polling = asyncio.Event()
        self.answered_at: float | None = None  # the long poll that brought the new target
        self.downloaded_at: float | None = None
        self.reported_at: float | None = None

    async def download(self, firmware: dict[str, Any]) -> None:
        digest, received = hashlib.sha256(), 0
        async with self.client.stream("GET", firmware["url"], headers=self.auth) as response:
            assert response.status_code == 200, response.status_code
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        self.asset_bytes += received
        self.downloads += 1
        assert received == firmware["size"], (received, firmware["size"])
        assert digest.hexdigest() == firmware["sha256"], "sha256 mismatch"
        self.cache[firmware["sha256"]] = received

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
        """Sync until this gateway has reported all its boards at ``commit``."""
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
                firmware = board["firmware"]
                if firmware is not None and firmware["sha256"] not in self.cache:
                    await self.download(firmware)
            commits = {board["commit"] for board in target.values()}
            if commits != {commit}:
                continue  # not (yet) the release under test
            self.downloaded_at = time.monotonic()
            response = await self._send(
                "PUT",
                "/v1/gateway/state",
                json={"boards": boards_of(self.index, commit, self.boards)},
                headers=self.auth,
            )
            assert response.status_code == 200, response.text
            self.reported_at = time.monotonic()
            return


async def scenario(fleet: FleetProcess, work: Path, commit: str, args: argparse.Namespace) -> dict[str, Any]:
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
    provision_s = time.perf_counter() - started
    total_boards = args.gateways * args.boards

    limits = httpx.Limits(max_connections=args.gateways + 16, max_keepalive_connections=args.gateways + 16)
    admin = {"Authorization": f"Bearer {fleet.token}"}
    async with (
        httpx.AsyncClient(base_url=fleet.url, timeout=30, limits=limits) as client,
        httpx.AsyncClient(base_url=fleet.url, timeout=30, headers=admin) as operator,
    ):
        gateways = [SimulatedGateway(client, info, args.boards) for info in infos]
        tasks = [asyncio.create_task(g.run(commit)) for g in gateways]
        await asyncio.wait_for(asyncio.gather(*(g.polling.wait() for g in gateways)), 30)
        await asyncio.sleep(1.0)  # every long poll is parked at the fleet
        before = (await operator.get("/v1/fleets/bench/boards")).json()
        assert len(before) == total_boards and all(b["Commit"] is None for b in before)

        push_started = time.monotonic()
        remote = await asyncio.to_thread(push, work, fleet.push_url("bench"))
        pushed = time.monotonic()
        assert f"release {commit[:12]} accepted" in remote, remote

        board_polls = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not converged within the {args.deadline} s deadline")
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            boards = (await operator.get("/v1/fleets/bench/boards")).json()
            board_polls += 1
            at_commit = sum(1 for b in boards if b["Commit"] == commit and b["target_commit"] == commit)
            if len(boards) == total_boards and at_commit == total_boards:
                converged = time.monotonic()
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    release = fleet.releases("bench")[-1]["boards"]["pico2-ice"]
    total_bytes = sum(g.asset_bytes for g in gateways)
    last_report = max(g.reported_at or 0.0 for g in gateways)
    answered = [g.answered_at or 0.0 for g in gateways]
    return {
        "provision_s": provision_s,
        "push_s": pushed - push_started,
        "converged_s": converged - pushed,
        "last_report_s": last_report - pushed,
        "first_answer_s": min(answered) - pushed,
        "last_answer_s": max(answered) - pushed,
        "last_download_s": max(g.downloaded_at or 0.0 for g in gateways) - pushed,
        "operator_polls": board_polls,
        "asset_size": release["size"],
        "asset_bytes_received": total_bytes,
        "downloads": sum(g.downloads for g in gateways),
        "long_polls": sum(g.polls for g in gateways),
        "transport_retries": sum(g.retries for g in gateways),
        "total_boards": total_boards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="fleet service processes (--workers)")
    parser.add_argument("--provision-concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=300.0, help="for the whole scenario, seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pf-bench-fleet-") as tmp:
        work = Path(tmp) / "work"
        commit, _ = make_release_repo(work)
        fleet = FleetProcess(
            Path(tmp) / "data", "--log-level", "warning", "--workers", str(args.workers)
        ).start()
        try:
            result = asyncio.run(asyncio.wait_for(scenario(fleet, work, commit, args), args.deadline + 60))
        finally:
            fleet.stop()

    per_board = result["asset_bytes_received"] / result["total_boards"]
    expected_per_board = result["asset_size"] / args.boards
    print(
        json.dumps(
            {
                "benchmark": "fleet_convergence",
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "setup": {
                    "gateways": args.gateways,
                    "boards_per_gateway": args.boards,
                    "boards": result["total_boards"],
                    "release": commit[:12],
                    "asset_bytes": result["asset_size"],
                    "provision_and_report_s": round(result["provision_s"], 2),
                    "long_poll_wait_s": 30,
                    "fleet_workers": args.workers,
                },
                "figures": {
                    "push_s": round(result["push_s"], 3),
                    "push_to_converged_s": round(result["converged_s"], 3),
                    "push_to_first_long_poll_answer_s": round(result["first_answer_s"], 3),
                    "push_to_last_long_poll_answer_s": round(result["last_answer_s"], 3),
                    "push_to_last_download_done_s": round(result["last_download_s"], 3),
                    "push_to_last_gateway_report_s": round(result["last_report_s"], 3),
                    "asset_bytes_received_total": result["asset_bytes_received"],
                    "asset_downloads": result["downloads"],
                    "bytes_per_converged_board": round(per_board, 1),
                    "asset_size_over_boards_per_gateway": round(expected_per_board, 1),
                    "long_polls": result["long_polls"],
                    "transport_retries": result["transport_retries"],
                    "operator_board_list_polls": result["operator_polls"],
                },
                "goals": {"push_to_converged_s_max": GOAL_CONVERGED_S},
                "ratios": {
                    "converged_vs_goal": round(result["converged_s"] / GOAL_CONVERGED_S, 3),
                    "bytes_per_board_vs_asset_size": round(per_board / result["asset_size"], 4),
                },
                "goal_met": result["converged_s"] < GOAL_CONVERGED_S,
                "assets_once_per_gateway": result["downloads"] == args.gateways
                and per_board == expected_per_board,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
