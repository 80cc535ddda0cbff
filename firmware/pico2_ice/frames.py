"""Protocol version 2 framing (../PROTOCOL.md): encoding and an incremental decoder.

Shared by the pulse-count firmware (on the board under MicroPython, and in the simulator under
CPython) and by the host client (firmware/host/pulsecount.py). It therefore sticks to what both
interpreters share: no annotations, no dataclasses, only ``json``, ``struct`` and ``binascii``.

A frame is::

    A5 5A | kind (1 byte) | payload length (u32 LE) | payload | CRC-32 (u32 LE)

with the CRC-32 (zlib's) of the kind byte, the length bytes and the payload. Kinds: ``J`` (one
UTF-8 JSON object) and ``D`` (a u32 LE request id followed by bitstream bytes). Anything that
does not start with the magic at the start of a line is a protocol version 1 JSON line.
"""

import json
import struct

try:
    import binascii
except ImportError:  # a MicroPython build without binascii
    binascii = None  # type: ignore[assignment]  # checked before each use

MAGIC = b"\xa5\x5a"
KIND_JSON = 0x4A  # "J"
KIND_DATA = 0x44  # "D"
MAX_JSON = 4096
"""The largest JSON payload of a ``J`` frame, in bytes."""
MAX_DATA = 4096
"""The most bitstream bytes one ``D`` frame carries (its payload adds the 4-byte request id)."""
MAX_PAYLOAD = MAX_DATA + 4
"""The largest payload of any frame kind (``D``; also the limit for kinds this version does not know)."""
MAX_LINE = 1024
"""The longest version 1 line the firmware accepts (longer ones are answered "malformed request")."""
HEADER_SIZE = 7  # magic, kind, length
CRC_SIZE = 4

CRC_MISMATCH = "frame CRC mismatch"
TOO_LONG = "frame too long"

# decoder states
_LINE = 0  # in a version 1 line (or between messages)
_MAGIC = 1  # saw A5 at the start of a line
_HEADER = 2  # reading kind + length
_PAYLOAD = 3
_CRC = 4
_RESYNC = 5  # after a bad frame: skipping to the next magic
_RESYNC_MAGIC = 6  # saw A5 while resynchronising


def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table.append(c)
    return table


_TABLE = None


def _crc32_python(data, crc=0):
    """zlib's CRC-32 in plain Python (slow: only for a MicroPython without binascii.crc32)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _make_table()
    table = _TABLE
    crc = crc ^ 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_native_crc32 = getattr(binascii, "crc32", None) if binascii is not None else None


def crc32(data, crc=0):
    """zlib's CRC-32 of ``data`` (continuing from ``crc``), as an unsigned 32-bit integer."""
    if _native_crc32 is not None:
        return _native_crc32(data, crc) & 0xFFFFFFFF
    return _crc32_python(data, crc)


def max_payload(kind):
    """The largest payload accepted for a frame of ``kind``."""
    return MAX_JSON if kind == KIND_JSON else MAX_PAYLOAD


def encode(kind, payload):
    """One frame of ``kind`` (an int) carrying ``payload`` (bytes)."""
    head = struct.pack("<BI", kind, len(payload))
    crc = crc32(payload, crc32(head))
    return MAGIC + head + payload + struct.pack("<I", crc)


def encode_json(message):
    """A ``J`` frame carrying the JSON object ``message``."""
    return encode(KIND_JSON, json.dumps(message).encode())


def encode_data(request_id, data):
    """A ``D`` frame: request id ``request_id`` and up to MAX_DATA bitstream bytes."""
    return encode(KIND_DATA, struct.pack("<I", request_id) + bytes(data))


def decode_data(payload):
    """Split a ``D`` payload into (request id, data); ``None`` when it is shorter than the id."""
    if len(payload) < 4:
        return None
    return struct.unpack("<I", payload[:4])[0], memoryview(payload)[4:]


