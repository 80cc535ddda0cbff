"""The boot headers the RP2040 and RP2350 bootroms look for in flash: build them and check them.

A real chip boots a flash image only if its bootrom accepts the start of it; otherwise it comes
back in BOOTSEL (its UF2 bootloader drive). The images picofleet builds carry such a header
(:func:`build`, used by ``image.make_app_image``) and the virtual bootroms boot only what
:func:`check` accepts, so a virtual board refuses what a real one would.

**RP2040** (RP2040 datasheet 2.8.1, pico-sdk ``src/rp2040/boot_stage2``): the first 256 bytes
of flash are the *boot2* stage, copied to SRAM and entered only if their last 4 bytes hold the
CRC-32 of the first 252: polynomial 0x04c11db7, initial value 0xffffffff, input and output not
reflected, no final xor (CRC-32/MPEG-2), stored little-endian. That is what pico-sdk's
``pad_checksum -s 0xffffffff`` writes. Erased flash (0xff) fails the check.

**RP2350** (RP2350 datasheet 5.9 "Metadata block details", pico-sdk ``boot/picobin.h`` and
``pico_crt0/embedded_start_block.inc.S``, the bootrom's ``varm_blocks.c``): there is no CRC-ed
boot2; the bootrom scans the first 4 KiB of flash, word by word, for the first valid *block*::

    0xffffded3                      start marker
    items                           each: byte 0 type (bit 7: 2-byte size), then its size in
                                    words (1 byte, or 2 bytes if bit 7), then item data
    0xff, size_lo, size_hi, 0x00    LAST item: the size in words of the items before it
    link                            signed offset in bytes from this block's start marker to
                                    the next block's (0: a block that links to itself)
    0xab123579                      end marker

Blocks form a loop: from the first block, each link must land on another valid block and the
last must link back to the first (a single block links to itself; pico-sdk's default binaries
have two, one at the start and one at the end of the image). An *IMAGE_DEF* is a block whose
first item is IMAGE_TYPE (0x42, 1 word) with the flags halfword: image type (bits 0-3, 1 = EXE,
2 = DATA), security (bits 4-5: 0 unspecified, 1 non-secure, 2 secure), CPU (bits 8-10: 0 Arm,
1 RISC-V, 2 Varmulet), chip (bits 12-14: 0 RP2040, 1 RP2350), TBYB (bit 15). Of the loop's
executable IMAGE_DEFs the bootrom takes the last one, preferring those for the CPU it booted on
(Arm); it boots it if it is for the RP2350, runs on Arm or RISC-V (it switches architecture for
a RISC-V image, as a chip whose OTP does not forbid it does) and is not an Arm non-secure image.

Not modelled: partition tables (a PARTITION_TABLE block is skipped like any other block),
hashes and signatures (a chip without secure boot does not check signatures; a HASH_VALUE is not
verified here), the TBYB flag (treated as an ordinary image), load maps, rolling windows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from picofleet.firmware.formats import uf2

RP2040 = "rp2040"
RP2350 = "rp2350"
CHIPS = (RP2040, RP2350)
"""The chips whose bootroms this module knows (board plugins name them ``RP2040``/``RP2350``)."""

# --- RP2040: boot2 with CRC ----------------------------------------------------------------------

BOOT2_SIZE = 256
"""The RP2040 boot2 stage: 252 bytes of code and its CRC-32."""
BOOT2_CRC_POLY = 0x04C11DB7
BOOT2_CRC_INIT = 0xFFFFFFFF

# --- RP2350: PICOBIN blocks (pico-sdk boot/picobin.h) --------------------------------------------

BLOCK_MARKER_START = 0xFFFFDED3
BLOCK_MARKER_END = 0xAB123579
MAX_BLOCK_SIZE = 0x280
"""The bootrom's block buffer: a block's LAST item must lie within this many bytes of its start."""
MAX_IMAGE_DEF_BLOCK_SIZE = 0x180
FIRST_BLOCK_WINDOW = 0x1000
"""The first block of a flash image must start within its first 4 KiB."""
MAX_LOOP_BLOCKS = 64
"""A loop longer than this is taken as one that never returns to its first block."""

ITEM_1BS_IMAGE_TYPE = 0x42
ITEM_2BS_IGNORED = 0xFE
ITEM_2BS_LAST = 0xFF
ITEM_1BS_VERSION = 0x48
ITEM_1BS_HASH_DEF = 0x47
ITEM_HASH_VALUE = 0x4B
ITEM_SIGNATURE = 0x09

IMAGE_TYPE_EXE = 0x1
IMAGE_TYPE_DATA = 0x2
IMAGE_TYPE_BITS = 0x000F
EXE_SECURITY_LSB = 4
EXE_SECURITY_BITS = 0x0030
SECURITY_UNSPECIFIED, SECURITY_NS, SECURITY_S = 0, 1, 2
EXE_CPU_LSB = 8
EXE_CPU_BITS = 0x0700
CPU_ARM, CPU_RISCV, CPU_VARMULET = 0, 1, 2
EXE_CHIP_LSB = 12
EXE_CHIP_BITS = 0x7000
CHIP_RP2040, CHIP_RP2350 = 0, 1
EXE_TBYB_BITS = 0x8000

SRAM_END_RP2350 = 0x20082000
"""The initial stack pointer of the vector table :func:`build` puts before the block."""
FLASH_BASE = uf2.RP2_FLASH_BASE

_WORD = struct.Struct("<I")


def image_type_flags(
    chip: str = RP2350, cpu: int = CPU_ARM, security: int | None = None, image_type: int = IMAGE_TYPE_EXE
) -> int:
    """The IMAGE_TYPE flags of an executable for ``chip`` and ``cpu``, as pico-sdk's crt0 sets them.

    ``security`` defaults as crt0 does: secure for an Arm RP2350 image, non-secure for RP2040,
    unspecified for RISC-V.
    """
    if security is None:
        secure = SECURITY_NS if chip == RP2040 else SECURITY_S
        security = SECURITY_UNSPECIFIED if cpu == CPU_RISCV else secure
    chip_bits = CHIP_RP2040 if chip == RP2040 else CHIP_RP2350
    return image_type | (security << EXE_SECURITY_LSB) | (cpu << EXE_CPU_LSB) | (chip_bits << EXE_CHIP_LSB)


def boot2_crc(data: bytes) -> int:
    """CRC-32/MPEG-2 of ``data``: what the RP2040 bootrom checks boot2 with (see the module doc)."""
    crc = BOOT2_CRC_INIT
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ BOOT2_CRC_POLY) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def make_boot2(stage: bytes | None = None) -> bytes:
    """A 256-byte RP2040 boot2: ``stage`` (at most 252 bytes) padded with zeros, then its CRC.

    The default stage is a placeholder (no flash set-up code: virtual boards do not execute it).
    """
    if stage is None:
        stage = b"picofleet virtual boot2\x00"
    if len(stage) > BOOT2_SIZE - 4:
        raise ValueError(f"a boot2 stage is at most {BOOT2_SIZE - 4} bytes, not {len(stage)}")
    padded = stage + bytes(BOOT2_SIZE - 4 - len(stage))
    return padded + _WORD.pack(boot2_crc(padded))


def make_block(items: list[bytes], link: int = 0) -> bytes:
    """One PICOBIN block holding ``items`` (each a whole number of words), its LAST item and ``link``."""
    body = b"".join(items)
    if len(body) % 4:
        raise ValueError("block items must be a whole number of words")
    words = len(body) // 4
    last = struct.pack("<BHB", ITEM_2BS_LAST, words, 0)
    end = struct.pack("<iI", link, BLOCK_MARKER_END)
    return _WORD.pack(BLOCK_MARKER_START) + body + last + end


def image_type_item(flags: int) -> bytes:
    """The IMAGE_TYPE item (1 word) with ``flags``."""
    return struct.pack("<BBH", ITEM_1BS_IMAGE_TYPE, 1, flags)


def make_image_def(flags: int | None = None, link: int = 0) -> bytes:
    """The IMAGE_DEF block pico-sdk's crt0 puts near the start of an RP2350 image (20 bytes).

    ``flags`` defaults to a secure Arm executable for the RP2350; ``link`` 0 makes it a loop of one.
    """
    return make_block([image_type_item(image_type_flags() if flags is None else flags)], link)


def _vector_table(header_size: int) -> bytes:
    """The first two words of an Arm vector table: initial stack pointer and reset handler (Thumb)."""
    return _WORD.pack(SRAM_END_RP2350) + _WORD.pack((FLASH_BASE + header_size) | 1)


def build(chip: str, *, broken: bool = False) -> bytes:
    """The start of a bootable flash image for ``chip`` (``rp2040`` or ``rp2350``).

    RP2040: the 256-byte boot2 with its CRC. RP2350: a vector table's first two words then the
    IMAGE_DEF block of a secure Arm executable (28 bytes). ``broken`` builds a header the chip's
    bootrom refuses: boot2 whose CRC is off by one bit, an IMAGE_DEF for the RP2040.
    """
    if chip == RP2040:
        boot2 = bytearray(make_boot2())
        if broken:
            boot2[-1] ^= 0x01
        return bytes(boot2)
    if chip == RP2350:
        flags = image_type_flags(RP2040 if broken else RP2350)
        block = make_image_def(flags)
        return _vector_table(8 + len(block)) + block
    raise ValueError(f"unknown chip '{chip}' (known: {', '.join(CHIPS)})")


def bootable(chip: str, body: bytes) -> bytes:
    """``body`` behind :func:`build`'s header for ``chip``: a flash image the bootrom boots."""
    return build(chip) + body


