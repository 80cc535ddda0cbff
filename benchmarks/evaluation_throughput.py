"""Evaluation throughput benchmark: pulse counts per second over 16 and 64 reserved virtual boards.

Runs a real gateway (`picofleet gateway --simulate N`) whose virtual pico2-ice boards run the
pulse-count firmware with the FPGA timing model (PICOFLEET_SIM_FPGA=timing: configuring takes
the up5k's configure time, a count takes exactly its window; the pulse count is not a
measurement). Every evaluation uses a bitstream the boards have not seen, so every one is sent
to its board: variants of one real divide-by-16 counter (yosys + nextpnr-ice40 + icepack), each
with its own comment in the ``.bin`` header — valid bitstreams (firmware/formats/bitstream.py) with
distinct sha256s and the same circuit.

For each board count it measures, in the same gateway:

* ``device_s_per_eval``: the time one evaluation holds a board, measured on one board alone
  (the steady interval between its results, bitstreams sent while the previous one counts);
  the device-bound limit is ``boards / device_s_per_eval``;
* ``evaluations_per_s``: one request, mode ``any``, ``rounds`` bitstreams per board, counted
  once every board has delivered its first result (the boards all busy) until the last result;
  ``ratio_to_limit`` = that / the limit (goal >= 0.95). The cold start — every board receiving
  its first bitstream at once, which nothing can overlap with counting — is reported apart:
  ``first_result_on_every_board_s``, and ``evaluations_per_s_end_to_end`` / ``ratio_end_to_end``
  from the POST to the last result;
* ``board_s_per_eval`` p50/p99: intervals between consecutive results of a board during that
  request — the figure to compare with iCEFARM's published 1.87 s per circuit at a 1 s window;
* ``gateway_cpu_cores_in_batch`` / ``rack_cpu_cores_in_batch``: CPU used during that request.
  The simulator runs every virtual board in one Python process (the rack) and its firmware reads
  the serial stream in 64-byte USB packets: ~10 ms of CPU per 104 KB bitstream received. When
  the rack nears one core (its GIL) the simulated boards, not the gateway, set the pace;
* ``latency`` p50/p99: one bitstream per request, one request at a time per board, on every
  board at once: from the POST to its result (upload excluded: the sha256 is known).

    .venv/bin/python benchmarks/evaluation_throughput.py [--boards 16,64] [--window-ms 1000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from picofleet.plugins.virtual.fpga import configure_seconds  # noqa: E402
from tests.helpers.fpga import build_counter, missing_tools  # noqa: E402
from tests.helpers.gateway import GatewayProcess, wait_for  # noqa: E402

ICEFARM_S_PER_CIRCUIT = 1.87
"""iCEFARM's published evaluation time per circuit at a 1 s window (the reference)."""
GOAL_RATIO = 0.95
CLOCK_HZ = 48_000_000
NAME = "bench"
LOG_LEVEL = "warning"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Variants:
    """Distinct valid ``.bin`` files of one circuit: a different comment in each header."""

    def __init__(self, packed: bytes) -> None:
        assert packed[:4] == b"\xff\x00\x00\xff", "expected icepack's empty header"
        self.body = packed[2:]
        self.next = 0

    def take(self, count: int) -> list[bytes]:
        made = [
            b"\xff\x00" + f"bench variant {self.next + i}".encode() + b"\x00" + self.body
            for i in range(count)
        ]
        self.next += count
        return made


