"""Reading, validating and writing UF2 files (microsoft/uf2) for RP2040 and RP2350 boards.

A UF2 file is a sequence of 512-byte blocks. Each block holds little-endian u32 fields::

    offset  0  magic0 0x0A324655        offset 20  block number
    offset  4  magic1 0x9E5D5157        offset 24  total number of blocks
    offset  8  flags                    offset 28  family id (flag 0x2000) or file size
    offset 12  target address           32..508    data area (476 bytes; payload first)
    offset 16  payload size             offset 508 magic end 0x0AB16F30

:func:`read_uf2` validates a whole file and returns a :class:`UF2Image`; anything wrong with
the input bytes raises :class:`UF2Error` (never another exception) naming the first bad block.
:func:`from_binary` builds a file from a flat binary the way ``uf2conv.py`` does.

Block numbering is checked per *group*: a maximal run of consecutive blocks sharing
``(family_id, num_blocks)`` must be numbered ``0, 1, ..., num_blocks - 1`` in order. This keeps
files that concatenate several images valid, notably the RP2350-E10 workaround of picotool,
which puts one extra block of family ``RP2_ABSOLUTE`` numbered 0 of 1 before the image.

The RP2040/RP2350 bootroms only take blocks with a payload of 256 bytes; the format allows
1..476, so other sizes are accepted here and reported by :attr:`UF2Image.all_payloads_256`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BLOCK_SIZE",
    "DATA_AREA",
    "FAMILY_NAMES",
    "FLAG_EXTENSION_TAGS",
    "FLAG_FAMILY_ID_PRESENT",
    "FLAG_FILE_CONTAINER",
    "FLAG_MD5_PRESENT",
    "FLAG_NOT_MAIN_FLASH",
    "FLASH_RANGES",
    "MAGIC_END",
    "MAGIC_START0",
    "MAGIC_START1",
    "PICO_ICE",
    "RP2_ABSOLUTE",
    "RP2_DATA",
    "RP2040",
    "RP2350_ARM_NS",
    "RP2350_ARM_S",
    "RP2350_RISCV",
    "Block",
    "UF2Error",
    "UF2Image",
    "accepted_by",
    "family_name",
    "from_binary",
    "outside_flash",
    "parse_block",
    "read_uf2",
]

MAGIC_START0 = 0x0A324655
"""First magic number, at offset 0 ("UF2\\n")."""
MAGIC_START1 = 0x9E5D5157
"""Second magic number, at offset 4."""
MAGIC_END = 0x0AB16F30
"""Final magic number, at offset 508."""

BLOCK_SIZE = 512
"""Size of every UF2 block."""
DATA_AREA = 476
"""Size of a block's data area (offsets 32..508); the largest payload a block can carry."""
HEADER_SIZE = 32
"""Size of a block's header (the eight u32 fields before the data area)."""

FLAG_NOT_MAIN_FLASH = 0x00000001
"""The block is not meant for main flash: a flasher must skip it."""
FLAG_FILE_CONTAINER = 0x00001000
"""The file is a file container (offset 28 holds the file size)."""
FLAG_FAMILY_ID_PRESENT = 0x00002000
"""Offset 28 holds a family id instead of a file size."""
FLAG_MD5_PRESENT = 0x00004000
"""The end of the data area holds an MD5 checksum of the target range."""
FLAG_EXTENSION_TAGS = 0x00008000
"""Extension tags follow the payload in the data area."""

RP2040 = 0xE48BFF56
RP2_ABSOLUTE = 0xE48BFF57
RP2_DATA = 0xE48BFF58
RP2350_ARM_S = 0xE48BFF59
RP2350_RISCV = 0xE48BFF5A
RP2350_ARM_NS = 0xE48BFF5B
PICO_ICE = 0x792E7263

FAMILY_NAMES: dict[int, str] = {
    RP2040: "rp2040",
    RP2_ABSOLUTE: "absolute",
    RP2_DATA: "data",
    RP2350_ARM_S: "rp2350-arm-s",
    RP2350_RISCV: "rp2350-riscv",
    RP2350_ARM_NS: "rp2350-arm-ns",
    PICO_ICE: "pico-ice",
}
"""Short names of the family ids picofleet knows, as picotool spells them."""

RP2_FLASH_BASE = 0x10000000
"""Where the flash of an RP2040 or RP2350 is mapped (XIP, chip select 0)."""
RP2_FLASH_MAX = 16 * 1024 * 1024
"""The largest flash a UF2 can fill on an RP2040 or RP2350: 16 MiB."""