# --- checking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A valid PICOBIN block found in an image: where it starts, its item words, its link."""

    offset: int
    words: tuple[int, ...]
    """The item words, from the first item up to (not including) the LAST item."""
    link: int

    @property
    def size_words(self) -> int:
        """The block size the bootrom parses: start marker and items (the LAST item's position)."""
        return 1 + len(self.words)


class _LoopError(ValueError):
    """The block loop is broken: the bootrom gives up on the image."""


def _word(image: bytes, offset: int) -> int | None:
    if offset < 0 or offset + 4 > len(image):
        return None
    value: int = _WORD.unpack_from(image, offset)[0]
    return value


def _item_size(header: int) -> int:
    return (header >> 8) & 0xFFFF if header & 0x80 else (header >> 8) & 0xFF


def _parse_block(image: bytes, offset: int) -> Block | None:
    """The block whose start marker is at ``offset``; ``None`` if its LAST item is not within reach.

    Raises :class:`_LoopError` for a block the bootrom rejects outright (a zero-sized item, a LAST
    item whose size is wrong or no end marker after it), as ``s_varm_crit_next_block`` does.
    """
    limit = min(len(image), offset + MAX_BLOCK_SIZE) // 4 * 4  # what the bootrom's buffer holds
    position = offset + 4
    while position + 4 <= limit:
        header = _word(image, position)
        assert header is not None
        size = _item_size(header)
        if size == 0:
            raise _LoopError(f"the block at 0x{offset:x} has a zero-sized item at 0x{position:x}")
        if header & 0xFF == ITEM_2BS_LAST:
            items = (position - offset - 4) // 4
            if size != items:
                raise _LoopError(
                    f"the block at 0x{offset:x} has a LAST item of size {size}, not {items} (its items)"
                )
            link, end = _word(image, position + 4), _word(image, position + 8)
            if link is None or end != BLOCK_MARKER_END or position + 12 > limit:
                raise _LoopError(f"the block at 0x{offset:x} has no end marker after its LAST item")
            words = tuple(_WORD.unpack_from(image, at)[0] for at in range(offset + 4, position, 4))
            return Block(offset, words, struct.unpack("<i", _WORD.pack(link))[0])
        position += size * 4
    return None


