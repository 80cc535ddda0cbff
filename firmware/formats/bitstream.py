"""iCE40 bitstreams for the pico2-ice's iCE40UP5K: read and validate ``.asc`` and ``.bin``, pack one.

Two forms of the same configuration exist (YosysHQ IceStorm):

* ``.asc``: IceStorm's text, as nextpnr-ice40 writes it (~700 KB for an up5k). Statements start
  with a dot: ``.comment`` (the following lines, up to the next line starting with ``.``, are the
  comment), ``.device 5k``, ``.warmboot enabled|disabled``, one block per tile
  (``.io_tile X Y``, ``.logic_tile``, ``.ramb_tile``, ``.ramt_tile``, ``.dsp0_tile`` ..
  ``.dsp3_tile``, ``.ipcon_tile``) of 16 rows of ``0``/``1``, ``.ram_data X Y`` (16 rows of 64 hex
  digits), ``.extra_bit BANK X Y`` and ``.sym N NAME``.
* ``.bin``: what the FPGA is sent (104,090 bytes for an up5k when packed by icepack). An optional
  header ``FF 00``, zero-terminated comment strings, ``00 FF``; the preamble ``7E AA 99 7E``; then
  commands: one byte whose high nibble is the opcode and low nibble the length of a big-endian
  payload, CRAM/BRAM data blocks after their commands.

:func:`read_bin` and :func:`read_asc` validate a whole file; any input either parses or raises
:class:`BitstreamError` (one line, naming the byte offset or the line) — never another exception,
and in time linear in the input. :func:`inspect_file` describes a UF2 or a bitstream for
``picofleet firmware inspect``.

Rules for a ``.bin`` (checked against IceStorm's ``docs/source/format.rst`` and
``icepack/icepack.cc`` ``FpgaConfig::read_bits``/``write_bits``, YosysHQ/icestorm, the same code
as Debian's fpga-icestorm 0~20230218gitd20a5e9):

1. The file starts with the header ``FF 00`` (its comment strings end at the first ``00 FF``)
   or directly with the preamble; the preamble ``7E AA 99 7E`` follows the header (IceStorm notes
   that a Lattice tool sometimes puts the ``00 FF`` a few bytes early, so the preamble is also
   looked for further on within the first 4 KiB). At most 1 MiB in all.
2. Commands are walked one by one, as icepack reads them: opcode 0 with payload 1 (CRAM data),
   3 (BRAM data), 5 (CRC reset), 6 (wakeup); 1 bank number (0..3); 2 CRC check; 5 oscillator
   range (0..2); 6 bank width - 1; 7 bank height; 8 bank offset; 9 warm boot / no-sleep
   (0, 1, 32, 33). Anything else is refused, as icepack does.
3. A data block is ``width * height / 8`` bytes followed by ``00 00``. The geometry must be the
   up5k's: CRAM banks 692 bits wide with 336 rows (banks 0, 2) or 176 rows (banks 1, 3); BRAM
   banks 160 (banks 0, 2) or 80 (banks 1, 3) wide with 256 rows; a block lies within its bank
   and overlaps no earlier block. A CRAM width of another iCE40 (384, 1k, 8k, lm4k) is named.
4. CRC checks: the CRC-16-CCITT (polynomial 0x1021) since the last CRC reset (from 0 at the start
   of the file before any reset) must equal the command's 2-byte payload.
5. The wakeup command ends the stream; by then every row of the four CRAM banks has been written
   and a CRC check has followed the last data block. After the wakeup come zero bytes only, at
   least one (the padding byte icepack writes): so any truncation of a packed file is refused.

Packing (:func:`pack_asc`) calls ``icepack`` (Debian fpga-icestorm) through stdin/stdout instead
of porting it. Decision: it is the tool every iCE40 user packs with, so the result is
byte-identical by construction (the tests compare against running icepack directly); a port of
its CRAM/BRAM index tables would be a second implementation to keep right, for no gain — the
fleet service packs once per release, so speed is secondary. Measured
(``benchmarks/firmware_formats.py``, the 705,600-byte ``.asc`` of a counter, median of 20):
``icepack IN OUT`` alone 16 ms, ``pack_asc`` 32 ms (2.0x: a process either way, plus ~18 ms to
validate the ``.asc`` before and 0.4 ms to validate the ``.bin`` after).
"""