FLASH_RANGES: dict[int, tuple[int, int]] = {
    family: (RP2_FLASH_BASE, RP2_FLASH_BASE + RP2_FLASH_MAX)
    for family in (RP2040, RP2_ABSOLUTE, RP2_DATA, RP2350_ARM_S, RP2350_RISCV, RP2350_ARM_NS)
}
"""``(start, end exclusive)`` of the flash each known family's blocks must target. A bootrom writes a
block outside it elsewhere (SRAM at 0x20000000: run once, lost at the next reset), so a flasher
refuses the image (:func:`outside_flash`). Families without an entry are not checked."""

RP2_PAYLOAD_SIZE = 256
"""The only payload size the RP2040/RP2350 bootroms accept."""

_ADDRESS_SPACE = 1 << 32
# One unpack per block: the eight header words, the data area skipped, the end magic.
_BLOCK = struct.Struct("<8I476xI")
assert _BLOCK.size == BLOCK_SIZE


def family_name(family_id: int | None) -> str:
    """Return the short name of ``family_id``: ``"rp2040"``, ..., ``"0x12345678"`` if unknown, ``"none"``."""
    if family_id is None:
        return "none"
    return FAMILY_NAMES.get(family_id, f"0x{family_id:08x}")


class UF2Error(ValueError):
    """Raised for any invalid UF2 input.

    ``str(error)`` is one line: ``"block 3: bad magic end 0x00000000"`` for a problem with one
    block (``block`` is its 0-based index in the file), or a file-level message such as
    ``"file size 1000 is not a multiple of 512 ..."`` (``block`` is ``None``). ``reason`` is the
    message without the ``"block N: "`` prefix.
    """

    block: int | None
    reason: str

    def __init__(self, reason: str, block: int | None = None) -> None:
        self.block = block
        self.reason = reason
        super().__init__(reason if block is None else f"block {block}: {reason}")


@dataclass(frozen=True, slots=True)
class Block:
    """One parsed UF2 block.

    ``family_id`` is set only when ``FLAG_FAMILY_ID_PRESENT`` is set; otherwise the word at
    offset 28 is reported as ``file_size`` (and ``family_id`` is ``None``). ``payload`` is exactly
    ``payload_size`` bytes: the start of the data area.
    """

    flags: int
    target_addr: int
    payload_size: int
    block_no: int
    num_blocks: int
    family_id: int | None
    file_size: int | None
    payload: bytes

    @property
    def skipped(self) -> bool:
        """Whether ``FLAG_NOT_MAIN_FLASH`` is set, i.e. a flasher must not write this block."""
        return bool(self.flags & FLAG_NOT_MAIN_FLASH)

    @property
    def end_addr(self) -> int:
        """The address just past this block's payload (``target_addr + payload_size``)."""
        return self.target_addr + self.payload_size


def _parse_at(buf: memoryview, offset: int, index: int) -> Block:
    """Parse and validate the 512-byte block at ``offset`` of ``buf``; errors name ``index``."""
    magic0, magic1, flags, addr, size, block_no, num_blocks, word28, magic_end = _BLOCK.unpack_from(
        buf, offset
    )
    if magic0 != MAGIC_START0:
        raise UF2Error(f"bad magic0 0x{magic0:08x}", index)
    if magic1 != MAGIC_START1:
        raise UF2Error(f"bad magic1 0x{magic1:08x}", index)
    if magic_end != MAGIC_END:
        raise UF2Error(f"bad magic end 0x{magic_end:08x}", index)
    if not 0 < size <= DATA_AREA:
        raise UF2Error(f"payload size {size} is not in 1..{DATA_AREA}", index)
    if addr + size > _ADDRESS_SPACE:
        raise UF2Error(f"payload of {size} bytes at 0x{addr:08x} runs past the 32-bit address space", index)
    if num_blocks == 0:
        raise UF2Error("total number of blocks is 0", index)
    if block_no >= num_blocks:
        raise UF2Error(f"block number {block_no} is not below the total {num_blocks}", index)
    start = offset + HEADER_SIZE
    if flags & FLAG_FAMILY_ID_PRESENT:
        family_id, file_size = word28, None
    else:
        family_id, file_size = None, word28
    return Block(
        flags, addr, size, block_no, num_blocks, family_id, file_size, bytes(buf[start : start + size])
    )


