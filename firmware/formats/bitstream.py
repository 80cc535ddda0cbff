"""iCE40 bitstreams for the pico2-ice's iCE40UP5K, the front door: tell the kind, validate, pack.

Two forms of the same configuration exist (YosysHQ IceStorm): ``.asc``, IceStorm's text
(:mod:`.ice40_asc`), and ``.bin``, what the FPGA is sent (:mod:`.ice40_bin`); what they share is
in :mod:`.ice40`. This module is what the rest of picofleet calls: :func:`detect_kind` guesses a
firmware file's kind from its first bytes, :func:`validate` checks a bitstream of either form,
:func:`pack_asc` turns an ``.asc`` into its ``.bin``; :func:`read_bin`, :func:`read_asc` and
:class:`BitstreamError` are re-exported from the readers. ``picofleet firmware inspect`` describes
any firmware file with :mod:`.inspect`.

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

import codecs
import shutil
import subprocess

from picofleet.firmware.formats import ice40_asc, uf2
from picofleet.firmware.formats.ice40 import BitstreamError
from picofleet.firmware.formats.ice40_asc import read_asc
from picofleet.firmware.formats.ice40_bin import HEADER_START, PREAMBLE, read_bin

__all__ = ["BitstreamError", "detect_kind", "looks_like_text", "pack_asc", "read_asc", "read_bin", "validate"]

_UF2_MAGIC = uf2.MAGIC_START0.to_bytes(4, "little")
TEXT_PROBE = 512
"""How many first bytes :func:`detect_kind` looks at to tell text (an ``.asc``) from binary."""
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")


def pack_asc(asc_text: str, *, icepack: str | None = None, timeout: float = 60.0) -> bytes:
    """Return the ``.bin`` of an up5k ``.asc``, byte-identical to ``icepack``'s: it *is* icepack's.

    The text is validated first (:func:`read_asc`), then piped through ``icepack`` (stdin to
    stdout; ``icepack`` defaults to the one on PATH) and its output validated (:func:`read_bin`).
    Raises :class:`BitstreamError` for an invalid ``.asc``, a missing icepack, icepack failing or
    not finishing within ``timeout`` seconds, or an invalid result. See the module docstring for
    why icepack is called rather than ported.
    """
    text, _ = ice40_asc.asc_text(asc_text)
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


def detect_kind(data: bytes) -> str | None:
    """``"uf2"``, ``"ice40-bin"`` or ``"ice40-asc"`` from the first bytes of a file; ``None`` if none fits.

    UF2 by its first magic; a ``.bin`` by ``FF 00`` or the preamble; an ``.asc`` by a first
    non-blank character ``.`` in a start that is text (:func:`looks_like_text`: binary bytes that
    happen to start with a dot are no ``.asc``). Only a guess: the readers validate.
    """
    if data[:4] == _UF2_MAGIC:
        return "uf2"
    if data[:2] == HEADER_START or data[:4] == PREAMBLE:
        return "ice40-bin"
    if data[:4096].lstrip(b" \t\r\n").startswith(b".") and looks_like_text(data):
        return "ice40-asc"
    return None


def looks_like_text(data: bytes) -> bool:
    """Whether the first :data:`TEXT_PROBE` bytes are UTF-8 text without control characters but
    white space (a multi-byte character cut at the end of the probe still counts as text)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:TEXT_PROBE], final=False)
    except UnicodeDecodeError:
        return False
    return not any(char < " " and char not in _TEXT_CONTROLS for char in text) and "\x7f" not in text


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
