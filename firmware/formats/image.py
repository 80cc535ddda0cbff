"""The image descriptor that tells which picofleet firmware a flash image holds (PROTOCOL.md).

Real firmware images embed it as a constant; the virtual boards read it from their flash
contents to decide what to boot, just as picotool reads binary info from a real image. The
images built here start with the boot header of the board's chip (boot_header.py), so that a
real or virtual bootrom boots them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

from picofleet.firmware.formats import boot_header

if TYPE_CHECKING:
    from picofleet.firmware.formats.uf2 import UF2Image

MAGIC = b"PFIMAGE1"
FLASH_BASE = boot_header.FLASH_BASE
"""Where RP2040/RP2350 application images start (XIP flash)."""


def make_descriptor(name: str, version: str, board: str) -> bytes:
    """Return the descriptor bytes for firmware ``name`` ``version`` built for ``board``."""
    body = json.dumps({"name": name, "version": version, "board": board}, sort_keys=True).encode()
    return MAGIC + struct.pack("<H", len(body)) + body


def make_app_image(
    name: str, version: str, board: str, size: int = 4096, *, chip: str | None = None, broken: bool = False
) -> bytes:
    """Return a bootable flash image of ``size`` bytes (at least header and descriptor) for ``board``.

    It starts with the boot header of the board's chip (``boot_header.build``: RP2040 boot2 with
    its CRC, RP2350 IMAGE_DEF block), then the descriptor; the rest is deterministic filler so
    that two versions differ in content, as real builds do. ``chip`` (``rp2040``/``rp2350``)
    is needed only for a board type that is not built in (a plugin's). ``broken`` writes a boot
    header the chip refuses (the board stays in BOOTSEL), for tests and demos of a bad release.
    Raises :class:`ValueError` for a board type that is not built in when ``chip`` is not given.
    """
    header = boot_header.build(chip.lower() if chip else boot_header.chip_of_board(board), broken=broken)
    descriptor = make_descriptor(name, version, board)
    filler_seed = f"{name}:{version}:{board}".encode()
    used = len(header) + len(descriptor)
    filler = (filler_seed * (size // max(len(filler_seed), 1) + 1))[: max(size - used, 0)]
    return header + descriptor + filler


def find_descriptor(image: bytes) -> dict[str, str] | None:
    """Return the first valid descriptor's fields in ``image``, or ``None`` if it has none."""
    start = image.find(MAGIC)
    while start != -1:
        length_at = start + len(MAGIC)
        if length_at + 2 <= len(image):
            (length,) = struct.unpack_from("<H", image, length_at)
            body = image[length_at + 2 : length_at + 2 + length]
            try:
                fields = json.loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
                fields = None
            if isinstance(fields, dict) and {"name", "version", "board"} <= fields.keys():
                return {key: str(fields[key]) for key in ("name", "version", "board")}
        start = image.find(MAGIC, start + 1)
    return None


MAX_FLASH_IMAGE = 32 * 1024 * 1024
"""The largest flash of an RP2 board (RP2350: 32 MiB per chip select): the bound of a flat image."""


def uf2_version(parsed: UF2Image, families: Iterable[int] | None = None) -> str | None:
    """The firmware version a parsed UF2 carries (its descriptor), or ``None`` if it has none.

    ``families`` picks the build a board would take from a file with several. Raises
    :class:`~picofleet.firmware.formats.uf2.UF2Error` when the blocks span more than a board's flash.
    """
    _, flat = parsed.to_binary(families=families, max_size=MAX_FLASH_IMAGE)
    descriptor = find_descriptor(flat)
    return descriptor["version"] if descriptor else None
