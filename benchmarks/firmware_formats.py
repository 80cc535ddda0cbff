"""Firmware formats benchmark: UF2 parse+validate throughput, iCE40 packing and validation times.

Prints one JSON document:

* ``uf2``: :func:`picofleet.firmware.formats.uf2.read_uf2` on a UF2 built with ``from_binary`` (16 MB by
  default: 8 MiB of random payload in 256-byte blocks), in MB/s of file read and validated;
* ``ice40``: the divide-by-16 counter of docs/hardware.md built with yosys + nextpnr-ice40, then
  ``.asc`` → ``.bin`` with :func:`picofleet.firmware.formats.bitstream.pack_asc` versus running
  ``icepack IN OUT`` directly, in the same run (median of N, and the ratio), plus the time of
  :func:`read_bin` and :func:`read_asc` (validation). Skipped, with the reason, without the tools.

    .venv/bin/python benchmarks/firmware_formats.py [--uf2-mb 16] [--repeat 5] [--pack-runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from picofleet.firmware.formats import bitstream, uf2  # noqa: E402
from tests.helpers.fpga import build_counter, missing_tools  # noqa: E402


def timings(action: Callable[[], object], runs: int) -> list[float]:
    """Seconds taken by each of ``runs`` calls of ``action`` (after one warm-up call)."""
    action()
    result = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        result.append(time.perf_counter() - started)
    return result


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 3),
        "min_ms": round(min(values) * 1000, 3),
        "max_ms": round(max(values) * 1000, 3),
    }


def bench_uf2(size_mb: int, repeat: int) -> dict[str, Any]:
    payload = os.urandom(size_mb * 1024 * 1024 // 2)  # a UF2 block carries 256 of its 512 bytes
    data = uf2.from_binary(payload, 0x10000000, uf2.RP2350_ARM_S)
    parse = timings(lambda: uf2.read_uf2(data), repeat)
    return {
        "file_bytes": len(data),
        "blocks": len(data) // uf2.BLOCK_SIZE,
        "runs": repeat,
        "parse_validate": summary_ms(parse),
        "parse_validate_mb_per_s": round(len(data) / 1e6 / statistics.median(parse), 1),
        "parse_validate_mb_per_s_best": round(len(data) / 1e6 / min(parse), 1),
    }


def bench_ice40(runs: int) -> dict[str, Any]:
    missing = missing_tools()
    if missing:
        return {"skipped": f"{', '.join(missing)} not installed (Debian yosys, nextpnr-ice40, fpga-icestorm)"}
    with tempfile.TemporaryDirectory(prefix="picofleet-bench-") as temp:
        directory = Path(temp)
        started = time.perf_counter()
        build = build_counter(directory / "counter")
        build_s = time.perf_counter() - started
        text = build.asc.read_text()
        raw_bin = build.bin.read_bytes()
        out = directory / "direct.bin"

        def icepack_direct() -> None:
            subprocess.run(["icepack", str(build.asc), str(out)], check=True, timeout=60)

        # interleaved, so both see the same machine load
        pack, direct = [], []
        pack_asc = lambda: bitstream.pack_asc(text)  # noqa: E731
        icepack_direct()
        pack_asc()
        for _ in range(runs):
            direct += timings(icepack_direct, 1)
            pack += timings(pack_asc, 1)
        identical = bitstream.pack_asc(text) == out.read_bytes() == raw_bin
        read_bin = timings(lambda: bitstream.read_bin(raw_bin), runs)
        read_asc = timings(lambda: bitstream.read_asc(text), runs)
    return {
        "design": "divide-by-16 counter, CLK pin 35 -> ICE_27 pin 27 (up5k, sg48)",
        "build_s": round(build_s, 2),
        "asc_bytes": len(text.encode()),
        "bin_bytes": len(raw_bin),
        "runs": runs,
        "pack_asc": summary_ms(pack),
        "icepack_direct": summary_ms(direct),
        "pack_asc_over_icepack": round(statistics.median(pack) / statistics.median(direct), 2),
        "byte_identical": identical,
        "validate_bin": summary_ms(read_bin),
        "validate_asc": summary_ms(read_asc),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uf2-mb", type=int, default=16, help="size of the UF2 file in MB (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="UF2 parse runs (default 5)")
    parser.add_argument("--pack-runs", type=int, default=20, help="packing/validation runs (default 20)")
    args = parser.parse_args()
    result = {
        "uf2": bench_uf2(args.uf2_mb, args.repeat),
        "ice40": bench_ice40(args.pack_runs),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
