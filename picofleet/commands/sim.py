"""`picofleet sim`: look at and handle the virtual boards of a running gateway (``--simulate``).

    picofleet sim list [--data DIR] [--json]
    picofleet sim unplug SERIAL      pull a board's USB cable
    picofleet sim plug SERIAL        plug it back in
    picofleet sim bootsel SERIAL     hold BOOTSEL and reset: the board enters its UF2 bootloader
    picofleet sim add BOARD_TYPE     put a new board (rp2040, rp2350, pico2-ice) in the next slot

DIR is the gateway's data directory (default: $PICOFLEET_DATA or /data); the rack of virtual
boards keeps its state and control socket in DIR/virtual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from picofleet.plugins.virtual.control import RackUnavailable, rack_request

ACTIONS = ("unplug", "plug", "bootsel")


def _fail(reason: str) -> int:
    print(f"picofleet sim: {reason}", file=sys.stderr)
    return 1


def _describe(board: dict) -> str:
    firmware = board.get("firmware")
    if board.get("state") == "bootloader":
        firmware_text = "bootloader"
    elif firmware:
        firmware_text = f"{firmware.get('name')} {firmware.get('version')}"
    elif board.get("state") == "application":
        firmware_text = "unknown firmware"
    else:
        firmware_text = "-"
    where = board.get("port") or board.get("drive") or "-"
    blinking = " (blinking)" if board.get("led_blinking") else ""
    return (
        f"{board.get('slot', '?'):>4}  {board.get('serial', '?'):<16}  {board.get('board_type', '?'):<9}  "
        f"{board.get('state', '?'):<11}  {firmware_text:<22}  {where}{blinking}"
    )


def run(args: argparse.Namespace) -> int:
    """Send the subcommand to the rack of DIR/virtual and print the answer."""
    data = args.data if args.data is not None else Path(os.environ.get("PICOFLEET_DATA") or "/data")
    state_dir = Path(data).expanduser() / "virtual"
    action = args.sim_command
    if action == "list":
        request: dict = {"op": "list"}
    elif action == "add":
        request = {"op": "add", "board_type": args.board_type}
    else:
        request = {"op": action, "serial": args.serial}
    try:
        response = rack_request(state_dir, request, timeout=10.0)
    except RackUnavailable as error:
        return _fail(f"{error} (is a gateway running with --simulate and --data {data}?)")
    if not response.get("ok"):
        return _fail(str(response.get("error", "the rack refused the request")))
    if args.json:
        print(json.dumps(response.get("boards") if action == "list" else response, indent=2))
        return 0
    if action == "list":
        boards = response.get("boards", [])
        if not boards:
            print("no virtual boards")
            return 0
        print(f"{'SLOT':>4}  {'SERIAL':<16}  {'BOARD':<9}  {'STATE':<11}  {'FIRMWARE':<22}  PORT/DRIVE")
        for board in boards:
            print(_describe(board))
        return 0
    board = response.get("board") or {}
    print(_describe(board))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet sim` and its actions."""
    parser = subparsers.add_parser(
        "sim",
        help="list, unplug, plug, bootsel or add virtual boards",
        description="Look at and handle the virtual boards of a running gateway (--simulate).",
    )
    actions = parser.add_subparsers(dest="sim_command", metavar="ACTION", required=True)

    def action_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--data",
            type=Path,
            default=None,
            metavar="DIR",
            help="the gateway's data directory (default: $PICOFLEET_DATA or /data)",
        )
        sub.add_argument("--json", action="store_true", help="print the rack's answer as JSON")
        sub.set_defaults(run=run)
        return sub

    action_parser("list", "list the virtual boards and their state")
    action_parser("unplug", "pull a board's USB cable").add_argument("serial", metavar="SERIAL")
    action_parser("plug", "plug a board back in").add_argument("serial", metavar="SERIAL")
    action_parser("bootsel", "hold BOOTSEL and reset a board: it enters its UF2 bootloader").add_argument(
        "serial", metavar="SERIAL"
    )
    action_parser("add", "put a new board in the next free slot").add_argument(
        "board_type", metavar="BOARD_TYPE", help="rp2040, rp2350 or pico2-ice"
    )
    parser.set_defaults(run=run)
