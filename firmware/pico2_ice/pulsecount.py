"""picofleet-pulsecount: the evaluation firmware of pico2-ice boards (../PROTOCOL.md, version 2).

The board holds FPGA bitstreams sent by the host, configures the iCE40 with one, drives its clock
and counts the rising edges the circuit produces on ICE_27 during a time window. It answers
version 2 frames and, for the gateway's everyday requests (identify, blink, reboot, bootloader),
version 1 JSON lines as well.

This file runs UNCHANGED on a real board under MicroPython (copied next to ``main.py``,
``frames.py`` and ``hw_pico2_ice.py``) and behind every virtual board of the simulator, where it
is ``picofleet.firmware.pico2_ice.pulsecount``. It therefore sticks to what both interpreters
share: plain classes and functions, no annotations, no dataclasses, only the ``hashlib``,
``json``, ``sys`` and ``time`` modules and ``frames``.

Everything that touches hardware goes through one object, ``hw``, passed in::

    hw.serial() -> str;  hw.board() -> str;  hw.blink(seconds);  hw.reboot();  hw.bootloader()
    hw.slots() -> int                    bitstreams the board holds at once (2 on hardware)
    hw.max_bitstream() -> int            the largest bitstream accepted, in bytes
    hw.fpga_program(bitstream)           configure the FPGA with ``bitstream`` (bytes; a bytearray
                                         on a board that was short of memory for the copy);
                                         blocks for the configure time; raises
                                         Exception(reason) on failure
    hw.count_start(clock_hz, window_ms)  drive CLK, count rising edges on ICE_27; returns at once
    hw.count_result() -> int or None     None while the window runs, then the count; raises
                                         Exception(reason) when counting failed
    hw.fpga_prepare(bitstream)           optional (the simulator has it, a real board not): a
                                         bitstream arrived complete and may be programmed soon;
                                         returns at once

and the serial stream through two objects: ``inp.wait(timeout_ms) -> bool`` (True when a byte
can be read now or the input ended), ``inp.read(n) -> bytes`` (blocks for exactly ``n`` bytes;
fewer, possibly ``b""``, when the input ended: :meth:`App.run` then returns) and
``out.write(data)`` (``out.flush()`` is called when present). A stream may set ``inp.segment``,
the most bytes it reads at once cheaply (default :data:`SEGMENT`; the simulator's pty: 4096).
"""

import hashlib
import json
import sys
import time

try:
    from . import frames  # a module of the picofleet.firmware.pico2_ice package (CPython)
except (ImportError, ValueError):
    import frames  # type: ignore[no-redef]  # a flat file next to this one (the board)

FIRMWARE = "picofleet-pulsecount"
"""The firmware name reported by ``identify`` (and written in the image descriptor)."""
VERSION = "1.0.0"
"""The version a real build of this file reports; the simulator passes the flashed image's."""
PROTO = 2
"""The protocol version this firmware speaks (it answers version 1 lines as well)."""

MAX_CLOCK_HZ = 50000000
MAX_WINDOW_MS = 60000
MAX_BLINK_SECONDS = 3600
POLL_MS = 10
"""How long the loop waits for input before it looks at a running count again."""
QUIET_MS = 500
"""Input quiet for this long drops a partial line or frame (a host that died mid-message)."""
SEGMENT = 64
"""The most bytes read at once (a USB full-speed packet). ``inp.read`` blocks until it has them
all, so the loop notices a quiet input between segments only: a frame cut short at a segment
boundary is dropped after QUIET_MS. One cut inside a segment is completed by whatever the host
sends next and then fails its CRC (the board resynchronises), unless the stream gives up first
(the real board's stream restarts the board after a long stall mid-read, see hw_pico2_ice.py)."""

V1_OPS = ("identify", "ping", "blink", "reboot", "bootloader")
"""The operations also answered on a version 1 line (all of them are answered in frames)."""

_MICROPYTHON = sys.implementation.name == "micropython"

if _MICROPYTHON:
    import gc

    def _now_ms():
        return time.ticks_ms()

    def _ms_since(start):
        return time.ticks_diff(time.ticks_ms(), start)
else:

    def _now_ms():
        return int(time.monotonic() * 1000)

    def _ms_since(start):
        return _now_ms() - start


def _hex(digest):
    return "".join("%02x" % byte for byte in digest)  # noqa: UP031 (MicroPython has no bytes.hex() everywhere)


def _error_text(error):
    text = str(error)
    return text if text else repr(error)


