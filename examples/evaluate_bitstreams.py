"""Count the pulses of iCE40 bitstreams on two boards of a picofleet gateway (docs/evaluation.md).

    python examples/evaluate_bitstreams.py [--gateway URL] [--name CLIENT] FILE...

Checks every file first (a missing or invalid one ends the program before any board is
reserved), reserves two boards (real pico2-ice boards, or the virtual ones of `picofleet gateway
--simulate 2`), counts every file on both at a 1 MHz clock for 10 ms, prints each result as it
arrives, then ends the reservations.
"""

from __future__ import annotations

import argparse
import sys

from picofleet.client import ClientError, PulseCountClient, load_bitstreams


def main() -> int:
    """Reserve, evaluate every file on every board, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:1337")
    parser.add_argument("--name", default="example-researcher")
    parser.add_argument("files", nargs="+", metavar="FILE", help=".asc or .bin bitstreams")
    options = parser.parse_args()

    try:
        bitstreams = load_bitstreams(options.files)  # read and checked before any board is reserved
        # `with`: the reservations end when the block does (and at exit, should the program die)
        with PulseCountClient(options.gateway, options.name) as client:
            client.reserve(2, args={"clock_hz": 1_000_000, "window_ms": 10})  # returns once ready
            print(f"reserved {', '.join(client.serials())}")
            failed = 0
            for result in client.evaluate(bitstreams):  # every file on every reserved board
                if result.ok:
                    print(f"{result.serial}  {result.label}: {result.pulses} pulses")
                else:
                    failed += 1
                    print(f"{result.serial}  {result.label}: failed: {result.error}")
    except ClientError as error:  # a bad file, unreachable gateway, refused reservation...
        print(f"evaluate_bitstreams: {error}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
