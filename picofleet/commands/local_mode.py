"""`picofleet local-mode`: put a board in local mode, or back to following its fleet.

    picofleet local-mode --gateway URL --device UUID on|off [--json]

``PUT URL/v1/devices/UUID/local-mode {"LocalMode": true|false}`` (docs/api.md, "Local mode"). In
local mode the gateway's fleet sync leaves the board alone: it keeps what the operator flashed
(``picofleet flash --local-mode``). ``off`` hands it back to the fleet: the gateway flashes it with
its fleet's release at once, if it runs something else.

Prints ``NAME (UUID): local mode on|off`` (or the device record with ``--json``); exit 1 with one
line ``picofleet local-mode: <reason>`` when the gateway refuses (an unknown device) or cannot be
reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import quote

import httpx

from picofleet.client import device_record, error_of
from picofleet.commands.console import add_gateway_flag


def _fail(reason: str) -> int:
    print(f"picofleet local-mode: {' '.join(reason.split())}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Put a board in local mode (``on``: the fleet leaves it alone) or back to following its fleet
    (``off``: the gateway flashes it with its fleet's release at once)."""
    on = args.state == "on"
    url = f"{args.gateway.rstrip('/')}/v1/devices/{quote(args.device, safe='')}/local-mode"
    try:
        response = httpx.put(url, json={"LocalMode": on}, timeout=30)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return _fail(f"cannot talk to the gateway at {args.gateway}: {error or type(error).__name__}")
    if response.status_code != 200:
        return _fail(f"{error_of(response)} (HTTP {response.status_code})")
    try:
        record = device_record(response)
    except ValueError as error:
        return _fail(str(error))
    if args.json:
        print(json.dumps(record))
        return 0
    name = record.get("Name") or args.device
    state = "on" if record.get("LocalMode") else "off"
    follows = "" if on else f" (follows its target {record.get('TargetCommit') or '(none)'})"
    print(f"{name} ({record.get('LocalUUID', args.device)}): local mode {state}{follows}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet local-mode`."""
    parser = subparsers.add_parser(
        "local-mode",
        help="put a board in local mode (the fleet leaves it alone) or back to following its fleet",
        description=run.__doc__,
    )
    add_gateway_flag(parser)
    parser.add_argument(
        "--device", required=True, metavar="UUID", help="the board's LocalUUID (USB serial) or ResinUUID"
    )
    parser.add_argument("state", choices=("on", "off"), help="on: local mode; off: follow the fleet again")
    parser.add_argument("--json", action="store_true", help="print the device record as JSON")
    parser.set_defaults(run=run)
