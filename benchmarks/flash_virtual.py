"""Flash benchmark: a 1 MB image (2 MB of UF2) onto a virtual board, against the pty's raw throughput.

Measures in one run (1) how fast bytes cross a pseudo-terminal pair in raw mode — the transport a
virtual board's firmware talks over — and (2) the whole flash through the gateway's pipeline on
a real gateway process: POST to Idle with the new version, and its steps (to the bootloader, the
write, back in the new firmware). The ratio compares the flash with pushing the UF2's bytes
through the pty: the flash path writes to the bootloader drive instead, so the ratio mostly
shows the fixed costs (reboots, identify), which a real board has too.

    .venv/bin/python benchmarks/flash_virtual.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.boards import app_uf2  # noqa: E402
from tests.helpers.gateway import GatewayProcess, wait_for  # noqa: E402

IMAGE_BYTES = 1024 * 1024


def pty_throughput(total: int = 8 * 1024 * 1024) -> float:
    """Bytes per second through a raw pty pair (master → slave)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    chunk = os.urandom(64 * 1024)
    received = 0

    def reader() -> None:
        nonlocal received
        while received < total:
            received += len(os.read(slave, 1 << 16))

    thread = threading.Thread(target=reader)
    started = time.perf_counter()
    thread.start()
    sent = 0
    while sent < total:
        sent += os.write(master, chunk[: min(len(chunk), total - sent)])
    thread.join()
    elapsed = time.perf_counter() - started
    os.close(master)
    os.close(slave)
    return total / elapsed


def flash_once(gateway: GatewayProcess, serial: str, version: str) -> dict[str, float]:
    image = app_uf2(version, size=IMAGE_BYTES)
    marks: dict[str, float] = {}
    started = time.perf_counter()
    response = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash",
        content=image,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 202, response.text

    def done() -> bool:
        device = gateway.get(f"/v1/devices/{serial}").json()
        marks.setdefault(device["Status"], time.perf_counter() - started)
        return device["Status"] == "Idle" and device["FirmwareVersion"] == f"picofleet-app {version}"

    wait_for(done, 60, "the flash", interval=0.002)
    total = time.perf_counter() - started
    return {
        "total_s": total,
        "uf2_bytes": len(image),
        "to_flashing_s": marks.get("Flashing", float("nan")),
        "to_starting_s": marks.get("Starting", float("nan")),
    }


def seen_median(values: Iterable[float]) -> float | None:
    """The median of the runs that saw a status (NaN: the 2 ms poll missed it; the Flashing step of
    a virtual board lasts some 30 ms), rounded; ``None`` when no run saw it."""
    seen = [value for value in values if not math.isnan(value)]
    return round(statistics.median(seen), 3) if seen else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    throughput = pty_throughput()
    with tempfile.TemporaryDirectory(prefix="pf-flash-") as tmp:
        gateway = GatewayProcess(Path(tmp) / "data", "--simulate", "1", "--log-level", "warning").start()
        try:
            serial = gateway.wait_devices(lambda d: len(d) == 1 and d[0]["Status"] == "Idle", 20, "a board")[
                0
            ]["LocalUUID"]
            runs = [flash_once(gateway, serial, f"2.0.{run}") for run in range(args.runs)]
        finally:
            gateway.stop()
    uf2_bytes = runs[0]["uf2_bytes"]
    flash_s = statistics.median(run["total_s"] for run in runs)
    through_pty_s = uf2_bytes / throughput
    figures = {
        "image_bytes": IMAGE_BYTES,
        "uf2_bytes": uf2_bytes,
        "runs": args.runs,
        "flash_median_s": round(flash_s, 3),
        "flash_min_s": round(min(run["total_s"] for run in runs), 3),
        "to_flashing_median_s": seen_median(run["to_flashing_s"] for run in runs),
        "to_starting_median_s": seen_median(run["to_starting_s"] for run in runs),
        "flashing_seen_runs": sum(1 for run in runs if not math.isnan(run["to_flashing_s"])),
        "pty_raw_mb_per_s": round(throughput / 1e6, 1),
        "uf2_through_pty_s": round(through_pty_s, 4),
        "flash_effective_mb_per_s": round(uf2_bytes / flash_s / 1e6, 2),
    }
    print(
        json.dumps(
            {
                "benchmark": "flash_virtual",
                "figures": figures,
                "ratios": {"flash_vs_uf2_through_pty": round(flash_s / through_pty_s, 1)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
