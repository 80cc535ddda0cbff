"""picofleet reference board firmware: protocol version 1 of ../PROTOCOL.md.

This file runs UNCHANGED on a real board under MicroPython (copied to the board as ``main.py``
next to ``hw_rp2.py``) and behind every virtual board of the simulator
(``picofleet.plugins.virtual``). It therefore sticks to what both interpreters share: plain
classes and functions, no annotations, no dataclasses, only the ``binascii``, ``hashlib``,
``json``, ``sys`` and ``time`` modules.

Everything that touches hardware goes through one object, ``hw``, passed in::

    hw.serial()          -> str   the chip's unique id, 16 upper-case hex digits
    hw.board()           -> str   the board type ("rp2040", "rp2350", "pico2-ice")
    hw.blink(seconds)    -> None  blink the LED for that long, without blocking
    hw.reboot()          -> None  reboot into this firmware (may never return)
    hw.bootloader()      -> None  reboot into the ROM UF2 bootloader (may never return)

Optional, where the board has them (an ``hw`` without them answers the ops that need them with
the reason):

    hw.read_file(name)        -> bytes or None  a file of the board's flash filesystem (None: absent)
    hw.write_file(name, data) -> None  replace it atomically (a temporary file, then a rename)
    hw.remove_file(name)      -> None  remove it (no error when absent)
    hw.has_fpga()             -> bool  whether the board has an iCE40 (pico2-ice)
    hw.fpga_program(data)     -> None  configure the iCE40 from a .bin; raises Exception(reason)
                                       unless CDONE went high

The board keeps its settings (``environment`` and ``config``, PROTOCOL.md ``settings``) in
:data:`SETTINGS_FILE` and its FPGA image in :data:`FPGA_FILE`; it configures the iCE40 from that
file at every boot, before it answers its first request.

and the serial stream through two objects: ``inp.readline()`` returns the next line as bytes
(``b""`` when the host side is gone or the board is stopping: :func:`run` then returns) and
``out.write(data)`` sends bytes (``out.flush()`` is called when present).
"""

import binascii
import hashlib
import json
import sys
import time

FIRMWARE = "picofleet-app"
"""The firmware name reported by ``identify`` (and written in the image descriptor)."""
VERSION = "1.0.0"
"""The version a real build of this file reports; the simulator passes the flashed image's."""
PROTO = 1
"""The protocol version this firmware speaks."""
MAX_LINE = 4096
"""The longest request line accepted, in bytes (without the line end)."""
MAX_BLINK_SECONDS = 3600
SETTINGS_FILE = "settings.json"
"""The file on the board's flash filesystem holding the settings it applied."""
FPGA_FILE = "fpga.bin"
"""The file on the board's flash filesystem holding its FPGA image (configured at every boot)."""
MAX_SETTINGS_BYTES = 2048
"""The keys and values of ``environment`` and ``config`` together, in bytes of UTF-8, at most."""
MAX_SETTINGS_ENTRIES = 64
"""Entries of ``environment``, and of ``config``, at most."""
MAX_SETTINGS_KEY = 128
"""Characters of a setting's name, at most."""
MAX_FPGA_IMAGE = 135100
"""The largest FPGA image accepted, in bytes (an iCE40UP5K .bin is 104,090)."""
MAX_FPGA_CHUNK = 2048
"""Bytes of image per ``fpga_chunk`` (2,732 characters of base64: a request stays within MAX_LINE)."""
HEX_DIGITS = "0123456789abcdef"


def check_settings(environment, config):
    """Why ``environment``/``config`` cannot be stored (a one-line reason), or None."""
    total = 0
    for name, values in (("environment", environment), ("config", config)):
        if not isinstance(values, dict):
            return name + " must be an object of string values"
        if len(values) > MAX_SETTINGS_ENTRIES:
            return name + " has " + str(len(values)) + " entries: at most " + str(MAX_SETTINGS_ENTRIES)
        for key, value in values.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_SETTINGS_KEY:
                return name + " names must be 1 to " + str(MAX_SETTINGS_KEY) + " characters"
            if not isinstance(value, str):
                return name + "." + key + " must be a string"
            total += len(key.encode()) + len(value.encode())
    if total > MAX_SETTINGS_BYTES:
        return (
            "environment and config hold "
            + str(total)
            + " bytes: at most "
            + str(MAX_SETTINGS_BYTES)
            + " (names and values, UTF-8)"
        )
    return None


