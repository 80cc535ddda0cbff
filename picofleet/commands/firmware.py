"""`picofleet firmware`: look at firmware files and pack iCE40 bitstreams.

    picofleet firmware inspect FILE [--json]   what FILE is (UF2, iCE40 .asc or .bin), or why it is invalid
    picofleet firmware pack IN.asc OUT.bin     pack an up5k .asc into the .bin a pico2-ice's FPGA takes

`inspect` tells a file's kind by its first bytes (the UF2 magic, the .bin header or preamble,
text starting with a dot for an .asc); when they say nothing, by its name (.uf2, .bin, .asc),
and binary that is none of them is judged as a .bin. Invalid files end the command with exit
status 1 and one line on stderr naming the bad block, byte offset or line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from stat import S_ISREG
from typing import Any

from picofleet.common.atomic import atomic_write_bytes
from picofleet.firmware.formats import bitstream, ice40_asc, uf2
from picofleet.firmware.formats import inspect as firmware_inspect

KIND_NAMES = {"uf2": "UF2", "ice40-asc": "iCE40 bitstream (.asc text)", "ice40-bin": "iCE40 bitstream (.bin)"}


def _fail(reason: str) -> int:
    print(f"picofleet firmware: {' '.join(reason.split())}", file=sys.stderr)
    return 1


def _invalid(path: Path, data: bytes, error: ValueError) -> str:
    """The one-line reason why ``data`` (the content of ``path``) is invalid."""
    kind = firmware_inspect.judge_kind(data, path.name)
    if isinstance(error, uf2.UF2Error) or kind == "uf2":
        return f"{path}: not a valid UF2 file: {error}"
    if kind is None:
        return f"{path}: {error}"
    return f"{path}: not a valid {KIND_NAMES[kind]}: {error}"


def _text_summary(info: dict[str, Any]) -> list[str]:
    """The lines `inspect` prints for ``info`` (from :func:`firmware_inspect.inspect_file`)."""
    kind = info["kind"]
    if kind == "uf2":
        chip = info["chip"] or "unknown chip"
        lines = [f"{info['path']}: UF2, {chip} (family {info['family']})"]
    else:
        lines = [f"{info['path']}: {KIND_NAMES[kind]}, {info['chip']} ({info['device']})"]
    lines.append(f"  size       {info['size']} bytes")
    lines.append(f"  sha256     {info['sha256']}")
    if kind == "uf2":
        per_block = "256 per block" if info["all_payloads_256"] else "not all 256 per block"
        lines.append(f"  blocks     {info['blocks']} ({info['payload_bytes']} bytes of payload, {per_block})")
        lines.append(f"  addresses  {info['address_range_hex']}")
        return lines
    comment = info["comment"].replace("\n", " | ") if info["comment"] else "(none)"
    lines.append(f"  comment    {comment}")
    cram = info["cram"]
    rows = ", ".join(str(bank["rows"]) for bank in cram["banks"])
    bram = info["bram"]
    bram_shape = ", ".join(f"{bank['width']}x{bank['rows']}" for bank in bram["banks"])
    if kind == "ice40-bin":
        lines.append(f"  CRAM       banks 0-3 of {cram['width']} bits x {rows} rows ({cram['bytes']} bytes)")
        if bram["initialized"]:
            lines.append(f"  BRAM       initialized: banks 0-3 of {bram_shape} ({bram['bytes']} bytes)")
        else:
            lines.append("  BRAM       not initialized (no BRAM data, as icepack -n writes)")
        lines.append(
            f"  options    oscillator {info['freqrange']}, warm boot {info['warmboot']}, "
            f"no-sleep {info['nosleep']}; {info['crc_checks']} CRC check(s) passed"
        )
    else:
        tiles = info["tiles"]
        detail = ", ".join(f"{kind} {count}" for kind, count in sorted(tiles.items()))
        lines.append(f"  tiles      {sum(tiles.values())} ({detail})")
        lines.append(f"  CRAM       banks 0-3 of {cram['width']} bits x {rows} rows")
        lines.append(f"  BRAM       {bram['ram_data_blocks']} .ram_data block(s): banks 0-3 of {bram_shape}")
        lines.append(
            f"  other      {info['lines']} lines, warm boot {info['warmboot']}, "
            f"{info['extra_bits']} extra bit(s), {info['symbols']} symbol(s)"
        )
    return lines


def _read_bounded(path: Path, bound: int) -> bytes | None:
    """The bytes of ``path``, or ``None`` if it has more than ``bound`` (reading at most ``bound`` + 1).

    A regular file's size is checked first, so a huge one is not read at all; a device or a pipe
    (``/dev/zero``) has no size to trust and is read up to the bound.
    """
    with path.open("rb") as handle:
        stat = os.fstat(handle.fileno())
        if S_ISREG(stat.st_mode) and stat.st_size > bound:
            return None
        data = handle.read(bound + 1)
    return None if len(data) > bound else data


def run_inspect(args: argparse.Namespace) -> int:
    """Print what FILE is: kind, chip/family, size, blocks, address range, sha256 (or why it is invalid)."""
    path = Path(args.file)
    bound = firmware_inspect.MAX_INSPECT_SIZE  # inspect_file's bound; a device or pipe has no size to stat
    try:
        data = _read_bounded(path, bound)
    except OSError as error:
        return _fail(f"{path}: {error.strerror or error}")
    if data is None:
        return _fail(f"{path}: the file is more than {bound} bytes (no firmware is)")
    try:
        info = {"path": str(path), **firmware_inspect.inspect_bytes(data, path.name)}
    except ValueError as error:  # UF2Error or BitstreamError
        return _fail(_invalid(path, data, error))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(_text_summary(info)))
    return 0


def run_pack(args: argparse.Namespace) -> int:
    """Pack an up5k .asc into a .bin with icepack (validated before and after), written atomically."""
    source, target = Path(args.asc), Path(args.bin)
    bound = ice40_asc.MAX_ASC_SIZE
    try:
        raw = _read_bounded(source, bound)
    except OSError as error:
        return _fail(f"{source}: {error.strerror or error}")
    if raw is None:
        return _fail(f"{source}: not a valid iCE40 .asc: the file is more than {bound} bytes")
    kind = bitstream.detect_kind(raw)
    if kind in ("uf2", "ice40-bin"):
        what = "a UF2 file" if kind == "uf2" else "already an iCE40 .bin"
        return _fail(f"{source}: is {what}, not an .asc to pack")
    try:
        # pack_asc validates the .asc (bytes too: non-UTF-8 input is refused naming its line).
        packed = bitstream.pack_asc(raw, timeout=args.timeout)  # type: ignore[arg-type]
    except bitstream.BitstreamError as error:
        if error.reason.startswith(("icepack", "cannot run icepack")):  # missing, failing or too slow
            return _fail(f"{source}: {error}")
        return _fail(f"{source}: not a valid iCE40 .asc: {error}")
    try:
        atomic_write_bytes(target, packed)
    except OSError as error:
        return _fail(f"{target}: {error.strerror or error}")
    print(f"{target}: {len(packed)} bytes, iCE40UP5K (up5k), sha256 {hashlib.sha256(packed).hexdigest()}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet firmware` with its `inspect` and `pack` actions."""
    parser = subparsers.add_parser(
        "firmware",
        help="inspect UF2 files and iCE40 bitstreams; pack an .asc into a .bin",
        description="Look at firmware files (UF2, iCE40 .asc/.bin) and pack iCE40 bitstreams.",
    )
    actions = parser.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="what a UF2 file or iCE40 bitstream holds, or why it is invalid",
        description=run_inspect.__doc__,
    )
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(run=run_inspect)
    pack = actions.add_parser(
        "pack", help="pack an up5k .asc into a .bin (with icepack)", description=run_pack.__doc__
    )
    pack.add_argument("asc", metavar="IN.asc")
    pack.add_argument("bin", metavar="OUT.bin")
    pack.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="time limit for icepack (default 60)"
    )
    pack.set_defaults(run=run_pack)
