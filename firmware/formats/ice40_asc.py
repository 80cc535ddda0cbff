"""The ``.asc`` form of an iCE40UP5K bitstream: read and validate it (:func:`read_asc`).

An ``.asc`` is IceStorm's text, as nextpnr-ice40 writes it (~700 KB for an up5k). Statements start
with a dot: ``.comment`` (the following lines, up to the next line starting with ``.``, are the
comment), ``.device 5k``, ``.warmboot enabled|disabled``, one block per tile (``.io_tile X Y``,
``.logic_tile``, ``.ramb_tile``, ``.ramt_tile``, ``.dsp0_tile`` .. ``.dsp3_tile``, ``.ipcon_tile``)
of 16 rows of ``0``/``1``, ``.ram_data X Y`` (16 rows of 64 hex digits), ``.extra_bit BANK X Y``
and ``.sym N NAME``. Any input either parses or raises :class:`~.ice40.BitstreamError` (one line,
naming the line) — never another exception, and in time linear in the input.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from picofleet.firmware.formats.ice40 import (
    UP5K_BRAM_ROWS,
    UP5K_BRAM_WIDTHS,
    UP5K_CRAM_ROWS,
    UP5K_CRAM_WIDTH,
    BitstreamError,
    as_bytes,
)

__all__ = ["MAX_ASC_SIZE", "AscBitstream", "asc_text", "read_asc"]

MAX_ASC_SIZE = 16 << 20
"""Larger ``.asc`` files are refused before parsing (an up5k's is ~700 KB)."""


# The up5k as an .asc sees it: 24 x 30 tiles inside a ring of IO, DSP and IPConnect tiles.
_CHIP_WIDTH, _CHIP_HEIGHT = 24, 30
_TILE_WIDTHS = {"io": 18, "logic": 54, "ramb": 42, "ramt": 42, "ipcon": 54}
_TILE_WIDTHS.update({f"dsp{i}": 54 for i in range(4)})


def _tile_type(x: int, y: int) -> str | None:
    """The up5k tile at ``(x, y)`` (icepack's FpgaConfig::tile_type), ``None`` off-chip or at a corner."""
    if not (0 <= x <= _CHIP_WIDTH + 1 and 0 <= y <= _CHIP_HEIGHT + 1):
        return None
    sides = x in (0, _CHIP_WIDTH + 1)
    if sides and y in (0, _CHIP_HEIGHT + 1):
        return None
    if sides:
        for number, rows in enumerate(((5, 10, 15, 23), (6, 11, 16, 24), (7, 12, 17, 25), (8, 13, 18, 26))):
            if y in rows:
                return f"dsp{number}"
        return "ipcon"
    if y in (0, _CHIP_HEIGHT + 1):
        return "io"
    if x in (6, 19):
        return "ramb" if y % 2 == 1 else "ramt"
    return "logic"


_UP5K_TILES: dict[tuple[int, int], str] = {
    (x, y): kind
    for y in range(_CHIP_HEIGHT + 2)
    for x in range(_CHIP_WIDTH + 2)
    if (kind := _tile_type(x, y)) is not None
}
_TILE_STATEMENTS = {f".{kind}_tile" for kind in _TILE_WIDTHS}
_ROW_PATTERNS = {width: re.compile(f"[01]{{{width}}}\r?") for width in set(_TILE_WIDTHS.values())}
_RAM_DATA_ROW = re.compile("[0-9a-fA-F]{64}\r?")
_NUMBER = re.compile("[0-9]{1,9}")
_ASCII_SPACE = re.compile("[ \t\r\v\f]+")


@dataclass(frozen=True)
class AscBitstream:
    """A validated up5k ``.asc``."""

    size: int
    lines: int
    comment: str
    """The ``.comment`` section: the rest of its line, then the lines icepack puts in the header."""
    warmboot: str
    tiles: dict[str, int] = field(default_factory=dict)
    """Tile blocks by kind (``io``, ``logic``, ``ramb`` ...)."""
    ram_data: int = 0
    extra_bits: int = 0
    symbols: int = 0
    device: str = "up5k"

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: device, comment, tiles, BRAM initialisation."""
        return {
            "device": self.device,
            "comment": self.comment,
            "warmboot": self.warmboot,
            "lines": self.lines,
            "tiles": dict(self.tiles),
            "cram": {
                "width": UP5K_CRAM_WIDTH,
                "banks": [{"bank": b, "rows": r} for b, r in enumerate(UP5K_CRAM_ROWS)],
            },
            "bram": {
                "initialized": self.ram_data > 0,
                "ram_data_blocks": self.ram_data,
                "banks": [
                    {"bank": b, "width": w, "rows": UP5K_BRAM_ROWS} for b, w in enumerate(UP5K_BRAM_WIDTHS)
                ],
            },
            "extra_bits": self.extra_bits,
            "symbols": self.symbols,
        }


def asc_text(data: bytes | str) -> tuple[str, int]:
    """The text of an ``.asc`` and its size in bytes; non-UTF-8 input raises."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BitstreamError(f"character {error.start} cannot be encoded as UTF-8") from None
    else:
        raw = as_bytes(data)
    if len(raw) > MAX_ASC_SIZE:
        raise BitstreamError(f"the file is {len(raw)} bytes, more than any up5k .asc ({MAX_ASC_SIZE} max)")
    try:
        return raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise BitstreamError(f"byte {error.start} is not UTF-8 text", line=line) from None


def _number(token: str, what: str, line: int) -> int:
    if not _NUMBER.fullmatch(token):
        raise BitstreamError(f"{what} {token!r} is not a number", line=line)
    return int(token)


def read_asc(data: bytes | str) -> AscBitstream:
    """Parse and validate an up5k ``.asc`` (IceStorm text); raise :class:`BitstreamError` naming the line.

    Checks what icepack reads (``icepack.cc`` ``FpgaConfig::read_ascii``), more strictly: UTF-8 text;
    ``.device 5k`` exactly once, before any tile; every up5k tile exactly once (so a truncated file
    is refused) with the statement of its kind at its coordinates and 16 rows of exactly its width
    in ``0``/``1``; ``.ram_data`` only at a ``ramb`` tile, 16 rows of 64 hex digits; ``.extra_bit``
    within a CRAM bank; ``.warmboot enabled|disabled``; ``.sym`` lines; no other statement and no
    stray data line. Blank lines between statements are skipped (icepack does too). Any input
    either parses or raises :class:`BitstreamError`.
    """
    text, size = asc_text(data)
    if size == 0:
        raise BitstreamError("empty file")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    count = len(lines)
    device_line: int | None = None
    comment = ""
    warmboot = "enabled"
    seen: dict[tuple[int, int], int] = {}
    ram_seen: dict[tuple[int, int], int] = {}
    extra_bits = symbols = 0
    index = 0
    while index < count:
        number = index + 1
        line = lines[index]
        tokens = _ASCII_SPACE.split(line.strip(" \t\r\v\f"))
        index += 1
        if tokens == [""]:
            continue
        statement = tokens[0]
        if statement == ".comment":
            parts = [line.split(".comment", 1)[1].strip()] if len(tokens) > 1 else []
            while index < count and not lines[index].startswith("."):
                parts.append(lines[index].rstrip("\r"))
                index += 1
            comment = "\n".join(parts)
            continue
        if statement == ".device":
            if device_line is not None:
                raise BitstreamError(
                    f"a second .device statement (the first is on line {device_line})", line=number
                )
            if len(tokens) != 2:
                raise BitstreamError(".device needs exactly one argument (.device 5k)", line=number)
            if tokens[1] != "5k":
                raise BitstreamError(
                    f"device {tokens[1]!r} is not up5k: the pico2-ice's FPGA is an iCE40UP5K (.device 5k)",
                    line=number,
                )
            device_line = number
            continue
        if statement == ".warmboot":
            if len(tokens) != 2 or tokens[1] not in ("enabled", "disabled"):
                raise BitstreamError(".warmboot must be 'enabled' or 'disabled'", line=number)
            warmboot = tokens[1]
            continue
        if statement == ".sym":
            symbols += 1
            continue
        needs_device = statement in _TILE_STATEMENTS or statement in (".ram_data", ".extra_bit")
        if needs_device and device_line is None:
            raise BitstreamError(f"{statement} before the .device statement", line=number)
        if statement in _TILE_STATEMENTS or statement == ".ram_data":
            if len(tokens) != 3:
                raise BitstreamError(f"{statement} needs two coordinates (X Y)", line=number)
            x = _number(tokens[1], "X", number)
            y = _number(tokens[2], "Y", number)
            kind = _UP5K_TILES.get((x, y))
            if statement == ".ram_data":
                if kind != "ramb":
                    raise BitstreamError(f".ram_data {x} {y} is not at a ramb tile of the up5k", line=number)
                if (x, y) in ram_seen:
                    raise BitstreamError(
                        f"a second .ram_data {x} {y} (the first is on line {ram_seen[(x, y)]})", line=number
                    )
                ram_seen[(x, y)] = number
                pattern, what = _RAM_DATA_ROW, "64 hex digits"
            else:
                if kind is None:
                    raise BitstreamError(f"there is no up5k tile at {x} {y}", line=number)
                if statement != f".{kind}_tile":
                    raise BitstreamError(
                        f"{statement} {x} {y}, but the up5k's tile there is {kind}", line=number
                    )
                if (x, y) in seen:
                    raise BitstreamError(
                        f"a second {statement} {x} {y} (the first is on line {seen[(x, y)]})", line=number
                    )
                seen[(x, y)] = number
                width = _TILE_WIDTHS[kind]
                pattern, what = _ROW_PATTERNS[width], f"{width} characters 0/1"
            for row in range(16):
                if index >= count:
                    raise BitstreamError(
                        f"the file ends after {row} of the 16 rows of {statement} {x} {y} (truncated)",
                        line=count,
                    )
                if lines[index].startswith("."):
                    raise BitstreamError(f"{statement} {x} {y} has {row} rows, not 16", line=index + 1)
                if not pattern.fullmatch(lines[index]):
                    raise BitstreamError(
                        f"row {row + 1} of {statement} {x} {y} is not {what}", line=index + 1
                    )
                index += 1
            continue
        if statement == ".extra_bit":
            if len(tokens) != 4:
                raise BitstreamError(".extra_bit needs BANK X Y", line=number)
            bank = _number(tokens[1], "bank", number)
            x = _number(tokens[2], "X", number)
            y = _number(tokens[3], "Y", number)
            if bank > 3 or x >= UP5K_CRAM_WIDTH or y >= UP5K_CRAM_ROWS[bank]:
                raise BitstreamError(
                    f".extra_bit {bank} {x} {y} is outside the up5k's CRAM banks", line=number
                )
            extra_bits += 1
            continue
        if statement.startswith("."):
            raise BitstreamError(f"unknown statement {statement[:40]!r}", line=number)
        raise BitstreamError(f"unexpected data line {line[:40]!r}", line=number)

    if device_line is None:
        raise BitstreamError("no .device statement: not an IceStorm .asc for the up5k")
    if len(seen) != len(_UP5K_TILES):
        x, y = next(position for position in _UP5K_TILES if position not in seen)
        raise BitstreamError(
            f"the .asc has {len(seen)} of the up5k's {len(_UP5K_TILES)} tiles: .{_UP5K_TILES[(x, y)]}_tile "
            f"{x} {y} is missing (truncated?)",
            line=count,
        )
    return AscBitstream(
        size=size,
        lines=count,
        comment=comment,
        warmboot=warmboot,
        tiles=dict(Counter(_UP5K_TILES[position] for position in seen)),
        ram_data=len(ram_seen),
        extra_bits=extra_bits,
        symbols=symbols,
    )