class Slot:
    """One bitstream held in memory (complete, or being received)."""

    def __init__(self, sha256, size):
        self.sha256 = sha256
        self.size = size
        self.data = bytearray(size)
        self.received = 0
        self.hash = hashlib.sha256()
        self.complete = False
        self.used = 0


class App:
    """The protocol loop of one boot of the pulse-count firmware.

    ``interrupt=True`` (the real board) makes a Ctrl-C byte (0x03) in a version 1 line end
    :meth:`run` with ``"interrupt"``, so that MicroPython's tools (mpremote) reach the REPL
    although ``main.py`` runs this loop with ``micropython.kbd_intr(-1)``.
    """

    def __init__(self, hw, inp, out, version=VERSION, interrupt=False):
        self.hw = hw
        self.inp = inp
        self.out = out
        self.version = version
        self.name = FIRMWARE
        self.decoder = frames.Decoder(interrupt=interrupt)
        self.segment = getattr(inp, "segment", SEGMENT)
        self.framed = False
        self.slots = []
        self.loading = None
        self.programmed = None
        self.counting = None  # (request id, sha256 for evaluate or None for count)
        self._tick = 0

    # -- output ------------------------------------------------------------------------------
    def send(self, message, framed):
        """Send one message to the host, as a J frame or as a version 1 line.

        A frame is followed by ``\n``: a version 1 host reads it as a line that is not JSON and
        skips it, and the line after it stays a line of its own.
        """
        data = (frames.encode_json(message) if framed else json.dumps(message).encode()) + b"\n"
        self.out.write(data)
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()

    def log(self, text, level="info"):
        """Send a log message: a line until the host sent a frame, J frames from then on."""
        self.send({"log": text, "level": level}, self.framed)

    def respond(self, request_id, result, framed):
        """Answer a request: ``result`` is a dict (success) or a str (the error)."""
        if isinstance(result, str):
            self.send({"id": request_id, "ok": False, "error": result}, framed)
            return
        response = {"id": request_id, "ok": True}
        response.update(result)
        self.send(response, framed)

    # -- input -------------------------------------------------------------------------------
    def handle_event(self, event):
        """Act on one decoder event; return ``"reboot"``/``"bootloader"``/``"interrupt"`` or None."""
        what = event[0]
        if what == "line":
            return self.handle_line(event[1])
        if what == "interrupt":
            return "interrupt"
        self.framed = True
        if what == "error":
            self.respond(None, event[1], True)
            return None
        kind, payload = event[1], event[2]
        if kind == frames.KIND_DATA:
            self.handle_chunk(payload)
            return None
        if kind != frames.KIND_JSON:
            self.respond(None, "unknown frame kind 0x%02X" % kind, True)  # noqa: UP031
            return None
        return self.handle_request(_parse(payload), True)

    def handle_line(self, line):
        """Answer one version 1 line (``None``: a line that was too long)."""
        if line is None:
            self.respond(None, "malformed request", False)
            return None
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return None  # a bare line end (hosts send one to resynchronise)
        return self.handle_request(_parse(line), False)

    def handle_request(self, request, framed):
        """Answer one request object (``None`` when it did not parse)."""
        if not isinstance(request, dict):
            self.respond(None, "malformed request", framed)
            return None
        request_id = request.get("id")
        op = request.get("op")
        if not isinstance(op, str):
            self.respond(request_id, "missing op", framed)
            return None
        if not framed and op not in V1_OPS:
            if op in OPS:
                self.respond(request_id, "op '" + op + "' needs a framed request (protocol version 2)", False)
            else:
                self.respond(request_id, "unknown op '" + op + "'", False)
            return None
        handler = OPS.get(op)
        if handler is None:
            self.respond(request_id, "unknown op '" + op + "'", framed)
            return None
        try:
            result, then = handler(self, request_id, request)
        except Exception as error:
            self.respond(request_id, "internal error: " + repr(error), framed)
            return None
        if result is not None:  # None: answered later (count, evaluate)
            self.respond(request_id, result, framed)
        return then

    def handle_chunk(self, payload):
        """Store one D frame of the transfer started by ``load`` and acknowledge it."""
        parsed = frames.decode_data(payload)
        if parsed is None:
            self.respond(None, "malformed data frame", True)
            return
        request_id, data = parsed
        slot = self.loading
        if slot is None:
            self.respond(request_id, "no bitstream transfer in progress", True)
            return
        end = slot.received + len(data)
        if end > slot.size:
            self._drop(slot)
            error = "chunk goes past the announced size of " + str(slot.size) + " bytes"
            self.respond(request_id, error, True)
            return
        slot.data[slot.received : end] = data
        slot.hash.update(data)
        slot.received = end
        if end < slot.size:
            self.respond(request_id, {"received": end}, True)
            return
        digest = _hex(slot.hash.digest())
        self.loading = None
        slot.hash = None
        if digest != slot.sha256:
            self._drop(slot)
            self.respond(request_id, "sha256 mismatch: the data received hashes to " + digest, True)
            return
        try:
            # bytes once here, rather than a copy each time hw.fpga_program needs one
            data = bytes(slot.data)
        except MemoryError:
            data = slot.data  # the board keeps the bytearray; hw_pico2_ice copies it to program
        slot.data = data
        slot.complete = True
        self.respond(request_id, {"received": end, "complete": True}, True)
        prepare = getattr(self.hw, "fpga_prepare", None)
        if prepare is not None:
            try:
                prepare(data)
            except Exception as error:
                self.log("preparing bitstream " + slot.sha256 + " failed: " + _error_text(error), "warning")

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        """Log the boot, then serve requests until the input ends, a reboot or an interrupt.

        Returns ``"reboot"``/``"bootloader"`` if ``hw.reboot()``/``hw.bootloader()`` returned
        (as they do in the simulator), ``"interrupt"`` after a Ctrl-C (``interrupt=True`` only),
        ``None`` when the input ended.
        """
        self.log("booted " + self.name + " " + self.version)
        quiet_since = _now_ms()
        polled = quiet_since
        while True:
            if self.counting is not None and _ms_since(polled) >= POLL_MS // 2:
                polled = _now_ms()
                self.poll_count()
            if not self.inp.wait(POLL_MS):
                if self.decoder.busy() and _ms_since(quiet_since) >= QUIET_MS:
                    dropped = self.decoder.quiet()
                    if dropped:
                        self.log(dropped, "warning")
                continue
            quiet_since = _now_ms()
            want = min(self.decoder.wanted(), self.segment)
            data = self.inp.read(want)
            if data:
                for event in self.decoder.feed(data):
                    then = self.handle_event(event)
                    if then is not None:
                        return self._finish(then)
            if len(data) < want:
                return None

    def _finish(self, then):
        if then == "interrupt":
            return then
        time.sleep(0.01)  # let the response leave before the USB device goes away
        if then == "reboot":
            self.hw.reboot()
        else:
            self.hw.bootloader()
        return then

    def poll_count(self):
        """Answer the running count/evaluate request once its window has ended."""
        if self.counting is None:
            return
        request_id, sha256 = self.counting
        try:
            pulses = self.hw.count_result()
        except Exception as error:
            self.counting = None
            self.respond(request_id, _error_text(error), True)
            return
        if pulses is None:
            return
        self.counting = None
        result = {"pulses": pulses}
        if sha256 is not None:
            result["sha256"] = sha256
        self.respond(request_id, result, True)

    # -- bitstream slots -------------------------------------------------------------------------
    def _touch(self, slot):
        self._tick += 1
        slot.used = self._tick

    def _find(self, sha256):
        for slot in self.slots:
            if slot.complete and slot.sha256 == sha256:
                return slot
        return None

    def _drop(self, slot):
        if slot in self.slots:
            self.slots.remove(slot)
        if self.loading is slot:
            self.loading = None
        slot.data = None

    def _make_room(self):
        """Evict least recently used slots until one is free; an error text if none can go."""
        while len(self.slots) >= self.hw.slots():
            candidates = []
            for slot in self.slots:
                if slot is self.loading:
                    continue
                if self.counting is not None and slot.sha256 == self.programmed:
                    continue
                candidates.append(slot)
            if not candidates:
                return "no free slot: every bitstream slot is in use"
            victim = candidates[0]
            for slot in candidates:
                if slot.used < victim.used:
                    victim = slot
            self._drop(victim)
        return None

    def _program(self, sha256):
        """Configure the FPGA with a loaded bitstream; an error text on failure, else None."""
        slot = self._find(sha256)
        if slot is None:
            return "bitstream " + sha256 + " is not loaded"
        self._touch(slot)
        self.programmed = None
        try:
            self.hw.fpga_program(slot.data)
        except Exception as error:
            return _error_text(error)
        self.programmed = sha256
        return None

    # -- operations: each returns (result, then): result is a dict (success), a str (the error)
    # or None (answered later: count, evaluate); then is None, "reboot" or "bootloader".
    def op_identify(self, request_id, request):
        return {
            "proto": PROTO,
            "board": self.hw.board(),
            "serial": self.hw.serial(),
            "firmware": self.name,
            "version": self.version,
            "slots": self.hw.slots(),
            "max_bitstream": self.hw.max_bitstream(),
        }, None

    def op_ping(self, request_id, request):
        return {}, None

    def op_status(self, request_id, request):
        loading = None
        if self.loading is not None:
            loading = {
                "sha256": self.loading.sha256,
                "received": self.loading.received,
                "size": self.loading.size,
            }
        return {
            "loaded": [slot.sha256 for slot in self.slots if slot.complete],
            "programmed": self.programmed,
            "counting": self.counting is not None,
            "loading": loading,
        }, None

    def op_load(self, request_id, request):
        sha256 = _sha_arg(request)
        if sha256 is None:
            return "sha256 must be 64 hexadecimal digits", None
        size = _int_arg(request, "size", 1, self.hw.max_bitstream())
        if isinstance(size, str):
            return size, None
        if self.loading is not None:
            self._drop(self.loading)  # a new load replaces an unfinished one
        slot = self._find(sha256)
        if slot is not None:
            self._touch(slot)
            return {"complete": True}, None  # held already: no chunks needed
        error = self._make_room()
        if error is not None:
            return error, None
        if _MICROPYTHON:
            gc.collect()
        try:
            slot = Slot(sha256, size)
        except MemoryError:
            return "not enough memory for a " + str(size) + "-byte bitstream", None
        self._touch(slot)
        self.slots.append(slot)
        self.loading = slot
        return {}, None

    def op_program(self, request_id, request):
        sha256 = _sha_arg(request)
        if sha256 is None:
            return "sha256 must be 64 hexadecimal digits", None
        if self.counting is not None:
            return "already counting", None
        error = self._program(sha256)
        if error is not None:
            return error, None
        return {}, None

    def op_count(self, request_id, request):
        args = _count_args(request)
        if isinstance(args, str):
            return args, None
        if self.counting is not None:
            return "already counting", None
        if self.programmed is None:
            return "no bitstream is programmed", None
        return self._start_count(request_id, None, args)

    def op_evaluate(self, request_id, request):
        sha256 = _sha_arg(request)
        if sha256 is None:
            return "sha256 must be 64 hexadecimal digits", None
        args = _count_args(request)
        if isinstance(args, str):
            return args, None
        if self.counting is not None:
            return "already counting", None
        if self.programmed != sha256:
            error = self._program(sha256)
            if error is not None:
                return error, None
        else:
            slot = self._find(sha256)
            if slot is not None:
                self._touch(slot)
        return self._start_count(request_id, sha256, args)

    def _start_count(self, request_id, sha256, args):
        try:
            self.hw.count_start(args[0], args[1])
        except Exception as error:
            return _error_text(error), None
        self.counting = (request_id, sha256)
        return None, None

    def op_blink(self, request_id, request):
        seconds = request.get("seconds", 3)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return "seconds must be a number", None
        if not 0 <= seconds <= MAX_BLINK_SECONDS:
            return "seconds must be between 0 and " + str(MAX_BLINK_SECONDS), None
        self.hw.blink(seconds)
        return {}, None

    def op_reboot(self, request_id, request):
        return {}, "reboot"

    def op_bootloader(self, request_id, request):
        return {}, "bootloader"