from __future__ import annotations

import binascii
import hashlib
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picofleet.firmware.formats import uf2

__all__ = [
    "ICEPACK_UP5K_SIZE",
    "PREAMBLE",
    "UP5K_BRAM_ROWS",
    "UP5K_BRAM_WIDTHS",
    "UP5K_CRAM_ROWS",
    "UP5K_CRAM_WIDTH",
    "AscBitstream",
    "BinBitstream",
    "BitstreamError",
    "DataBlock",
    "detect_kind",
    "inspect_bytes",
    "inspect_file",
    "pack_asc",
    "read_asc",
    "read_bin",
]

PREAMBLE = b"\x7e\xaa\x99\x7e"
"""The synchronisation word that starts the command stream of a ``.bin``."""
HEADER_START = b"\xff\x00"
HEADER_END = b"\x00\xff"

UP5K_CRAM_WIDTH = 692
"""Width in bits of each of the up5k's four CRAM banks."""
UP5K_CRAM_ROWS = (336, 176, 336, 176)
"""Rows of the up5k's CRAM banks 0..3 (the top banks are half high plus 8: UltraPlus SPRAM)."""
UP5K_BRAM_WIDTHS = (160, 80, 160, 80)
"""Width in bits of the up5k's BRAM banks 0..3."""
UP5K_BRAM_ROWS = 256
"""Rows of every up5k BRAM bank."""
ICEPACK_UP5K_SIZE = 104_090
"""Size of icepack's ``.bin`` for an up5k ``.asc`` (BRAM included, empty comment)."""

MAX_BIN_SIZE = 1 << 20
"""Larger ``.bin`` files are refused before parsing (an up5k's is ~100 KB)."""
MAX_HEADER_SIZE = 4096
"""The preamble must start within this many bytes."""
MAX_ASC_SIZE = 16 << 20
"""Larger ``.asc`` files are refused before parsing (an up5k's is ~700 KB)."""
MAX_INSPECT_SIZE = 128 << 20
"""Larger files are refused by :func:`inspect_file` (a UF2 of 32 MiB of flash is 64 MiB)."""

# CRAM widths of the other iCE40 devices icepack knows (the u4k shares the up5k's 692).
_OTHER_DEVICE_BY_CRAM_WIDTH = {182: "384", 332: "1k", 872: "8k", 656: "lm4k"}
_FREQRANGES = {0: "low", 1: "medium", 2: "high"}
_WARMBOOT = {0: ("disabled", "disabled"), 1: ("disabled", "enabled"), 32: ("enabled", "disabled")}
_WARMBOOT[33] = ("enabled", "enabled")

# The up5k as an .asc sees it: 24 x 30 tiles inside a ring of IO, DSP and IPConnect tiles.
_CHIP_WIDTH, _CHIP_HEIGHT = 24, 30
_TILE_WIDTHS = {"io": 18, "logic": 54, "ramb": 42, "ramt": 42, "ipcon": 54}
_TILE_WIDTHS.update({f"dsp{i}": 54 for i in range(4)})


