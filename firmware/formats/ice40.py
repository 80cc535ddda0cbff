"""What both forms of an iCE40UP5K bitstream share: the up5k's memory geometry and :class:`BitstreamError`.

The two forms (YosysHQ IceStorm) are read by :mod:`.ice40_bin` (``.bin``, what the FPGA is sent)
and :mod:`.ice40_asc` (``.asc``, IceStorm's text); :mod:`.bitstream` is the front door.
"""

from __future__ import annotations

__all__ = [
    "ICEPACK_UP5K_SIZE",
    "UP5K_BRAM_ROWS",
    "UP5K_BRAM_WIDTHS",
    "UP5K_CRAM_ROWS",
    "UP5K_CRAM_WIDTH",
    "BitstreamError",
    "as_bytes",
    "hex_of",
]

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


def hex_of(data: bytes) -> str:
    """``data`` as spaced hex bytes (``"7E AA 99 7E"``), ``"nothing"`` when empty, for error messages."""
    return " ".join(f"{byte:02X}" for byte in data) or "nothing"


def as_bytes(data: object) -> bytes:
    """The bytes of a bytes-like ``data``; anything else raises :class:`BitstreamError`."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B").tobytes()  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise BitstreamError(f"not a bytes-like object ({type(data).__name__})") from error