OPS = {
    "identify": App.op_identify,
    "ping": App.op_ping,
    "status": App.op_status,
    "load": App.op_load,
    "program": App.op_program,
    "count": App.op_count,
    "evaluate": App.op_evaluate,
    "blink": App.op_blink,
    "reboot": App.op_reboot,
    "bootloader": App.op_bootloader,
}


def _parse(data):
    try:
        return json.loads(bytes(data).decode())
    except Exception:  # ValueError, UnicodeError; MicroPython raises either
        return None


def _sha_arg(request):
    value = request.get("sha256")
    if not isinstance(value, str) or len(value) != 64:
        return None
    value = value.lower()
    for char in value:
        if char not in "0123456789abcdef":
            return None
    return value


def _int_arg(request, name, low, high):
    value = request.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return name + " must be an integer between " + str(low) + " and " + str(high)
    return value


def _count_args(request):
    clock_hz = _int_arg(request, "clock_hz", 1, MAX_CLOCK_HZ)
    if isinstance(clock_hz, str):
        return clock_hz
    window_ms = _int_arg(request, "window_ms", 1, MAX_WINDOW_MS)
    if isinstance(window_ms, str):
        return window_ms
    return (clock_hz, window_ms)


def run(hw, inp, out, version=VERSION, interrupt=False):
    """Run the firmware on ``hw`` with the host streams ``inp``/``out`` (see the module docstring)."""
    return App(hw, inp, out, version, interrupt).run()
