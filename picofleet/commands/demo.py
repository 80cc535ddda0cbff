"""`picofleet demo`: a gateway with four virtual pico2-ice boards, ready for curl."""

from __future__ import annotations

import argparse
import sys

from picofleet.gateway.config import ConfigError

from .gateway import add_gateway_flags, config_from_args, serve

DEMO_DATA = "demo-data"


def run(args: argparse.Namespace) -> int:
    """Run the demo: the gateway on :1337 with 4 virtual pico2-ice boards (data in ./demo-data)."""
    try:
        config = config_from_args(args, data=DEMO_DATA, simulate="4", host="127.0.0.1")
    except ConfigError as error:
        print(f"picofleet demo: {error}", file=sys.stderr)
        return 2
    base = f"localhost:{config.port}"
    print(
        f"""
picofleet demo: a gateway with virtual boards, data in {config.data}/ (Ctrl-C stops it). Try:

  curl -i {base}/v1/devices
  curl -i -H "Content-Type: application/json" -X PUT --data '{{"targetStatus":"Paused"}}' {base}/v1/enm/status
  curl -i {base}/v1/enm/status
  curl -i -H "Content-Type: application/json" -X PUT --data '{{"targetStatus":"Running"}}' \\
       {base}/v1/enm/status
  picofleet sim list --data {config.data}          # the virtual rack; also: unplug/plug SERIAL
""",
        flush=True,
    )
    return serve(config)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet demo`."""
    parser = subparsers.add_parser(
        "demo", help="run the demo (gateway + 4 virtual boards)", description=run.__doc__
    )
    add_gateway_flags(parser)
    parser.set_defaults(run=run)