def parse_block(raw: bytes, index: int = 0) -> Block:
    """Parse and validate one block; ``raw`` must be exactly 512 bytes.

    Checks the three magic numbers, ``1 <= payload_size <= 476``, that the payload ends within
    the 32-bit address space, ``num_blocks > 0`` and ``block_no < num_blocks``. Raises
    :class:`UF2Error` whose message starts with ``"block {index}: "``.
    """
    try:
        view = memoryview(raw).cast("B")
    except TypeError as error:
        raise UF2Error(f"not a bytes-like object ({type(raw).__name__})", index) from error
    if len(view) != BLOCK_SIZE:
        raise UF2Error(f"length {len(view)}, expected {BLOCK_SIZE}", index)
    return _parse_at(view, 0, index)


@dataclass(frozen=True)
class UF2Image:
    """The blocks of a UF2 file, in file order.

    Everything below except ``blocks`` considers only blocks that are not ``skipped``.
    :func:`read_uf2` guarantees that no two of those with the same family overlap; blocks of
    different families may (a file can carry an RP2040 and an RP2350 build at one address).
    """

    blocks: tuple[Block, ...]

    def _flashed(self, families: Iterable[int] | None = None) -> list[tuple[int, Block]]:
        """(index, block) of the non-skipped blocks, restricted to ``families`` if given."""
        wanted = None if families is None else frozenset(families)
        return [
            (index, block)
            for index, block in enumerate(self.blocks)
            if not block.skipped and (wanted is None or block.family_id in wanted)
        ]

    @property
    def families(self) -> frozenset[int]:
        """Family ids of the non-skipped blocks (blocks without a family id contribute nothing)."""
        return frozenset(
            block.family_id for block in self.blocks if not block.skipped and block.family_id is not None
        )

    @property
    def payload_bytes(self) -> int:
        """Total payload of the non-skipped blocks, in bytes."""
        return sum(block.payload_size for block in self.blocks if not block.skipped)

    @property
    def address_range(self) -> tuple[int, int]:
        """``(lowest target address, highest end address exclusive)`` of the non-skipped blocks.

        ``(0, 0)`` when every block is skipped (or there is none).
        """
        flashed = [block for block in self.blocks if not block.skipped]
        if not flashed:
            return (0, 0)
        return (min(b.target_addr for b in flashed), max(b.end_addr for b in flashed))

    @property
    def all_payloads_256(self) -> bool:
        """Whether every non-skipped block has a payload of 256 bytes, as the RP2 bootroms require.

        Not an error: the UF2 format allows 1..476 bytes. True for an image without such blocks.
        """
        return all(block.payload_size == RP2_PAYLOAD_SIZE for block in self.blocks if not block.skipped)

    def segments(self, families: Iterable[int] | None = None) -> list[tuple[int, bytes]]:
        """Return the contiguous runs ``(address, data)`` of the non-skipped payloads, by address.

        Payloads that end exactly where the next one starts are merged into one run. With
        ``families``, only blocks of those families are used (e.g. one build of a file that holds
        several). Raises :class:`UF2Error` naming the later block of the file if two selected
        payloads overlap (possible only across families for an image from :func:`read_uf2`).
        """
        ordered = sorted(self._flashed(families), key=lambda item: (item[1].target_addr, item[0]))
        runs: list[tuple[int, bytes]] = []
        start = end = 0
        parts: list[bytes] = []
        last_index = -1
        for index, block in ordered:
            if parts and block.target_addr < end:
                other = last_index
                raise UF2Error(
                    f"payload at 0x{block.target_addr:08x} ({family_name(block.family_id)}) overlaps "
                    f"block {min(index, other)}; select one family",
                    max(index, other),
                )
            if parts and block.target_addr == end:
                parts.append(block.payload)
            else:
                if parts:
                    runs.append((start, b"".join(parts)))
                start, parts = block.target_addr, [block.payload]
            end = block.end_addr
            last_index = index
        if parts:
            runs.append((start, b"".join(parts)))
        return runs

    def to_binary(
        self, fill: int = 0xFF, *, families: Iterable[int] | None = None, max_size: int | None = None
    ) -> tuple[int, bytes]:
        """Return ``(base address, flat image)`` of the non-skipped payloads, gaps filled with ``fill``.

        The image spans the selected blocks' address range exactly: it starts at the lowest target
        address and ends at the highest payload end, so each block's payload appears in full,
        including any padding the block itself carries (for a file from :func:`from_binary`, the
        zeros up to a multiple of its payload size). ``(0, b"")`` when no block is selected.
        ``families`` is as for :meth:`segments`. ``max_size`` guards against files whose blocks are
        far apart (a few blocks can span 4 GiB): a larger image raises :class:`UF2Error`.
        """
        runs = self.segments(families)
        if not runs:
            return (0, b"")
        base = runs[0][0]
        size = runs[-1][0] + len(runs[-1][1]) - base
        if max_size is not None and size > max_size:
            raise UF2Error(f"flat image from 0x{base:08x} would be {size} bytes, more than {max_size}")
        if len(runs) == 1:
            return (base, runs[0][1])
        image = bytearray(bytes([fill]) * size)
        for address, data in runs:
            image[address - base : address - base + len(data)] = data
        return (base, bytes(image))


