"""Describe a firmware file for ``picofleet firmware inspect``: a UF2 or an up5k bitstream (either form)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.bitstream import detect_kind, looks_like_text
from picofleet.firmware.formats.ice40 import BitstreamError, as_bytes, hex_of
from picofleet.firmware.formats.ice40_asc import read_asc
from picofleet.firmware.formats.ice40_bin import read_bin

__all__ = ["MAX_INSPECT_SIZE", "SUFFIX_KINDS", "inspect_bytes", "inspect_file", "judge_kind"]

MAX_INSPECT_SIZE = 128 << 20
"""Larger files are refused by :func:`inspect_file` (a UF2 of 32 MiB of flash is 64 MiB)."""

SUFFIX_KINDS = {".uf2": "uf2", ".bin": "ice40-bin", ".asc": "ice40-asc"}
"""The kind a file name's suffix claims (case-insensitive), as the fleet's fleet.yml reads it."""

_CHIPS = {
    uf2.RP2040: "RP2040",
    uf2.RP2350_ARM_S: "RP2350",
    uf2.RP2350_ARM_NS: "RP2350",
    uf2.RP2350_RISCV: "RP2350",
    uf2.RP2_ABSOLUTE: "RP2350",
    uf2.RP2_DATA: "RP2350",
}


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


def judge_kind(data: bytes, name: str | None = None) -> str | None:
    """The kind ``data`` is judged as: ``"uf2"``, ``"ice40-bin"``, ``"ice40-asc"``, or ``None``.

    A UF2 or ``.bin`` magic decides; else the suffix of ``name`` (``.uf2``, ``.bin``, ``.asc``);
    else text starting with a dot is an ``.asc``; anything else that is not text is judged as a
    ``.bin`` (its reader says what is missing); ``None`` for other text and for an empty file.
    """
    kind = detect_kind(data)
    if kind in ("uf2", "ice40-bin"):
        return kind
    claimed = SUFFIX_KINDS.get(Path(name).suffix.lower()) if name else None
    if claimed is not None:
        return claimed
    if kind is not None:
        return kind
    return "ice40-bin" if data and not looks_like_text(data) else None


def inspect_bytes(data: bytes, name: str | None = None) -> dict[str, Any]:
    """Describe a UF2 file or an up5k bitstream (JSON-able); invalid input raises a ``ValueError``.

    ``name``: the file's name, whose suffix says what the file should be when its first bytes do
    not (:func:`judge_kind`): a ``random.bin`` is refused as a ``.bin``, not read as text.
    Always: ``kind`` (``"uf2"``, ``"ice40-asc"``, ``"ice40-bin"``), ``chip``, ``family``, ``size``,
    ``sha256``. UF2: ``families``, ``blocks``, ``payload_bytes``, ``address_range`` (start, end
    exclusive). Bitstreams: ``device`` (``"up5k"``), ``comment``, ``cram``/``bram`` bank
    information and the rest of :meth:`BinBitstream.describe` / :meth:`AscBitstream.describe`.
    Raises :class:`~picofleet.firmware.formats.uf2.UF2Error` for an invalid UF2 and
    :class:`BitstreamError` for an invalid bitstream or a file that is neither.
    """
    data = as_bytes(data)
    kind = judge_kind(data, name)
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
            f"not a UF2 file, an iCE40 .asc or an iCE40 .bin: it starts with {hex_of(data[:4])}", offset=0
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
    return {"path": str(path), **inspect_bytes(path.read_bytes(), path.name)}
