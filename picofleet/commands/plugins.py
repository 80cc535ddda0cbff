"""`picofleet plugins`: list board plugins, their versions, board types and hooks."""

from __future__ import annotations

import argparse
import json
import sys

from picofleet.common.errors import ConfigError
from picofleet.gateway.config import load_config
from picofleet.gateway.plugin_manager import load_plugins


def run(args: argparse.Namespace) -> int:
    """List the plugins of the `picofleet` entry-point group as the gateway would load them."""
    try:
        config = load_config({}, config_file=args.config_file)
    except ConfigError as error:
        print(f"picofleet plugins: {error}", file=sys.stderr)
        return 2
    plugins = load_plugins(config.disable_plugins)
    if args.json:
        print(json.dumps([info.as_json() for info in plugins.infos], indent=2))
        return 0
    for info in plugins.infos:
        print(f"{info.name} {info.version} [{info.status}] ({info.module})")
        if info.error:
            print(f"    error: {info.error}")
        if info.board_types:
            print(f"    board types: {', '.join(info.board_types)}")
        if info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet plugins`."""
    parser = subparsers.add_parser("plugins", help="list board plugins", description=run.__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--config",
        dest="config_file",
        default=None,
        help="the gateway's YAML file (for disable_plugins); env PICOFLEET_CONFIG",
    )
    parser.set_defaults(run=run)
