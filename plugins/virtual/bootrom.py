"""The simulated ROM UF2 bootloader: a drive directory and the block checks of the real bootroms.

The real RP2040/RP2350 bootroms ignore the FAT file system: every 512-byte sector the host
writes is checked on its own and flashed if it is a valid UF2 block for the chip. The simulated
drive is a directory; :class:`DriveWatcher` reads every complete 512-byte block of every file
written into it (the writer may write progressively, create temporary files and rename them:
files are followed by inode so that a rename does not feed the same blocks twice) and hands them
to :class:`ImageAssembler`.

**Complete-image rule.** A block is *accepted* when it parses (:func:`uf2.parse_block`), has no
``FLAG_NOT_MAIN_FLASH``, carries a family the chip accepts and a 256-byte payload; anything
else is ignored, as the bootroms do. Accepted blocks are grouped by ``(family_id, num_blocks)``
(a later block with the same number replaces the earlier one). A group is complete when it holds
every block number ``0 .. num_blocks - 1``. The image is taken when at least one group is
complete and no accepted block has arrived for the reboot delay (``PICOFLEET_SIM_REBOOT_DELAY``,
0.3 s): it is the complete group with the most blocks (of equal ones, the first to start). So
picotool's RP2350-E10 extra block (``RP2_ABSOLUTE``, block 0 of 1) written with the image
does not count as the image, and a file of wrong-family blocks changes nothing.

**Boot rule.** At reset the bootrom boots the flash only if it holds what the real chip's bootrom
accepts (:func:`boot_refusal`, ``firmware/formats/boot_header.py``): on an RP2040 a boot2 stage
whose CRC-32 is right, on an RP2350 a valid IMAGE_DEF block in the first 4 KiB. Otherwise the
board comes back in BOOTSEL, as with a blank flash.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from picofleet.firmware.formats import boot_header, uf2
from picofleet.plugins.virtual import identities

BLOCK_SIZE = 512
PAYLOAD_SIZE = 256
DRIVE_FILES = ("INFO_UF2.TXT", "INDEX.HTM")
"""The files the bootloader drive shows; the watcher never reads them as UF2."""


class ImageAssembler:
    """Collects the accepted UF2 blocks the host writes and decides when an image is complete."""

    def __init__(self, families: frozenset[int]) -> None:
        self.families = families
        self.groups: dict[tuple[int, int], dict[int, bytes]] = {}
        self.accepted = 0
        self.ignored = 0
        self.last_accepted: float | None = None

    def feed(self, raw: bytes, now: float | None = None) -> bool:
        """Check one 512-byte block; keep it if the bootrom would flash it. Returns whether kept."""
        try:
            block = uf2.parse_block(raw)
        except uf2.UF2Error:
            self.ignored += 1
            return False
        if block.skipped or block.family_id not in self.families or block.payload_size != PAYLOAD_SIZE:
            self.ignored += 1
            return False
        group = self.groups.setdefault((block.family_id, block.num_blocks), {})
        group[block.block_no] = bytes(raw)
        self.accepted += 1
        self.last_accepted = time.monotonic() if now is None else now
        return True

    def complete_image(self) -> bytes | None:
        """The blocks (in block order) of the largest complete group, or ``None``."""
        best: tuple[int, int] | None = None
        for key, group in self.groups.items():  # insertion order: the first group to start wins ties
            if len(group) == key[1] and (best is None or key[1] > best[1]):
                best = key
        if best is None:
            return None
        group = self.groups[best]
        return b"".join(group[number] for number in range(best[1]))

    def ready(self, delay: float, now: float | None = None) -> bytes | None:
        """The image to flash once the host has been quiet for ``delay`` seconds, else ``None``."""
        if self.last_accepted is None:
            return None
        now = time.monotonic() if now is None else now
        if now - self.last_accepted < delay:
            return None
        return self.complete_image()


class DriveWatcher:
    """The bootloader drive of one board: a directory the host writes UF2 files into."""

    def __init__(self, path: Path, board_type: str) -> None:
        self.path = path
        self.board_type = board_type
        self.assembler = ImageAssembler(identities.accepted_families(board_type))
        self._offsets: dict[int, int] = {}  # inode -> bytes already read

    def create(self) -> None:
        """Make the drive appear: a fresh directory with INFO_UF2.TXT and INDEX.HTM."""
        remove_drive(self.path)
        self.path.mkdir(parents=True)
        (self.path / "INFO_UF2.TXT").write_text(identities.info_uf2(self.board_type))
        (self.path / "INDEX.HTM").write_text(identities.index_htm(self.board_type))

    def remove(self) -> None:
        """Make the drive disappear."""
        remove_drive(self.path)

    def scan(self) -> int:
        """Read every new complete block of every file on the drive; return how many were read."""
        count = 0
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name in DRIVE_FILES:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            offset = self._offsets.get(status.st_ino, 0)
            if status.st_size < offset:
                offset = 0  # truncated and written again: these are new sectors
            whole = (status.st_size - offset) // BLOCK_SIZE * BLOCK_SIZE
            if whole <= 0:
                self._offsets[status.st_ino] = offset
                continue
            try:
                with open(entry.path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(whole)
            except FileNotFoundError:
                continue
            data = data[: len(data) // BLOCK_SIZE * BLOCK_SIZE]
            for start in range(0, len(data), BLOCK_SIZE):
                self.assembler.feed(data[start : start + BLOCK_SIZE])
                count += 1
            self._offsets[status.st_ino] = offset + len(data)
        return count


def remove_drive(path: Path) -> None:
    """Delete a drive directory and whatever the host left in it."""
    shutil.rmtree(path, ignore_errors=True)


def boot_refusal(base: int, binary: bytes, board_type: str) -> str | None:
    """Why the board's bootrom would not boot a flash holding ``binary`` at address ``base``, or ``None``.

    Flash below ``base`` is erased (0xff), as after a UF2 that starts past the flash's start. The
    reason is one line starting with "image" (``boot_header.check``).
    """
    offset = base - boot_header.FLASH_BASE
    if offset < 0 or offset >= uf2.RP2_FLASH_MAX:
        return f"image is not in flash (it starts at 0x{base:08x})"
    # only the first 4 KiB can hold the start of a boot header: past that, the start is erased
    flash = b"\xff" * offset + binary if offset < boot_header.FIRST_BLOCK_WINDOW else b""
    return boot_header.check(flash, identities.chip_of(board_type))