def sha256_hex(data):
    """The sha256 of ``data`` as 64 lower-case hex digits (MicroPython's hashlib has no hexdigest)."""
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def is_sha256(value):
    """Whether ``value`` is 64 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in HEX_DIGITS for c in value)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


class App:
    """The protocol loop of one boot of the firmware."""

    def __init__(self, hw, inp, out, version=VERSION, name=FIRMWARE):
        self.hw = hw
        self.inp = inp
        self.out = out
        self.version = version
        self.name = name
        self.storage = all(getattr(hw, name, None) is not None for name in ("read_file", "write_file"))
        self.fpga_present = bool(getattr(hw, "has_fpga", None) is not None and hw.has_fpga())
        self.settings = {"environment": {}, "config": {}}  # type: dict
        self.fpga = None  # {"sha256", "configured", "error"?} of the stored image, or None
        self.transfer = None  # [sha256, size, bytearray, received, hash object] while one runs

    def send(self, message):
        """Write one JSON line to the host."""
        self.out.write(json.dumps(message).encode() + b"\n")
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()

    def log(self, text, level="info"):
        """Send a log line (no ``id``)."""
        self.send({"log": text, "level": level})

    def handle_line(self, line):
        """Answer one request line; return ``"reboot"``/``"bootloader"`` when that must follow, else None."""
        line = line.rstrip(b"\n").rstrip(b"\r")
        if not line.strip():
            return None  # a bare line end (hosts send one to resynchronise): nothing to answer
        request = None
        if len(line) <= MAX_LINE:
            try:
                request = json.loads(line.decode())
            except Exception:  # ValueError, UnicodeError; MicroPython raises either
                request = None
        if not isinstance(request, dict):
            self.send({"id": None, "ok": False, "error": "malformed request"})
            return None
        request_id = request.get("id")
        op = request.get("op")
        if not isinstance(op, str):
            self.send({"id": request_id, "ok": False, "error": "missing op"})
            return None
        try:
            result, then = self.execute(op, request)
        except Exception as error:
            self.send({"id": request_id, "ok": False, "error": "internal error: " + repr(error)})
            return None
        if result is None:
            self.send({"id": request_id, "ok": False, "error": "unknown op '" + op + "'"})
            return None
        if isinstance(result, str):
            self.send({"id": request_id, "ok": False, "error": result})
            return None
        response = {"id": request_id, "ok": True}
        response.update(result)
        self.send(response)
        return then

    def execute(self, op, request):
        """Run ``op``: return (result dict or error text or None for unknown op, action to follow)."""
        if op == "identify":
            answer = {
                "proto": PROTO,
                "board": self.hw.board(),
                "serial": self.hw.serial(),
                "firmware": self.name,
                "version": self.version,
            }
            if self.storage:
                answer["environment"] = dict(self.settings["environment"])
                answer["config"] = dict(self.settings["config"])
            if self.fpga_present:
                answer["fpga"] = dict(self.fpga) if self.fpga else None
            return answer, None
        if op == "settings":
            return self.apply_settings(request), None
        if op in ("fpga_begin", "fpga_chunk", "fpga_end", "fpga_clear"):
            if not self.fpga_present:
                return "this board has no FPGA", None
            if not self.storage:
                return "this board cannot store an FPGA image (no filesystem)", None
            return getattr(self, op)(request), None
        if op == "ping":
            return {}, None
        if op == "blink":
            seconds = request.get("seconds", 3)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                return "seconds must be a number", None
            if not 0 <= seconds <= MAX_BLINK_SECONDS:
                return "seconds must be between 0 and " + str(MAX_BLINK_SECONDS), None
            self.hw.blink(seconds)
            return {}, None
        if op == "reboot":
            return {}, "reboot"
        if op == "bootloader":
            return {}, "bootloader"
        return None, None

    # -- settings ----------------------------------------------------------------------------
    def load_settings(self):
        """Read the stored settings (none stored, or unreadable: empty ones, with a log line)."""
        data = self.hw.read_file(SETTINGS_FILE)
        if data is None:
            return
        try:
            stored = json.loads(data.decode())
            environment, config = stored["environment"], stored["config"]
        except Exception:  # ValueError, KeyError, TypeError, UnicodeError
            self.log(SETTINGS_FILE + " is unreadable: settings start empty", "warning")
            return
        problem = check_settings(environment, config)
        if problem is not None:
            self.log(SETTINGS_FILE + " is refused (" + problem + "): settings start empty", "warning")
            return
        self.settings = {"environment": environment, "config": config}

    def apply_settings(self, request):
        """The ``settings`` op: validate, store atomically, answer what is stored."""
        if not self.storage:
            return "this board cannot store settings (no filesystem)"
        environment, config = request.get("environment"), request.get("config")
        problem = check_settings(environment, config)
        if problem is not None:
            return problem
        self.hw.write_file(SETTINGS_FILE, json.dumps({"environment": environment, "config": config}).encode())
        self.settings = {"environment": {}, "config": {}}
        self.load_settings()  # answer what the flash holds now
        return {"environment": dict(self.settings["environment"]), "config": dict(self.settings["config"])}

    # -- the FPGA image ------------------------------------------------------------------------
    def configure_fpga(self, data, sha256):
        """Configure the iCE40 from ``data``; remember (and return) the outcome."""
        state = {"sha256": sha256, "configured": True}
        try:
            self.hw.fpga_program(data)
        except Exception as error:
            state["configured"] = False
            state["error"] = str(error) or repr(error)
        self.fpga = state
        return state

    def configure_fpga_at_boot(self):
        """Configure the iCE40 from the stored image, if there is one (at every boot)."""
        data = self.hw.read_file(FPGA_FILE)
        if data is None:
            return
        state = self.configure_fpga(data, sha256_hex(data))
        if state["configured"]:
            self.log("FPGA configured from " + FPGA_FILE + " (sha256 " + state["sha256"] + ")")
        else:
            self.log("FPGA not configured from " + FPGA_FILE + ": " + state["error"], "error")

    def fpga_begin(self, request):
        """``fpga_begin {sha256, size}``: start receiving an image (drops an unfinished one)."""
        sha256, size = request.get("sha256"), request.get("size")
        if not is_sha256(sha256):
            return "sha256 must be 64 lower-case hexadecimal digits"
        if not _integer(size) or not 0 < size <= MAX_FPGA_IMAGE:
            return "size must be an integer between 1 and " + str(MAX_FPGA_IMAGE)
        self.transfer = None
        self.transfer = [sha256, size, bytearray(size), 0, hashlib.sha256()]
        return {}

    def fpga_chunk(self, request):
        """``fpga_chunk {offset, data}``: the next part of the image, base64."""
        transfer = self.transfer
        if transfer is None:
            return "no FPGA image transfer in progress"
        offset, data = request.get("offset"), request.get("data")
        if not _integer(offset) or offset != transfer[3]:
            return "offset must be " + str(transfer[3]) + " (the bytes received so far)"
        if not isinstance(data, str):
            return "data must be base64 text"
        try:
            chunk = binascii.a2b_base64(data)
        except Exception:  # binascii.Error (a ValueError); MicroPython raises ValueError
            return "data must be base64 text"
        if not chunk or len(chunk) > MAX_FPGA_CHUNK:
            return "a chunk must hold 1 to " + str(MAX_FPGA_CHUNK) + " bytes"
        if offset + len(chunk) > transfer[1]:
            self.transfer = None
            return "chunk goes past the announced size of " + str(transfer[1]) + " bytes: transfer dropped"
        transfer[2][offset : offset + len(chunk)] = chunk
        transfer[3] = offset + len(chunk)
        transfer[4].update(chunk)
        return {"received": transfer[3]}

    def fpga_end(self, request):
        """``fpga_end``: check the sha256, store the image atomically, configure the iCE40 from it."""
        transfer, self.transfer = self.transfer, None
        if transfer is None:
            return "no FPGA image transfer in progress"
        sha256, size, data, received, digest = transfer
        if received != size:
            return "only " + str(received) + " of " + str(size) + " bytes were received: transfer dropped"
        actual = binascii.hexlify(digest.digest()).decode()
        if actual != sha256:
            return "sha256 mismatch: the data received hashes to " + actual + ": transfer dropped"
        try:  # noqa: SIM105 (MicroPython has no contextlib)
            data = bytes(data)  # the ice module reads a bytes object: one copy here, not one per use
        except MemoryError:
            pass  # keep the bytearray: it is stored as it is; hw.fpga_program copies it or says why not
        self.hw.write_file(FPGA_FILE, data)
        state = self.configure_fpga(data, sha256)
        if not state["configured"]:
            self.log("FPGA not configured from the new image " + sha256 + ": " + state["error"], "error")
        return dict(state)

    def fpga_clear(self, request):
        """``fpga_clear``: forget the stored image (the iCE40 stays as it is until the next boot)."""
        self.transfer = None
        self.hw.remove_file(FPGA_FILE)
        self.fpga = None
        return {}

    def run(self):
        """Log the boot, then answer requests until the input ends or a reboot was asked for.

        Returns ``"reboot"`` or ``"bootloader"`` if ``hw.reboot()``/``hw.bootloader()`` returned
        (as they do in the simulator), ``None`` when the input ended.
        """
        self.log("booted " + self.name + " " + self.version)
        if self.storage:
            self.load_settings()
            if self.fpga_present:
                self.configure_fpga_at_boot()
        while True:
            line = self.inp.readline()
            if not line:
                return None
            then = self.handle_line(line)
            if then == "reboot":
                time.sleep(0.01)  # let the response leave before the USB device goes away
                self.hw.reboot()
                return then
            if then == "bootloader":
                time.sleep(0.01)
                self.hw.bootloader()
                return then


def run(hw, inp, out, version=VERSION):
    """Run the firmware on ``hw`` with the host streams ``inp``/``out`` (see the module docstring)."""
    return App(hw, inp, out, version).run()


def main():
    """Entry point on a real board (MicroPython runs ``main.py`` at boot)."""
    import hw_rp2  # the board's hardware module, copied next to this file

    hw = hw_rp2.Hardware()
    run(hw, hw.stdin(), hw.stdout())


if __name__ == "__main__" and sys.implementation.name == "micropython":
    main()
