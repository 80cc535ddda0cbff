"""The ``.bin`` form of an iCE40UP5K bitstream: read and validate it (:func:`read_bin`).

A ``.bin`` is what the FPGA is sent (104,090 bytes for an up5k when packed by icepack). An optional
header ``FF 00``, zero-terminated comment strings, ``00 FF``; the preamble ``7E AA 99 7E``; then
commands: one byte whose high nibble is the opcode and low nibble the length of a big-endian
payload, CRAM/BRAM data blocks after their commands. Any input either parses or raises
:class:`~.ice40.BitstreamError` (one line, naming the byte offset) — never another exception, and
in time linear in the input.

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
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from picofleet.firmware.formats.ice40 import (
    UP5K_BRAM_ROWS,
    UP5K_BRAM_WIDTHS,
    UP5K_CRAM_ROWS,
    UP5K_CRAM_WIDTH,
    BitstreamError,
    as_bytes,
    hex_of,
)

__all__ = ["HEADER_START", "MAX_BIN_SIZE", "PREAMBLE", "BinBitstream", "DataBlock", "read_bin"]

PREAMBLE = b"\x7e\xaa\x99\x7e"
"""The synchronisation word that starts the command stream of a ``.bin``."""
HEADER_START = b"\xff\x00"
HEADER_END = b"\x00\xff"

MAX_BIN_SIZE = 1 << 20
"""Larger ``.bin`` files are refused before parsing (an up5k's is ~100 KB)."""
MAX_HEADER_SIZE = 4096
"""The preamble must start within this many bytes."""

# CRAM widths of the other iCE40 devices icepack knows (the u4k shares the up5k's 692).
_OTHER_DEVICE_BY_CRAM_WIDTH = {182: "384", 332: "1k", 872: "8k", 656: "lm4k"}
_FREQRANGES = {0: "low", 1: "medium", 2: "high"}
_WARMBOOT = {0: ("disabled", "disabled"), 1: ("disabled", "enabled"), 32: ("enabled", "disabled")}
_WARMBOOT[33] = ("enabled", "enabled")


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
            f"not an iCE40 bitstream: starts with {hex_of(data[:4])}, "
            f"not the header FF 00 or the preamble {hex_of(PREAMBLE)}",
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
        f"expected the preamble {hex_of(PREAMBLE)} after the header, got {hex_of(data[after : after + 4])}",
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
    data = as_bytes(data)
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
                        f"got {hex_of(data[end : end + 2])}",
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