def _first_overlap(blocks: list[Block], count: int) -> UF2Error | None:
    """The overlap among ``blocks[:count]`` whose later block comes first in the file, or ``None``.

    Only non-skipped blocks of the same family (``None`` being a family of its own) are compared.
    """

    # Sorted once by (family, address); each check below scans the blocks of a prefix of the file.
    ordered = sorted(
        (-1 if b.family_id is None else b.family_id, b.target_addr, b.end_addr, i)
        for i, b in enumerate(blocks[:count])
        if not b.skipped
    )

    def overlaps(limit: int) -> bool:
        """Whether two blocks among ``blocks[:limit]`` overlap."""
        family = None
        max_end = 0
        for fam, addr, end, i in ordered:
            if i >= limit:
                continue
            if fam != family:
                family, max_end = fam, end
            elif addr < max_end:
                return True
            elif end > max_end:
                max_end = end
        return False

    if not overlaps(count):
        return None
    # The smallest prefix of the file that holds an overlap ends with the block to blame.
    low, high = 2, count  # overlaps(high) holds; overlaps(1) cannot
    while low < high:
        middle = (low + high) // 2
        if overlaps(middle):
            high = middle
        else:
            low = middle + 1
    culprit = high - 1
    block = blocks[culprit]
    other = next(
        i
        for i in range(culprit)
        if not blocks[i].skipped
        and blocks[i].family_id == block.family_id
        and blocks[i].target_addr < block.end_addr
        and block.target_addr < blocks[i].end_addr
    )
    return UF2Error(
        f"payload 0x{block.target_addr:08x}..0x{block.end_addr:08x} overlaps block {other} "
        f"(family {family_name(block.family_id)})",
        culprit,
    )


def read_uf2(data: bytes) -> UF2Image:
    """Parse and validate a whole UF2 file; raise :class:`UF2Error` for the first problem.

    Checks, in order: the file is not empty and its length is a multiple of 512; every block
    (as :func:`parse_block`); block numbering per group, a group being a maximal run of
    consecutive blocks with the same ``(family_id, num_blocks)`` that must be numbered
    ``0, 1, ..., num_blocks - 1`` exactly, in order and complete; and that no two non-skipped
    blocks of the same family overlap. Of several bad blocks, the error names the one with the
    lowest index. Any bytes-like input either parses or raises :class:`UF2Error`.
    """
    try:
        view = memoryview(data).cast("B")
    except TypeError as error:
        raise UF2Error(f"not a bytes-like object ({type(data).__name__})") from error
    length = len(view)
    if length == 0:
        raise UF2Error("empty file")
    if length % BLOCK_SIZE:
        raise UF2Error(
            f"file size {length} is not a multiple of {BLOCK_SIZE} "
            f"(last block, index {length // BLOCK_SIZE}, has {length % BLOCK_SIZE} bytes)"
        )
    count = length // BLOCK_SIZE
    blocks: list[Block] = []
    problem: UF2Error | None = None
    group_key: tuple[int | None, int] | None = None
    group_start = 0
    expected = 0
    try:
        for index in range(count):
            block = _parse_at(view, index * BLOCK_SIZE, index)
            key = (block.family_id, block.num_blocks)
            if key != group_key:
                if group_key is not None and expected != group_key[1]:
                    raise UF2Error(_incomplete(group_key, group_start, expected), index - 1)
                group_key, group_start, expected = key, index, 0
            if block.block_no != expected:
                what = "extra block" if expected >= block.num_blocks else f"expected {expected}"
                raise UF2Error(
                    f"block number {block.block_no}, {what} in the group of {block.num_blocks} blocks "
                    f"(family {family_name(block.family_id)}) starting at block {group_start}",
                    index,
                )
            expected += 1
            blocks.append(block)
        if group_key is not None and expected != group_key[1]:
            raise UF2Error(_incomplete(group_key, group_start, expected), count - 1)
    except UF2Error as error:
        problem = error
    limit = len(blocks) if problem is None or problem.block is None else min(problem.block, len(blocks))
    overlap = _first_overlap(blocks, limit)
    if overlap is not None:
        raise overlap
    if problem is not None:
        raise problem
    return UF2Image(tuple(blocks))