class Decoder:
    """Turns a byte stream of frames and version 1 lines into events, fed in any pieces.

    :meth:`feed` returns a list of events, each a tuple:

    * ``("frame", kind, payload)``: a frame with a good CRC (payload is a bytearray);
    * ``("line", data)``: a version 1 line without its ``\\n`` (``None`` when it was longer
      than ``max_line``: its content was dropped); the ``\\n`` the board sends after each frame
      is an empty line, ``b""``;
    * ``("error", text)``: a bad frame, text ``"frame CRC mismatch"`` or ``"frame too long"``;
      the decoder then skips bytes up to the next magic (or until :meth:`quiet`);
    * ``("interrupt",)``: a Ctrl-C byte (0x03) in a line, if ``interrupt`` is set (JSON never
      contains it raw: MicroPython's tools send it to stop a running program).

    :meth:`wanted` tells a reader how many bytes the decoder can take without reading past the
    current frame (1 while it is between frames or in a line), so that the firmware never
    consumes bytes that belong to whoever reads the stream after it (MicroPython's REPL).
    """

    def __init__(self, max_line=MAX_LINE, interrupt=False):
        self.max_line = max_line
        self.interrupt = interrupt
        self._state = _LINE
        self._line = bytearray()
        self._line_too_long = False
        self._head = bytearray()
        self._payload = bytearray()
        self._crc = bytearray()
        self._need = 0

    def wanted(self):
        """How many bytes the next read may take without going past the current frame."""
        if self._state in (_HEADER, _PAYLOAD, _CRC):
            return self._need
        return 1

    def busy(self):
        """True when part of a line or frame was received (or bytes are being skipped)."""
        return self._state != _LINE or len(self._line) > 0 or self._line_too_long

    def quiet(self):
        """The input has been quiet for a while: drop a partial line or frame, end a resync.

        Returns a text describing what was dropped (for a log line), or ``None``.
        """
        what = None
        if self._state in (_HEADER, _PAYLOAD, _CRC):
            what = "dropped an incomplete frame (the sender stopped in the middle of it)"
        elif self._state == _MAGIC or self._line or self._line_too_long:
            what = "dropped an incomplete line"
        self._reset_line()
        self._state = _LINE
        return what

    def _reset_line(self):
        self._line = bytearray()
        self._line_too_long = False

    def feed(self, data):
        """Process ``data`` (bytes-like); return the list of events it completed."""
        events = []  # type: list  # (a type comment: MicroPython has no variable annotations)
        data = memoryview(data)
        i = 0
        end = len(data)
        while i < end:
            state = self._state
            if state == _LINE:
                i = self._feed_line(data, i, end, events)
            elif state == _MAGIC:
                if data[i] == 0x5A:
                    i += 1
                    self._start_header()
                else:
                    self._line.append(0xA5)  # not a frame: the A5 starts a line; reprocess this byte
                    self._state = _LINE
            elif state in (_HEADER, _CRC, _PAYLOAD):
                take = min(self._need, end - i)
                target = self._head if state == _HEADER else self._crc if state == _CRC else self._payload
                target.extend(data[i : i + take])
                i += take
                self._need -= take
                if self._need == 0:
                    self._part_done(events)
            elif state == _RESYNC:
                i = self._skip_to_magic(data, i, end)
            else:  # _RESYNC_MAGIC
                byte = data[i]
                i += 1
                if byte == 0x5A:
                    self._start_header()
                elif byte != 0xA5:
                    self._state = _RESYNC
        return events

    def _feed_line(self, data, i, end, events):
        while i < end:
            byte = data[i]
            i += 1
            if byte == 0x0A:
                if self._line_too_long:
                    events.append(("line", None))
                else:
                    events.append(("line", bytes(self._line)))
                self._reset_line()
                return i
            if byte == 0x03 and self.interrupt:
                self._reset_line()
                events.append(("interrupt",))
                return i
            if byte == 0xA5 and not self._line and not self._line_too_long:
                self._state = _MAGIC
                return i
            if self._line_too_long:
                continue
            self._line.append(byte)
            if len(self._line) > self.max_line:
                self._line = bytearray()
                self._line_too_long = True
        return i

    def _skip_to_magic(self, data, i, end):
        while i < end:
            byte = data[i]
            i += 1
            if byte == 0xA5:
                self._state = _RESYNC_MAGIC
                return i
        return i

    def _start_header(self):
        self._state = _HEADER
        self._head = bytearray()
        self._need = HEADER_SIZE - 2

    def _part_done(self, events):
        if self._state == _HEADER:
            kind, length = struct.unpack("<BI", self._head)
            if length > max_payload(kind):
                events.append(("error", TOO_LONG))
                self._state = _RESYNC
                return
            self._payload = bytearray()
            if length:
                self._state = _PAYLOAD
                self._need = length
                return
        if self._state in (_HEADER, _PAYLOAD):
            self._state = _CRC
            self._crc = bytearray()
            self._need = CRC_SIZE
            return
        # the CRC is complete
        expected = crc32(self._payload, crc32(self._head))
        received = struct.unpack("<I", self._crc)[0]
        payload = self._payload
        kind = self._head[0]
        self._payload = bytearray()
        if expected != received:
            events.append(("error", CRC_MISMATCH))
            self._state = _RESYNC
            return
        self._state = _LINE
        self._reset_line()
        events.append(("frame", kind, payload))