def find_block_loop(image: bytes) -> list[Block]:
    """The block loop of a flash image, first block first; ``[]`` if there is no first block.

    Raises :class:`ValueError` (one line) when there is a first block but the loop is broken.
    """
    first: Block | None = None
    for offset in range(0, min(len(image), FIRST_BLOCK_WINDOW), 4):
        if _word(image, offset) != BLOCK_MARKER_START:
            continue
        first = _parse_block(image, offset)
        if first is not None:
            break
    if first is None:
        return []
    loop = [first]
    current = first
    while True:
        target = current.offset + int(current.link / 4) * 4  # C's division: truncates toward zero
        if target == first.offset:
            return loop
        if current is not first and current.link == 0:
            raise _LoopError(f"the block at 0x{current.offset:x} links to itself, not to the first block")
        if target < first.offset:
            raise _LoopError(f"the block at 0x{current.offset:x} links below the first block")
        if _word(image, target) != BLOCK_MARKER_START:
            raise _LoopError(f"the block at 0x{current.offset:x} links to 0x{target:x}: no block there")
        following = _parse_block(image, target)
        if following is None:
            raise _LoopError(f"the block at 0x{target:x} (linked from 0x{current.offset:x}) is not complete")
        if len(loop) >= MAX_LOOP_BLOCKS or any(block.offset == following.offset for block in loop):
            raise _LoopError("the block loop does not return to its first block")
        loop.append(following)
        current = following