def _incomplete(group_key: tuple[int | None, int], group_start: int, seen: int) -> str:
    """The reason for a group that ends after ``seen`` of its blocks."""
    family, total = group_key
    return (
        f"group of {total} blocks (family {family_name(family)}) starting at block {group_start} "
        f"ends after {seen} blocks: block {seen} is missing"
    )


def outside_flash(image: UF2Image) -> str | None:
    """The first block of ``image`` that a flasher would write outside its family's flash, or ``None``.

    Only non-skipped blocks of a family in :data:`FLASH_RANGES` are checked; the answer is one line
    naming the block (its index in the file), its address and the family's flash range.
    """
    for index, block in enumerate(image.blocks):
        if block.skipped or block.family_id not in FLASH_RANGES:
            continue
        start, end = FLASH_RANGES[block.family_id]
        if start <= block.target_addr and block.end_addr <= end:
            continue
        return (
            f"block {index} targets 0x{block.target_addr:08x}..0x{block.end_addr:08x}, outside the flash "
            f"of family {family_name(block.family_id)} (0x{start:08x}..0x{end:08x})"
        )
    return None


def accepted_by(image: UF2Image, families: Iterable[int]) -> bool:
    """Whether a bootloader accepting ``families`` takes every block of ``image`` that it would flash.

    True when ``image`` has at least one non-skipped block and every non-skipped block has a
    family id in ``families``. ``RP2_ABSOLUTE`` gets no special treatment: such a block (for
    example picotool's RP2350-E10 block) is accepted only if ``RP2_ABSOLUTE`` is listed.
    Blocks without a family id are never accepted.
    """
    wanted = frozenset(families)
    flashed = [block for block in image.blocks if not block.skipped]
    return bool(flashed) and all(block.family_id in wanted for block in flashed)


def from_binary(data: bytes, base: int, family: int, payload_size: int = 256) -> bytes:
    """Build a UF2 file holding the flat binary ``data`` at address ``base``, for ``family``.

    Like ``uf2conv.py``: every block has ``FLAG_FAMILY_ID_PRESENT`` and ``payload_size`` bytes of
    payload, block ``n`` targeting ``base + n * payload_size``; the last block's payload is ``data``'s
    tail padded with ``0x00`` bytes to ``payload_size``, so the file carries ``data`` padded with
    zeros to the next multiple of ``payload_size``. The rest of each data area is ``0x00``.

    Raises ``ValueError`` if ``data`` is empty, ``payload_size`` is not in 1..476, ``base`` is
    negative or not a multiple of ``payload_size``, the padded data would run past the 32-bit
    address space, or ``family`` is not a u32.
    """
    if not 0 < payload_size <= DATA_AREA:
        raise ValueError(f"payload size {payload_size} is not in 1..{DATA_AREA}")
    if not data:
        raise ValueError("no data")
    if base < 0 or base % payload_size:
        raise ValueError(f"base 0x{base:x} is not a non-negative multiple of the payload size {payload_size}")
    if not 0 <= family < _ADDRESS_SPACE:
        raise ValueError(f"family id {family!r} is not a 32-bit value")
    num_blocks = -(-len(data) // payload_size)
    if base + num_blocks * payload_size > _ADDRESS_SPACE:
        raise ValueError(f"{len(data)} bytes at 0x{base:x} run past the 32-bit address space")
    padded = bytes(data) + bytes(num_blocks * payload_size - len(data))
    header = struct.Struct("<8I")
    filler = bytes(DATA_AREA - payload_size)
    end = struct.pack("<I", MAGIC_END)
    parts: list[bytes] = []
    for block_no in range(num_blocks):
        offset = block_no * payload_size
        parts.append(
            header.pack(
                MAGIC_START0,
                MAGIC_START1,
                FLAG_FAMILY_ID_PRESENT,
                base + offset,
                payload_size,
                block_no,
                num_blocks,
                family,
            )
        )
        parts.append(padded[offset : offset + payload_size])
        parts.append(filler)
        parts.append(end)
    return b"".join(parts)
