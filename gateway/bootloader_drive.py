"""An RP2 bootloader drive read without mounting it, and the checks before writing one raw.

The RP2040 and RP2350 bootroms present a 128 MiB USB disk: sector 0 is an MBR whose one
partition, from sector 1, holds a FAT16 filesystem labelled ``RPI-RP2`` or ``RP2350`` with
``INDEX.HTM`` and ``INFO_UF2.TXT`` in its root (pico-bootrom-rp2040 ``virtual_disk.c``,
pico-bootrom-rp2350 ``usb_virtual_disk.c``). :func:`read_info_uf2` reads INFO_UF2.TXT straight
from the block device with pyfatfs: the partition (``/dev/sda1``) or the whole disk
(``/dev/sda``, whose MBR is followed to its first FAT partition), or an image file standing in
for either. No mount: no privileges beyond read access to the device node, no mount namespace
needed in a container, nothing left mounted when the board reboots or is unplugged.

Only pyfatfs's low-level :class:`pyfatfs.PyFat.PyFat` is used. Its PyFilesystem2 layer
(``PyFatFS``) imports the ``fs`` package, which calls ``pkg_resources`` at import, and
setuptools 82 no longer ships ``pkg_resources`` (PyFilesystem/pyfilesystem2#577). The RP2040
bootrom's FAT boot sector has no 0x55AA signature, which pyfatfs insists on: reads go through
:class:`_SignedBootSector`, which shows it.

Before anything is written raw to a drive, :func:`check_raw_write` insists that
:func:`mark_checked` recorded its INFO_UF2.TXT as naming the board's chip (flashing.py does,
after its check), that INFO_UF2.TXT still says so, that the device is no larger than an RP2
bootloader drive can be, and that the image is nothing but UF2 blocks.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from typing import Any, BinaryIO

from pyfatfs.PyFat import PyFat

from picofleet.firmware.formats import uf2
from picofleet.gateway.models import BoardError

__all__ = [
    "INFO_FILE",
    "MAX_DRIVE_BYTES",
    "board_ids",
    "check_raw_write",
    "drive_size",
    "mark_checked",
    "read_info_uf2",
]

INFO_FILE = "INFO_UF2.TXT"
MAX_DRIVE_BYTES = 1 << 30
"""Largest device the gateway writes raw: the RP2 bootroms present 128 MiB; 1 GiB leaves room."""
MAX_INFO_BYTES = 4096
"""INFO_UF2.TXT is a few lines (62 bytes on an RP2040); anything longer is not a bootrom's."""
SECTOR = 512
_FAT_PARTITION_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
"""MBR partition types of FAT12/16/32 (the bootroms use 0x0E, FAT16 LBA)."""
_UF2_MAGICS = struct.Struct("<II")
_UF2_MAGIC_END = struct.Struct("<I")

_checked: dict[str, str] = {}  # real path of a raw drive -> the Board-ID its INFO_UF2.TXT was checked to name
_checked_lock = threading.Lock()


def read_info_uf2(drive: str) -> str:
    """Return the text of INFO_UF2.TXT on a bootloader drive.

    ``drive`` is a directory (a mounted or virtual drive), or a block device or image file
    read without mounting it. Raises :class:`BoardError` with the reason when it cannot be read.
    """
    try:
        if os.path.isdir(drive):
            with open(os.path.join(drive, INFO_FILE), "rb") as handle:
                data = handle.read(MAX_INFO_BYTES + 1)
        else:
            data = _read_from_fat(drive)
    except BoardError as error:
        raise BoardError(f"cannot read {INFO_FILE} on its bootloader drive {drive}: {error}") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise BoardError(f"cannot read {INFO_FILE} on its bootloader drive {drive}: {reason}") from None
    if len(data) > MAX_INFO_BYTES:
        raise BoardError(f"{INFO_FILE} on {drive} is larger than {MAX_INFO_BYTES} bytes: not a bootrom's")
    return data.decode("ascii", errors="replace")