def image_def_flags(block: Block) -> int | None:
    """The IMAGE_TYPE flags of an IMAGE_DEF block (first item IMAGE_TYPE of size 1), else ``None``."""
    if not block.words or block.words[0] & 0xFFFF != (0x100 | ITEM_1BS_IMAGE_TYPE):
        return None
    return block.words[0] >> 16


def _chip_name(flags: int) -> str:
    chip = (flags & EXE_CHIP_BITS) >> EXE_CHIP_LSB
    return {CHIP_RP2040: "RP2040", CHIP_RP2350: "RP2350"}.get(chip, f"chip {chip}")


def _check_rp2350(image: bytes) -> str | None:
    try:
        loop = find_block_loop(image)
    except _LoopError as error:
        return f"image has an invalid block loop: {error}"
    if not loop:
        return "image has no valid IMAGE_DEF block in the first 4 KiB"
    chosen: int | None = None
    for block in loop:
        flags = image_def_flags(block)
        if flags is None or flags & IMAGE_TYPE_BITS != IMAGE_TYPE_EXE:
            continue  # not an IMAGE_DEF, or not an executable one: flash boot ignores it
        if block.size_words > MAX_IMAGE_DEF_BLOCK_SIZE // 4:
            continue
        cpu = (flags & EXE_CPU_BITS) >> EXE_CPU_LSB
        if chosen is not None and cpu != CPU_ARM and (chosen & EXE_CPU_BITS) >> EXE_CPU_LSB == CPU_ARM:
            continue  # the bootrom keeps an image for the CPU it booted on
        chosen = flags
    if chosen is None:
        return "image has no valid IMAGE_DEF block (none executable in its block loop)"
    if (chosen & EXE_CHIP_BITS) >> EXE_CHIP_LSB != CHIP_RP2350:
        return f"image has an IMAGE_DEF for the {_chip_name(chosen)}, not the RP2350"
    cpu = (chosen & EXE_CPU_BITS) >> EXE_CPU_LSB
    if cpu not in (CPU_ARM, CPU_RISCV):
        return f"image has an IMAGE_DEF for CPU {cpu} (Varmulet or unknown), not Arm or RISC-V"
    if cpu == CPU_ARM and (chosen & EXE_SECURITY_BITS) >> EXE_SECURITY_LSB == SECURITY_NS:
        return "image has an IMAGE_DEF of an Arm non-secure image, which the bootrom does not boot"
    return None


def _check_rp2040(image: bytes) -> str | None:
    boot2 = image[:BOOT2_SIZE]
    if len(boot2) < BOOT2_SIZE:
        boot2 += b"\xff" * (BOOT2_SIZE - len(boot2))  # erased flash after a short image
    expected = boot2_crc(boot2[: BOOT2_SIZE - 4])
    (stored,) = _WORD.unpack_from(boot2, BOOT2_SIZE - 4)
    if stored != expected:
        return f"image has no valid boot2: CRC 0x{stored:08x}, its first 252 bytes give 0x{expected:08x}"
    return None


def check(image: bytes, chip: str) -> str | None:
    """Why ``chip``'s bootrom would not boot the flash image ``image`` (from flash offset 0), else ``None``.

    ``chip`` is ``rp2040`` or ``rp2350`` (case-insensitive). The reason is one line starting with
    "image", e.g. ``image has no valid IMAGE_DEF block in the first 4 KiB``.
    """
    chip = chip.lower()
    if chip == RP2040:
        return _check_rp2040(image)
    if chip == RP2350:
        return _check_rp2350(image)
    raise ValueError(f"unknown chip '{chip}' (known: {', '.join(CHIPS)})")


BOARD_CHIPS = {"rp2040": RP2040, "rp2350": RP2350, "pico2-ice": RP2350}
"""The chips of the built-in board types (a plugin's ``BoardType.chip`` names others' chips)."""


def chip_of_board(board: str) -> str:
    """The chip of a built-in board type; raises :class:`ValueError` (one line) for another name."""
    try:
        return BOARD_CHIPS[board]
    except KeyError:
        raise ValueError(
            f"unknown board type '{board}' (known: {', '.join(BOARD_CHIPS)}): name its chip"
        ) from None