class Bench:
    """One gateway with ``boards`` reserved virtual boards."""

    def __init__(self, data: Path, boards: int, window_ms: int) -> None:
        self.boards = boards
        self.window_ms = window_ms
        self.gateway = GatewayProcess(
            data, "--simulate", str(boards), "--log-level", LOG_LEVEL, env={"PICOFLEET_SIM_FPGA": "timing"}
        )
        self.http: httpx.Client | None = None
        self.token = ""
        self.serials: list[str] = []

    def start(self) -> float:
        """Start, reserve every board and wait until they run the firmware; seconds it took."""
        started = time.perf_counter()
        self.gateway.start()
        self.gateway.wait_devices(
            lambda d: len(d) == self.boards and all(x["Status"] == "Idle" for x in d),
            120,
            f"{self.boards} idle boards",
            interval=0.1,
        )
        self.http = httpx.Client(base_url=self.gateway.url, timeout=httpx.Timeout(60, read=None))
        body = {
            "name": NAME,
            "kind": "pulsecount",
            "count": self.boards,
            "args": {"clock_hz": CLOCK_HZ, "window_ms": self.window_ms},
        }
        answer = self.http.post("/v1/reservations", json=body)
        assert answer.status_code == 201, answer.text
        self.token = answer.json()["token"]
        self.serials = [r["serial"] for r in answer.json()["reservations"]]

        def ready() -> bool:
            listed = self.http.get("/v1/reservations", params={"name": NAME}).json()["reservations"]
            return sum(r["state"] == "ready" for r in listed) == self.boards

        wait_for(ready, 120, "every board ready", interval=0.1)
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        self.gateway.stop()

    def upload(self, bitstreams: list[bytes]) -> list[str]:
        shas = []
        for data in bitstreams:
            answer = self.http.put("/v1/bitstreams", content=data)
            assert answer.status_code == 201, answer.text
            shas.append(answer.json()["sha256"])
        return shas

    def evaluate(
        self, shas: list[str], mode: str, serials: list[str] | None = None, http: httpx.Client | None = None
    ) -> Iterator[tuple[float, dict[str, Any]]]:
        """Stream one evaluation: (arrival time, line) per result line."""
        body: dict[str, Any] = {"name": NAME, "mode": mode, "bitstreams": [{"sha256": s} for s in shas]}
        if serials is not None:
            body["serials"] = serials
        headers = {"Authorization": f"Bearer {self.token}"}
        with (http or self.http).stream("POST", "/v1/evaluations", json=body, headers=headers) as response:
            assert response.status_code == 200, response.read()
            for text in response.iter_lines():
                if text.strip():
                    line = json.loads(text)
                    if "error" in line:
                        raise AssertionError(f"an evaluation failed: {line}")
                    if not line.get("done"):
                        yield time.perf_counter(), line

    def one_board_alone(self, shas: list[str]) -> float:
        """Seconds per evaluation on one board with nothing else running (steady state)."""
        arrivals = [at for at, _ in self.evaluate(shas, "each", serials=self.serials[:1])]
        return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)

    def batch(self, shas: list[str]) -> tuple[float, dict[str, list[float]]]:
        """All ``shas`` in one request, mode any: (seconds, each board's result times from the POST)."""
        started = time.perf_counter()
        by_board: dict[str, list[float]] = defaultdict(list)
        for at, line in self.evaluate(shas, "any"):
            by_board[line["serial"]].append(at - started)
        elapsed = time.perf_counter() - started
        assert sum(map(len, by_board.values())) == len(shas), "results missing"
        return elapsed, by_board

    def latencies(self, shas_per_board: list[list[str]]) -> list[float]:
        """Every board evaluates its bitstreams one request at a time, all boards at once."""
        measured: list[float] = []
        lock = threading.Lock()

        def client(serial: str, shas: list[str]) -> None:
            with httpx.Client(base_url=self.gateway.url, timeout=httpx.Timeout(60, read=None)) as http:
                for sha in shas:
                    started = time.perf_counter()
                    for at, _ in self.evaluate([sha], "each", serials=[serial], http=http):
                        with lock:
                            measured.append(at - started)

        threads = [
            threading.Thread(target=client, args=(serial, shas))
            for serial, shas in zip(self.serials, shas_per_board, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return measured


def steady_rate(by_board: dict[str, list[float]]) -> tuple[float, float]:
    """(evaluations/s once every board delivered its first result, that moment in seconds)."""
    warm = max(times[0] for times in by_board.values())
    end = max(times[-1] for times in by_board.values())
    after = sum(1 for times in by_board.values() for at in times if at > warm)
    return after / (end - warm), warm


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """User + system CPU seconds of each group of processes so far."""
    return {name: sum(sum(process.cpu_times()[:2]) for process in group) for name, group in processes.items()}


def run_one(data: Path, boards: int, window_ms: int, rounds: int, variants: Variants, size: int) -> dict:
    bench = Bench(data, boards, window_ms)
    try:
        ready_s = bench.start()
        alone = bench.upload(variants.take(5))
        batch = bench.upload(variants.take(boards * rounds))
        closed_loop = bench.upload(variants.take(boards * 2))
        device_s = bench.one_board_alone(alone)
        gateway_process = psutil.Process(bench.gateway.pid)
        processes = {"gateway": [gateway_process], "rack": gateway_process.children(recursive=True)}
        cpu_before = cpu_seconds(processes)
        batch_s, by_board = bench.batch(batch)
        cpu_used = {name: used - cpu_before[name] for name, used in cpu_seconds(processes).items()}
        latencies = bench.latencies([closed_loop[i::boards] for i in range(boards)])
    finally:
        bench.stop()
    limit = boards / device_s
    steady, warm_s = steady_rate(by_board)
    end_to_end = len(batch) / batch_s
    intervals = [b - a for times in by_board.values() for a, b in itertools.pairwise(times)]
    return {
        "boards": boards,
        "window_ms": window_ms,
        "start_reserve_ready_s": round(ready_s, 2),
        "device_s_per_eval_model": round(configure_seconds(size) + window_ms / 1000, 4),
        "device_s_per_eval_measured_one_board": round(device_s, 4),
        "device_bound_limit_per_s": round(limit, 3),
        "evaluations": len(batch),
        "evaluations_per_s": round(steady, 3),
        "ratio_to_limit": round(steady / limit, 4),
        "first_result_on_every_board_s": round(warm_s, 3),
        "batch_s": round(batch_s, 3),
        "evaluations_per_s_end_to_end": round(end_to_end, 3),
        "ratio_end_to_end": round(end_to_end / limit, 4),
        "gateway_cpu_cores_in_batch": round(cpu_used["gateway"] / batch_s, 2),
        "rack_cpu_cores_in_batch": round(cpu_used["rack"] / batch_s, 2),
        "board_s_per_eval_p50": round(statistics.median(intervals), 4),
        "board_s_per_eval_p99": round(percentile(intervals, 0.99), 4),
        "latency_requests": len(latencies),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p99_s": round(percentile(latencies, 0.99), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="16,64", help="comma-separated board counts (default 16,64)")
    parser.add_argument(
        "--window-ms", type=int, default=1000, help="counting window (default 1000, as iCEFARM)"
    )
    parser.add_argument("--rounds", type=int, default=6, help="bitstreams per board in the batch (default 6)")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        sys.exit(f"evaluation_throughput: {', '.join(missing)} not installed (./dev setup installs them)")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pf-bench-eval-") as tmp:
        packed = build_counter(Path(tmp) / "counter", 16).bin.read_bytes()
        variants = Variants(packed)
        size = len(variants.take(1)[0])
        runs = [
            run_one(Path(tmp) / f"data-{count}", count, args.window_ms, args.rounds, variants, size)
            for count in (int(part) for part in args.boards.split(","))
        ]
    ratios = {f"ratio_{run['boards']}_boards": run["ratio_to_limit"] for run in runs}
    print(
        json.dumps(
            {
                "benchmark": "evaluation_throughput",
                "fpga_model": "timing (PICOFLEET_SIM_FPGA=timing)",
                "runs": runs,
                "reference": {
                    "icefarm_s_per_circuit_at_1s_window": ICEFARM_S_PER_CIRCUIT,
                    "note": "compare board_s_per_eval (a board's time per evaluation) at --window-ms 1000",
                },
                "goal": {"ratio_to_limit_at_least": GOAL_RATIO},
                "ratios": ratios,
                "goals_met": all(value >= GOAL_RATIO for value in ratios.values()),
                "total_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
