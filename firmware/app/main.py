"""picofleet reference board firmware: protocol version 1 of ../PROTOCOL.md.

This file runs UNCHANGED on a real board under MicroPython (copied to the board as ``main.py``
next to ``hw_rp2.py``) and behind every virtual board of the simulator
(``picofleet.plugins.virtual``). It therefore sticks to what both interpreters share: plain
classes and functions, no annotations, no dataclasses, only the ``json``, ``sys`` and ``time``
modules.

Everything that touches hardware goes through one object, ``hw``, passed in::

    hw.serial()          -> str   the chip's unique id, 16 upper-case hex digits
    hw.board()           -> str   the board type ("rp2040", "rp2350", "pico2-ice")
    hw.blink(seconds)    -> None  blink the LED for that long, without blocking
    hw.reboot()          -> None  reboot into this firmware (may never return)
    hw.bootloader()      -> None  reboot into the ROM UF2 bootloader (may never return)

and the serial stream through two objects: ``inp.readline()`` returns the next line as bytes
(``b""`` when the host side is gone or the board is stopping: :func:`run` then returns) and
``out.write(data)`` sends bytes (``out.flush()`` is called when present).
"""

import json
import sys
import time

FIRMWARE = "picofleet-app"
"""The firmware name reported by ``identify`` (and written in the image descriptor)."""
VERSION = "1.0.0"
"""The version a real build of this file reports; the simulator passes the flashed image's."""
PROTO = 1
"""The protocol version this firmware speaks."""
MAX_LINE = 1024
"""The longest request line accepted, in bytes (without the line end)."""
MAX_BLINK_SECONDS = 3600


class App:
    """The protocol loop of one boot of the firmware."""

    def __init__(self, hw, inp, out, version=VERSION, name=FIRMWARE):
        self.hw = hw
        self.inp = inp
        self.out = out
        self.version = version
        self.name = name

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
            return {
                "proto": PROTO,
                "board": self.hw.board(),
                "serial": self.hw.serial(),
                "firmware": self.name,
                "version": self.version,
            }, None
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

    def run(self):
        """Log the boot, then answer requests until the input ends or a reboot was asked for.

        Returns ``"reboot"`` or ``"bootloader"`` if ``hw.reboot()``/``hw.bootloader()`` returned
        (as they do in the simulator), ``None`` when the input ended.
        """
        self.log("booted " + self.name + " " + self.version)
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
