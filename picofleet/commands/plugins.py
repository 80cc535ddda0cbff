"""`picofleet plugins`: list board plugins, their versions, board types and hooks."""

from __future__ import annotations

import argparse
import json
import os

from picofleet.gateway.plugin_manager import load_plugins


def run(args: argparse.Namespace) -> int:
    """List the plugins of the `picofleet` entry-point group as the gateway would load them."""
    disabled = [
        name.strip() for name in os.environ.get("PICOFLEET_DISABLE_PLUGINS", "").split(",") if name.strip()
    ]
    plugins = load_plugins(disabled)
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
    parser.set_defaults(run=run)
