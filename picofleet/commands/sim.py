"""`picofleet sim`: look at and handle the virtual boards of a running gateway (``--simulate``).

    picofleet sim list [--data DIR] [--json]
    picofleet sim unplug SERIAL      pull a board's USB cable
    picofleet sim plug SERIAL        plug it back in
    picofleet sim bootsel SERIAL     hold BOOTSEL and reset: the board enters its UF2 bootloader
    picofleet sim add BOARD_TYPE     put a new board (rp2040, rp2350, pico2-ice) in the next slot
    picofleet sim image --board TYPE --version V OUT.uf2 [--broken]
                                     write a bootable UF2 of the reference firmware (picofleet-app V)

DIR is the gateway's data directory (default: $PICOFLEET_DATA or /data); the rack of virtual
boards keeps its state and control socket in DIR/virtual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from picofleet.common.atomic import atomic_write_bytes
from picofleet.firmware.formats import boot_header, uf2
from picofleet.firmware.formats import image as fw_image
from picofleet.plugins.virtual.control import RackUnavailable, rack_request
from picofleet.plugins.virtual.identities import APP_FIRMWARE

ACTIONS = ("unplug", "plug", "bootsel")


def _fail(reason: str) -> int:
    print(f"picofleet sim: {reason}", file=sys.stderr)
    return 1


def _describe(board: dict) -> str:
    firmware = board.get("firmware")
    if board.get("state") == "bootloader" and board.get("boot_error"):
        firmware_text = "bootloader (no boot)"
    elif board.get("state") == "bootloader":
        firmware_text = "bootloader"
    elif firmware:
        firmware_text = f"{firmware.get('name')} {firmware.get('version')}"
    elif board.get("state") == "application":
        firmware_text = "unknown firmware"
    else:
        firmware_text = "-"
    where = board.get("port") or board.get("drive") or "-"
    blinking = " (blinking)" if board.get("led_blinking") else ""
    boot_error = (
        f"  [{board['boot_error']}]" if board.get("state") == "bootloader" and board.get("boot_error") else ""
    )
    return (
        f"{board.get('slot', '?'):>4}  {board.get('serial', '?'):<16}  {board.get('board_type', '?'):<9}  "
        f"{board.get('state', '?'):<11}  {firmware_text:<22}  {where}{blinking}{boot_error}"
    )


CHIP_FAMILIES = {boot_header.RP2040: uf2.RP2040, boot_header.RP2350: uf2.RP2350_ARM_S}
"""The UF2 family of an image for each chip (what pico-sdk writes for an Arm build)."""


def _board_chip(board_type: str) -> tuple[str, int]:
    """The chip of ``board_type`` and the UF2 family to write: a built-in type's, else its plugin's.

    Raises :class:`ValueError` (one line) for a type no plugin declares or whose chip the virtual
    bootroms do not know.
    """
    if board_type in boot_header.BOARD_CHIPS:
        chip = boot_header.BOARD_CHIPS[board_type]
        return chip, CHIP_FAMILIES[chip]
    from picofleet.gateway.plugin_manager import load_plugins  # only for a plugin's board type

    board_types = load_plugins().board_types
    declared = board_types.get(board_type)
    if declared is None:
        known = sorted(set(boot_header.BOARD_CHIPS) | set(board_types))
        raise ValueError(f"unknown board type '{board_type}' (known: {', '.join(known)})")
    chip = declared.chip.lower()
    if chip not in CHIP_FAMILIES:
        raise ValueError(
            f"board type '{board_type}' has chip {declared.chip}, which virtual boards cannot boot"
        )
    family = CHIP_FAMILIES[chip]
    if declared.uf2_families and family not in declared.uf2_families:
        family = declared.uf2_families[0]  # what its bootloader takes
    return chip, family


def run_image(args: argparse.Namespace) -> int:
    """Write a UF2 of the reference firmware (picofleet-app VERSION) that boards of TYPE boot."""
    try:
        chip, family = _board_chip(args.board)
    except ValueError as error:
        return _fail(str(error))
    if not args.version.strip() or any(ord(char) < 32 for char in args.version):
        return _fail("--version must be a non-empty printable string")
    flat = fw_image.make_app_image(APP_FIRMWARE, args.version, args.board, chip=chip, broken=args.broken)
    data = uf2.from_binary(flat, fw_image.FLASH_BASE, family)
    out = Path(args.out).expanduser()
    try:
        atomic_write_bytes(out, data)
    except OSError as error:
        return _fail(f"cannot write {out}: {error.strerror or error}")
    kind = "non-booting (--broken) " if args.broken else ""
    print(
        f"{out}: {kind}{APP_FIRMWARE} {args.version} for {args.board} ({chip}, {len(data) // 512} UF2 blocks)"
    )
    return 0


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
    image_help = "write a bootable UF2 of the reference firmware (picofleet-app VERSION) for virtual boards"
    image = actions.add_parser(
        "image",
        help=image_help,
        description=image_help + " of TYPE: it starts with the boot header the chip's bootrom checks "
        "(RP2040 boot2 with its CRC, RP2350 IMAGE_DEF block; docs/virtual-boards.md).",
    )
    image.add_argument(
        "--board",
        required=True,
        metavar="TYPE",
        help="rp2040, rp2350, pico2-ice, or a plugin's board type with an RP2040/RP2350 chip",
    )
    image.add_argument("--version", required=True, metavar="V", help="the firmware version the board reports")
    image.add_argument(
        "--broken",
        action="store_true",
        help="write a deliberately non-booting image: a valid UF2 of the right family with the "
        "descriptor, but a boot header the bootrom refuses (the board comes back in BOOTSEL)",
    )
    image.add_argument("out", metavar="OUT.uf2", help="the file to write")
    image.set_defaults(run=run_image)
    parser.set_defaults(run=run)