def board_ids(info: str) -> list[str]:
    """The values of the ``Board-ID:`` lines of an INFO_UF2.TXT text."""
    return [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Board-ID:")]


def _fat_offset(sector: bytes) -> int:
    """Where the FAT filesystem starts, judged by the first sector: 0 in a partition, else per the MBR."""
    if len(sector) < SECTOR:
        raise BoardError("it is smaller than one sector")
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    if sector[0] in (0xEB, 0xE9) and bytes_per_sector in (512, 1024, 2048, 4096):
        return 0  # a FAT boot sector (the RP2040 bootrom's has no 0x55AA signature: not required here)
    if sector[510:512] == b"\x55\xaa":
        for entry in range(4):  # an MBR: the bootroms' one partition starts at sector 1
            at = 446 + 16 * entry
            kind = sector[at + 4]
            start = int.from_bytes(sector[at + 8 : at + 12], "little")
            if kind in _FAT_PARTITION_TYPES and start > 0:
                return start * SECTOR
        raise BoardError("its partition table has no FAT partition")
    raise BoardError("no FAT filesystem or partition table in its first sector")


class _SignedBootSector(io.RawIOBase):
    """A read-only view of a drive in which the FAT boot sector ends with the 0x55AA signature.

    The RP2040 bootrom's boot sector lacks it (pico-bootrom-rp2040 ``virtual_disk.c`` copies a
    64-byte header into a zeroed sector; the RP2350 bootrom sets it). Linux's vfat does not
    require it; pyfatfs refuses to parse the filesystem without it, so reads show it.
    """

    def __init__(self, handle: BinaryIO, fat_offset: int) -> None:
        super().__init__()
        self._handle = handle
        self._signature_at = fat_offset + 510

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def readinto(self, buffer: Any) -> int:
        start = self._handle.tell()
        data = self._handle.read(len(buffer))
        view = memoryview(buffer).cast("B")
        view[: len(data)] = data
        for at, value in ((self._signature_at, 0x55), (self._signature_at + 1, 0xAA)):
            if start <= at < start + len(data):
                view[at - start] = value
        return len(data)


def _read_from_fat(path: str) -> bytes:
    """Read INFO_UF2.TXT from the root directory of the FAT filesystem in a device or image."""
    with open(path, "rb") as handle:
        offset = _fat_offset(handle.read(SECTOR))
        fat = PyFat(offset=offset)
        try:
            fat.set_fp(_SignedBootSector(handle, offset))  # not writable: pyfatfs writes nothing
            entry = fat.root_dir.get_entry(INFO_FILE)
            if entry.is_directory() or entry.filesize > MAX_INFO_BYTES:
                raise BoardError(f"its {INFO_FILE} is not a small file")
            if entry.filesize == 0:
                return b""
            data = b""
            for cluster in fat.get_cluster_chain(entry.get_cluster()):
                data += fat.read_cluster_contents(cluster)
                if len(data) >= entry.filesize:
                    break
            if len(data) < entry.filesize:
                raise BoardError(f"its {INFO_FILE} ends early")
            return data[: entry.filesize]
        except (BoardError, OSError):
            raise
        except Exception as error:  # pyfatfs raises PyFATException, and whatever a corrupt FAT leads it to
            raise BoardError(f"not a readable FAT filesystem ({error})") from None


def drive_size(drive: str) -> int:
    """Size in bytes of a block device or image file."""
    fd = os.open(drive, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def mark_checked(drive: str, board_id: str) -> None:
    """Record that ``drive``'s INFO_UF2.TXT named ``board_id``, the board's chip (directories: no-op).

    The mark is used up by the next :func:`check_raw_write` of that drive: every raw write
    follows its own check.
    """
    if os.path.isdir(drive):
        return
    with _checked_lock:
        _checked[os.path.realpath(drive)] = board_id


def check_raw_write(drive: str, image: bytes) -> None:
    """Refuse a raw write of ``image`` to ``drive`` unless everything says it is the board's bootloader.

    Raises :class:`BoardError` when INFO_UF2.TXT was not checked for this write, no longer names
    the checked chip or cannot be read; when the device is larger than :data:`MAX_DRIVE_BYTES`
    (``"refusing to write to DEV: N bytes is not an RP2 bootloader drive"``) or smaller than
    the image; or when the image is not whole UF2 blocks.
    """
    with _checked_lock:
        checked = _checked.pop(os.path.realpath(drive), None)
    if checked is None:
        raise BoardError(f"refusing to write to {drive}: its {INFO_FILE} was not checked first")
    try:
        size = drive_size(drive)
    except OSError as error:
        raise BoardError(f"cannot open the bootloader drive {drive}: {error.strerror}") from None
    if size > MAX_DRIVE_BYTES:
        raise BoardError(f"refusing to write to {drive}: {size} bytes is not an RP2 bootloader drive")
    if size < len(image):
        raise BoardError(
            f"refusing to write to {drive}: {size} bytes is too small for a {len(image)}-byte UF2"
        )
    _check_uf2_blocks(drive, image)
    now = board_ids(read_info_uf2(drive))
    if now != [checked]:
        found = now[0] if now else "no Board-ID"
        raise BoardError(f"refusing to write to {drive}: its {INFO_FILE} now says {found!r}, not {checked!r}")


def _check_uf2_blocks(drive: str, image: bytes) -> None:
    if not image or len(image) % uf2.BLOCK_SIZE:
        raise BoardError(
            f"refusing to write to {drive}: {len(image)} bytes are not whole 512-byte UF2 blocks"
        )
    for offset in range(0, len(image), uf2.BLOCK_SIZE):
        magics = _UF2_MAGICS.unpack_from(image, offset)
        (end,) = _UF2_MAGIC_END.unpack_from(image, offset + uf2.BLOCK_SIZE - 4)
        if magics != (uf2.MAGIC_START0, uf2.MAGIC_START1) or end != uf2.MAGIC_END:
            index = offset // uf2.BLOCK_SIZE
            raise BoardError(f"refusing to write to {drive}: block {index} of the image is not a UF2 block")