class BitstreamError(ValueError):
    """Raised for any invalid iCE40 bitstream (and by :func:`pack_asc` when icepack fails).

    ``str(error)`` is one line: ``"offset 1234 (0x4d2): CRC check failed ..."`` for a problem at a
    byte of a ``.bin`` (``offset``), ``"line 2: device 1k ..."`` for a line of an ``.asc``
    (``line``, 1-based), or a file-level message. ``reason`` is the message without the prefix.
    """

    offset: int | None
    line: int | None
    reason: str

    def __init__(self, reason: str, *, offset: int | None = None, line: int | None = None) -> None:
        self.reason = " ".join(reason.split())
        self.offset = offset
        self.line = line
        if offset is not None:
            prefix = f"offset {offset} (0x{offset:x}): "
        elif line is not None:
            prefix = f"line {line}: "
        else:
            prefix = ""
        super().__init__(prefix + self.reason)


def _hex(data: bytes) -> str:
    return " ".join(f"{byte:02X}" for byte in data) or "nothing"


def _as_bytes(data: object) -> bytes:
    """The bytes of a bytes-like ``data``; anything else raises :class:`BitstreamError`."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B").tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise BitstreamError(f"not a bytes-like object ({type(data).__name__})") from error


# -- .bin -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataBlock:
    """One CRAM or BRAM data block of a ``.bin``: ``rows`` rows from ``first_row`` of ``bank``."""

    memory: str
    """``"cram"`` or ``"bram"``."""
    bank: int
    width: int
    first_row: int
    rows: int
    at: int
    """File offset of the first data byte."""

    @property
    def size(self) -> int:
        """Data bytes of the block (without the ``00 00`` after it)."""
        return self.width * self.rows // 8


@dataclass(frozen=True)
class BinBitstream:
    """A validated up5k ``.bin`` (see the module docstring for the rules)."""

    size: int
    header: bytes
    """Everything before the preamble (``b""`` without a header)."""
    comment: str
    """The header's comment strings, one per line."""
    freqrange: str | None
    warmboot: str | None
    nosleep: str | None
    blocks: tuple[DataBlock, ...]
    crc_checks: int
    wakeup_at: int
    device: str = "up5k"

    def bank_rows(self, memory: str) -> list[int]:
        """Rows written per bank 0..3 of ``memory`` (``"cram"`` or ``"bram"``)."""
        rows = [0, 0, 0, 0]
        for block in self.blocks:
            if block.memory == memory:
                rows[block.bank] += block.rows
        return rows

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: device, comment, CRAM/BRAM banks, options."""
        cram_rows = self.bank_rows("cram")
        bram_rows = self.bank_rows("bram")
        bram_bytes = sum(b.size for b in self.blocks if b.memory == "bram")
        return {
            "device": self.device,
            "comment": self.comment,
            "header_bytes": len(self.header),
            "freqrange": self.freqrange,
            "warmboot": self.warmboot,
            "nosleep": self.nosleep,
            "cram": {
                "width": UP5K_CRAM_WIDTH,
                "banks": [
                    {"bank": bank, "rows": rows, "bytes": UP5K_CRAM_WIDTH * rows // 8}
                    for bank, rows in enumerate(cram_rows)
                ],
                "bytes": sum(b.size for b in self.blocks if b.memory == "cram"),
            },
            "bram": {
                "initialized": bram_bytes > 0,
                "banks": [
                    {"bank": bank, "width": UP5K_BRAM_WIDTHS[bank], "rows": rows}
                    for bank, rows in enumerate(bram_rows)
                ],
                "bytes": bram_bytes,
            },
            "crc_checks": self.crc_checks,
        }


def _find_preamble(data: bytes) -> tuple[int, bytes]:
    """``(offset of the preamble, header bytes)``; raises for a missing or broken header."""
    size = len(data)
    if data.startswith(PREAMBLE):
        return 0, b""
    if not data.startswith(HEADER_START):
        if size < 4 and (PREAMBLE.startswith(data) or HEADER_START.startswith(data[:2])):
            raise BitstreamError(f"the file is only {size} bytes (truncated)", offset=size)
        raise BitstreamError(
            f"not an iCE40 bitstream: starts with {_hex(data[:4])}, "
            f"not the header FF 00 or the preamble {_hex(PREAMBLE)}",
            offset=0,
        )
    end = data.find(HEADER_END, 2, MAX_HEADER_SIZE)
    if end < 0:
        if size < MAX_HEADER_SIZE:
            raise BitstreamError("the file ends inside the FF 00 header (no 00 FF; truncated?)", offset=size)
        raise BitstreamError(f"the FF 00 header has no 00 FF end within {MAX_HEADER_SIZE} bytes", offset=2)
    after = end + 2
    if data.startswith(PREAMBLE, after):
        return after, data[:after]
    # IceStorm's format.rst: a Lattice tool sometimes puts the 00 FF a few bytes into the comment.
    late = data.find(PREAMBLE, after, MAX_HEADER_SIZE + len(PREAMBLE))
    if late >= 0:
        return late, data[:late]
    if after + len(PREAMBLE) > size:
        raise BitstreamError("the file ends after the header, before the preamble (truncated)", offset=size)
    raise BitstreamError(
        f"expected the preamble {_hex(PREAMBLE)} after the header, got {_hex(data[after : after + 4])}",
        offset=after,
    )


def _comment_of(header: bytes) -> str:
    """The comment strings of a ``FF 00 ... 00 FF`` header, one per line."""
    if not header:
        return ""
    end = header.find(HEADER_END, 2)
    body = header[2:end] if end >= 0 else header[2:]
    parts = body.split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    return "\n".join(part.decode("utf-8", "replace") for part in parts)


def _cram_width_problem(width: int) -> str:
    other = _OTHER_DEVICE_BY_CRAM_WIDTH.get(width)
    if other is not None:
        return f"CRAM bank width {width} is an iCE40 {other}'s, not the up5k's {UP5K_CRAM_WIDTH}"
    return f"CRAM bank width {width} is not the up5k's {UP5K_CRAM_WIDTH}"


def read_bin(data: bytes) -> BinBitstream:
    """Parse and validate an up5k ``.bin``; raise :class:`BitstreamError` naming the first problem.

    The whole command stream is walked (rules in the module docstring), so a truncated, corrupted
    or foreign bitstream is refused with the byte offset and the reason. Any bytes-like input
    either parses or raises :class:`BitstreamError`.
    """
    data = _as_bytes(data)
    size = len(data)
    if size == 0:
        raise BitstreamError("empty file")
    if size > MAX_BIN_SIZE:
        raise BitstreamError(f"the file is {size} bytes, more than any up5k bitstream ({MAX_BIN_SIZE} max)")
    preamble_at, header = _find_preamble(data)
    pos = preamble_at + len(PREAMBLE)
    # icepack's CRC runs from the first byte of the file (value 0) until a reset (value 0xFFFF); it
    # is computed incrementally up to crc_pos so that many CRC checks cost no more than one.
    crc_start = crc_pos = crc_value = 0
    width: int | None = None
    height: int | None = None
    first_row = 0
    bank = 0
    freqrange = warmboot = nosleep = None
    blocks: list[DataBlock] = []
    crc_checks = 0
    checked_since_data = True
    last_data_end: int | None = None
    while True:
        at = pos
        if at >= size:
            raise BitstreamError("the file ends before the wakeup command (truncated)", offset=size)
        command = data[at]
        length = command & 0x0F
        opcode = command >> 4
        if at + 1 + length > size:
            raise BitstreamError(
                f"the file ends inside command 0x{command:02X} (it has a {length}-byte payload; truncated)",
                offset=size,
            )
        payload = int.from_bytes(data[at + 1 : at + 1 + length], "big")
        pos = at + 1 + length
        if opcode == 0:
            if payload in (1, 3):
                memory = "cram" if payload == 1 else "bram"
                name = memory.upper()
                if width is None or height is None:
                    raise BitstreamError(f"{name} data before the bank width and height were set", offset=at)
                if memory == "cram":
                    if width != UP5K_CRAM_WIDTH:
                        raise BitstreamError(_cram_width_problem(width), offset=at)
                    bank_rows = UP5K_CRAM_ROWS[bank]
                else:
                    if width != UP5K_BRAM_WIDTHS[bank]:
                        raise BitstreamError(
                            f"BRAM bank {bank} width {width} is not the up5k's {UP5K_BRAM_WIDTHS[bank]}",
                            offset=at,
                        )
                    bank_rows = UP5K_BRAM_ROWS
                if height == 0 or first_row + height > bank_rows:
                    raise BitstreamError(
                        f"{name} write of rows {first_row}..{first_row + height} of bank {bank}: "
                        f"the up5k's bank has rows 0..{bank_rows}",
                        offset=at,
                    )
                if width * height % 8:
                    raise BitstreamError(
                        f"{name} block of {width} x {height} bits is not whole bytes", offset=at
                    )
                for block in blocks:
                    if (
                        block.memory == memory
                        and block.bank == bank
                        and first_row < block.first_row + block.rows
                        and block.first_row < first_row + height
                    ):
                        raise BitstreamError(
                            f"{name} write of rows {first_row}..{first_row + height} of bank {bank} "
                            f"overlaps the one at offset {block.at}",
                            offset=at,
                        )
                block = DataBlock(memory, bank, width, first_row, height, pos)
                end = pos + block.size
                if end + 2 > size:
                    raise BitstreamError(
                        f"the file ends inside the {name} data of bank {bank} "
                        f"({block.size} bytes and 00 00 from offset {pos}; truncated)",
                        offset=size,
                    )
                if data[end : end + 2] != b"\x00\x00":
                    raise BitstreamError(
                        f"expected 00 00 after the {name} data of bank {bank}, "
                        f"got {_hex(data[end : end + 2])}",
                        offset=end,
                    )
                blocks.append(block)
                pos = end + 2
                last_data_end = pos
                checked_since_data = False
            elif payload == 5:
                crc_start = crc_pos = pos
                crc_value = 0xFFFF
            elif payload == 6:
                break
            else:
                raise BitstreamError(f"unknown command 0x{command:02X} with payload 0x{payload:X}", offset=at)
        elif opcode == 1:
            if payload > 3:
                raise BitstreamError(f"bank number {payload} is not 0..3", offset=at)
            bank = payload
        elif opcode == 2:
            if length != 2:
                raise BitstreamError(
                    f"CRC check command 0x{command:02X} must have a 2-byte payload", offset=at
                )
            computed = binascii.crc_hqx(data[crc_pos : at + 1], crc_value)
            if computed != payload:
                raise BitstreamError(
                    f"CRC check failed: the CRC-16 of offsets {crc_start}..{at} is 0x{computed:04X}, "
                    f"the bitstream says 0x{payload:04X} (corrupted)",
                    offset=at,
                )
            crc_value = binascii.crc_hqx(data[at + 1 : pos], computed)  # 0 after a good check
            crc_pos = pos
            crc_checks += 1
            checked_since_data = True
        elif opcode == 5:
            if payload not in _FREQRANGES:
                raise BitstreamError(f"oscillator range {payload} is not 0..2", offset=at)
            freqrange = _FREQRANGES[payload]
        elif opcode == 6:
            width = payload + 1
        elif opcode == 7:
            height = payload
        elif opcode == 8:
            first_row = payload
        elif opcode == 9:
            if payload not in _WARMBOOT:
                raise BitstreamError(
                    f"warm boot / no-sleep setting {payload} is not 0, 1, 32 or 33", offset=at
                )
            warmboot, nosleep = _WARMBOOT[payload]
        else:
            raise BitstreamError(f"unknown command 0x{command:02X} (opcode {opcode})", offset=at)

    wakeup_at = at
    cram_rows = [0, 0, 0, 0]
    for block in blocks:
        if block.memory == "cram":
            cram_rows[block.bank] += block.rows
    for number, (written, rows) in enumerate(zip(cram_rows, UP5K_CRAM_ROWS, strict=True)):
        if written != rows:
            hint = " (an iCE40 u4k's CRAM is 692 x 176)" if cram_rows == [176, 176, 176, 176] else ""
            raise BitstreamError(
                f"wakeup with {written} of the {rows} rows of CRAM bank {number} written{hint}",
                offset=wakeup_at,
            )
    if not checked_since_data:
        raise BitstreamError(
            f"wakeup without a CRC check after the last data block (ending at offset {last_data_end})",
            offset=wakeup_at,
        )
    tail = data[pos:]
    if not tail:
        raise BitstreamError(
            "the padding byte 00 after the wakeup command is missing (truncated)", offset=size
        )
    nonzero = len(tail) - len(tail.lstrip(b"\x00"))
    if nonzero < len(tail):
        raise BitstreamError(
            f"unexpected byte 0x{tail[nonzero]:02X} after the wakeup command (only 00 padding may follow)",
            offset=pos + nonzero,
        )
    return BinBitstream(
        size=size,
        header=header,
        comment=_comment_of(header),
        freqrange=freqrange,
        warmboot=warmboot,
        nosleep=nosleep,
        blocks=tuple(blocks),
        crc_checks=crc_checks,
        wakeup_at=wakeup_at,
    )


# -- .asc -------------------------------------------------------------------------------------


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


def _asc_text(data: bytes | str) -> tuple[str, int]:
    """The text of an ``.asc`` and its size in bytes; non-UTF-8 input raises."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BitstreamError(f"character {error.start} cannot be encoded as UTF-8") from None
    else:
        raw = _as_bytes(data)
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
    text, size = _asc_text(data)
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


# -- packing ----------------------------------------------------------------------------------


def pack_asc(asc_text: str, *, icepack: str | None = None, timeout: float = 60.0) -> bytes:
    """Return the ``.bin`` of an up5k ``.asc``, byte-identical to ``icepack``'s: it *is* icepack's.

    The text is validated first (:func:`read_asc`), then piped through ``icepack`` (stdin to
    stdout; ``icepack`` defaults to the one on PATH) and its output validated (:func:`read_bin`).
    Raises :class:`BitstreamError` for an invalid ``.asc``, a missing icepack, icepack failing or
    not finishing within ``timeout`` seconds, or an invalid result. See the module docstring for
    why icepack is called rather than ported.
    """
    text, _ = _asc_text(asc_text)
    read_asc(text)
    executable = icepack or shutil.which("icepack")
    if executable is None:
        raise BitstreamError("icepack is not installed (Debian package fpga-icestorm): cannot pack the .asc")
    try:
        done = subprocess.run(
            [executable],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BitstreamError(f"icepack did not finish within {timeout:g} s") from None
    except OSError as error:
        raise BitstreamError(f"cannot run icepack ({executable}): {error.strerror or error}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        why = lines[-1].strip() if lines else "no message"
        status = f"exit {done.returncode}" if done.returncode > 0 else f"signal {-done.returncode}"
        raise BitstreamError(f"icepack failed ({status}): {why}")
    try:
        read_bin(done.stdout)
    except BitstreamError as error:
        raise BitstreamError(f"icepack's output is not a valid up5k bitstream: {error}") from None
    return done.stdout


# -- inspecting files -------------------------------------------------------------------------

_UF2_MAGIC = uf2.MAGIC_START0.to_bytes(4, "little")
_CHIPS = {
    uf2.RP2040: "RP2040",
    uf2.RP2350_ARM_S: "RP2350",
    uf2.RP2350_ARM_NS: "RP2350",
    uf2.RP2350_RISCV: "RP2350",
    uf2.RP2_ABSOLUTE: "RP2350",
    uf2.RP2_DATA: "RP2350",
}


def detect_kind(data: bytes) -> str | None:
    """``"uf2"``, ``"ice40-bin"`` or ``"ice40-asc"`` from the first bytes of a file; ``None`` if none fits.

    UF2 by its first magic; a ``.bin`` by ``FF 00`` or the preamble; an ``.asc`` by a first
    non-blank character ``.``. Only a guess: the readers validate.
    """
    if data[:4] == _UF2_MAGIC:
        return "uf2"
    if data[:2] == HEADER_START or data[:4] == PREAMBLE:
        return "ice40-bin"
    if data[:4096].lstrip(b" \t\r\n").startswith(b"."):
        return "ice40-asc"
    return None


def validate(data: bytes) -> str:
    """Check that ``data`` is a valid iCE40 ``.bin`` or ``.asc``; return ``"ice40-bin"`` or ``"ice40-asc"``.

    Raises :class:`BitstreamError` for an invalid bitstream, and for anything else (a UF2 named).
    """
    kind = detect_kind(data)
    if kind == "ice40-bin":
        read_bin(data)
    elif kind == "ice40-asc":
        read_asc(data)
    elif kind == "uf2":
        raise BitstreamError("a UF2 firmware image, not an iCE40 bitstream")
    else:
        raise BitstreamError("not an iCE40 .bin or .asc bitstream")
    return kind


def _describe_uf2(data: bytes) -> dict[str, Any]:
    image = uf2.read_uf2(data)
    families = sorted(image.families)
    chips = sorted({_CHIPS[family] for family in families if family in _CHIPS})
    start, end = image.address_range
    return {
        "kind": "uf2",
        "chip": ", ".join(chips) if chips else None,
        "family": ", ".join(uf2.family_name(family) for family in families) or "none",
        "families": [uf2.family_name(family) for family in families],
        "blocks": len(image.blocks),
        "payload_bytes": image.payload_bytes,
        "address_range": [start, end],
        "address_range_hex": f"0x{start:08x}..0x{end:08x}",
        "all_payloads_256": image.all_payloads_256,
    }


def inspect_bytes(data: bytes) -> dict[str, Any]:
    """Describe a UF2 file or an up5k bitstream (JSON-able); invalid input raises a ``ValueError``.

    Always: ``kind`` (``"uf2"``, ``"ice40-asc"``, ``"ice40-bin"``), ``chip``, ``family``, ``size``,
    ``sha256``. UF2: ``families``, ``blocks``, ``payload_bytes``, ``address_range`` (start, end
    exclusive). Bitstreams: ``device`` (``"up5k"``), ``comment``, ``cram``/``bram`` bank
    information and the rest of :meth:`BinBitstream.describe` / :meth:`AscBitstream.describe`.
    Raises :class:`~picofleet.firmware.formats.uf2.UF2Error` for an invalid UF2 and
    :class:`BitstreamError` for an invalid bitstream or a file that is neither.
    """
    data = _as_bytes(data)
    kind = detect_kind(data)
    common = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if kind == "uf2":
        return {**_describe_uf2(data), **common}
    if kind == "ice40-bin":
        described = read_bin(data).describe()
    elif kind == "ice40-asc":
        described = read_asc(data).describe()
    elif not data:
        raise BitstreamError("empty file")
    else:
        raise BitstreamError(
            f"not a UF2 file, an iCE40 .asc or an iCE40 .bin: it starts with {_hex(data[:4])}", offset=0
        )
    return {"kind": kind, "chip": "iCE40UP5K", "family": "ice40", **common, **described}


def inspect_file(path: str | Path) -> dict[str, Any]:
    """:func:`inspect_bytes` of the file at ``path`` plus its ``path``; ``OSError`` if unreadable.

    Files over 128 MiB are refused (:class:`BitstreamError`) without being read.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_INSPECT_SIZE:
        raise BitstreamError(f"the file is {size} bytes, more than {MAX_INSPECT_SIZE} (no firmware is)")
    return {"path": str(path), **inspect_bytes(path.read_bytes())}
