"""A MicroPython board on a pty, for tests of the gateway's serial hooks (tests only).

A thread on the pty master plays the board; the gateway opens the slave (``board.device``) as
it would ``/dev/ttyACM0``. What the board runs is one of:

* ``"repl"``: MicroPython at its REPL, as shared/runtime/pyexec.c answers: the friendly REPL
  (echo, ``>>> ``), the raw REPL (Ctrl-A: ``raw REPL; CTRL-B to exit\\r\\n>``; code until Ctrl-D,
  then ``OK``, output, ``\\x04``, error output, ``\\x04``, ``>``) and raw-paste mode
  (``\\x05A\\x01``: ``R\\x01``, a 2-byte window size and ``\\x01``, flow control with ``\\x01``,
  ``\\x04`` to acknowledge the end). ``raw_paste=False`` plays a MicroPython older than 1.14,
  which re-enters the raw REPL on the ``\\x01`` instead. Code that calls
  ``machine.bootloader()`` resets the board: once the host has read everything sent so far,
  the pty is closed, as the USB device vanishes (``ok_before_reset=False``: at once, before
  its ``OK`` or end-of-data acknowledgement leaves). Ctrl-D at the friendly REPL soft-resets
  (counted in ``soft_reboots``).
* ``"app"``: picofleet-app (firmware/app/main.py, as MicroPython runs it from main.py) with a
  fake ``hw``; its ``bootloader`` command resets the board the same way.
* ``"silent"``: a firmware that answers nothing (pico-sdk or pico-ice-sdk without a protocol).

Every byte the host sent is kept in ``received``; the line speeds the host set are in
``speeds`` (termios constants, read from the master), so a 1200-baud touch is visible.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from typing import Literal

from picofleet.firmware.app.main import App

Firmware = Literal["repl", "app", "silent"]

BANNER = (
    b"MicroPython v1.24.0 on 2024-10-25; Raspberry Pi Pico with RP2040\r\n"
    b'Type "help()" for more information.\r\n'
)
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
WINDOW = 128
"""The raw-paste flow-control window (half of MicroPython's default 256-byte stdin buffer)."""
DRAIN_TIMEOUT = 2.0
SETTLE = 0.2
"""How long sent bytes may take to show up on the slave side."""


class _Hardware:
    """The ``hw`` object picofleet-app asks; ``bootloader()`` resets the fake board."""

    def __init__(self, fake: FakeMicroPythonBoard) -> None:
        self.fake = fake

    def serial(self) -> str:
        return self.fake.serial

    def board(self) -> str:
        return self.fake.board

    def blink(self, seconds: float) -> None:
        self.fake.blinks.append(seconds)

    def reboot(self) -> None:
        self.fake.reset("reboot")

    def bootloader(self) -> None:
        self.fake.reset("bootloader")


class _Output:
    """picofleet-app's output stream: the pty master."""

    def __init__(self, fake: FakeMicroPythonBoard) -> None:
        self.fake = fake

    def write(self, data: bytes) -> None:
        self.fake.send(data)


class FakeMicroPythonBoard:
    """One fake board on a pty; ``start()`` it, hand ``device`` to the gateway, ``close()`` it."""

    def __init__(
        self,
        firmware: Firmware = "repl",
        *,
        raw_paste: bool = True,
        version: str = "1.0.0",
        serial: str = "E6614C311B7E3C2A",
        board: str = "rp2040",
        bootloader_error: str | None = None,
        ok_before_reset: bool = True,
    ) -> None:
        self.firmware = firmware
        self.raw_paste = raw_paste
        self.version = version
        self.serial = serial
        self.board = board
        self.bootloader_error = bootloader_error
        self.ok_before_reset = ok_before_reset
        self.received = bytearray()
        self.speeds: list[int] = []
        self.executed: list[str] = []
        self.blinks: list[float] = []
        self.reset_to: str | None = None
        self.soft_reboots = 0
        self.gone = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # as the host will configure it: no echo, no line editing
        self.device = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-micropython:{self.device}", daemon=True)
        self._lock = threading.Lock()
        # REPL state
        self._mode: Literal["friendly", "raw", "paste"] = "friendly"
        self._line = bytearray()
        self._window_left = WINDOW
        # picofleet-app state
        self._app = App(_Hardware(self), None, _Output(self), version=version)
        self._app_line = bytearray()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeMicroPythonBoard:
        """Start answering; picofleet-app logs its boot line as it does on a real board."""
        self._thread.start()
        if self.firmware == "app":
            self._app.log("booted " + self._app.name + " " + self.version)
        return self

    def close(self) -> None:
        """Stop the thread and close the pty (a board that is unplugged)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._close_fds()

    def __enter__(self) -> FakeMicroPythonBoard:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def line_speed(self) -> int:
        """The line speed the host set last (a termios constant such as ``termios.B1200``)."""
        return self.speeds[-1] if self.speeds else termios.tcgetattr(self._master)[5]

    # -- the board's side --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write to the host (ignored once the board is gone)."""
        with self._lock:
            if self.gone.is_set():
                return
            view = memoryview(data)
            while view:
                written = os.write(self._master, view)
                view = view[written:]

    def reset(self, to: str) -> None:
        """The board resets: once the host read what was sent, its USB serial device vanishes."""
        self.reset_to = to
        # Bytes written to the master reach the slave's input queue a moment later (the kernel
        # pushes them from a work queue): wait until they arrived and the host read them.
        started = time.monotonic()
        arrived = False
        while time.monotonic() - started < DRAIN_TIMEOUT:
            if _pending(self._slave) > 0:
                arrived = True
            elif arrived or time.monotonic() - started > SETTLE:
                break
            time.sleep(0.002)
        self._stop.set()
        self._close_fds()

    def _gone_now(self, to: str) -> None:
        """The board resets before its answer leaves it (its USB device vanishes at once)."""
        self.reset_to = to
        self._stop.set()
        self._close_fds()

    def _close_fds(self) -> None:
        with self._lock:
            if self.gone.is_set():
                return
            self.gone.set()
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                speed = termios.tcgetattr(self._master)[5]
                if not self.speeds or self.speeds[-1] != speed:
                    self.speeds.append(speed)
                ready, _, _ = select.select([self._master], [], [], 0.01)
                data = os.read(self._master, 4096) if ready else b""
            except (OSError, ValueError, termios.error):
                return  # closed
            self.received += data
            for byte in data:
                if self._stop.is_set():
                    return
                if self.firmware == "repl":
                    self._repl_byte(byte)
                elif self.firmware == "app":
                    self._app_byte(byte)

    # -- picofleet-app ------------------------------------------------------------------------------
    def _app_byte(self, byte: int) -> None:
        self._app_line.append(byte)
        if byte != ord("\n"):
            return
        line, self._app_line = bytes(self._app_line), bytearray()
        then = self._app.handle_line(line)
        if then == "bootloader":
            self.reset("bootloader")
        elif then == "reboot":
            self.reset("reboot")

    # -- MicroPython's REPL -------------------------------------------------------------------------
    def _repl_byte(self, byte: int) -> None:
        if self._mode == "friendly":
            self._friendly(byte)
        elif self._mode == "raw":
            self._raw(byte)
        else:
            self._paste(byte)

    def _friendly(self, byte: int) -> None:
        if byte == 0x01:  # Ctrl-A: raw REPL
            self._mode, self._line = "raw", bytearray()
            self.send(b"\r\n" + RAW_BANNER + b">")
        elif byte in (0x03, 0x0D):  # Ctrl-C cancels the line; Enter runs it (here: runs nothing)
            self._line = bytearray()
            self.send(b"\r\n>>> ")
        elif byte == 0x04:  # Ctrl-D: soft reset (MicroPython then runs main.py; here: nothing)
            self._line = bytearray()
            self.soft_reboots += 1
            self.send(b"MPY: soft reboot\r\n" + BANNER + b">>> ")
        elif 0x20 <= byte < 0x7F:
            self._line.append(byte)
            self.send(bytes([byte]))  # echo

    def _raw(self, byte: int) -> None:
        if byte == 0x01:
            if self.raw_paste and bytes(self._line) == b"\x05A":
                self._mode, self._line, self._window_left = "paste", bytearray(), WINDOW
                self.send(b"R\x01" + struct.pack("<H", WINDOW) + b"\x01")
                return
            self._line = bytearray()
            self.send(RAW_BANNER + b">")  # Ctrl-A in the raw REPL resets it
        elif byte == 0x02:  # Ctrl-B: friendly REPL
            self._mode, self._line = "friendly", bytearray()
            self.send(b"\r\n" + BANNER + b">>> ")
        elif byte == 0x03:
            self._line = bytearray()
        elif byte == 0x04:
            code, self._line = bytes(self._line), bytearray()
            if not self.ok_before_reset and b"machine.bootloader()" in code:
                self.executed.append(code.decode("utf-8", errors="replace"))
                self._gone_now("bootloader")
                return
            self.send(b"OK")
            if not code:
                self.send(b"\r\nMPY: soft reboot\r\n" + RAW_BANNER + b">")
                return
            self._execute(code)
        else:
            self._line.append(byte)

    def _paste(self, byte: int) -> None:
        if byte in (0x03, 0x04):
            code, self._line = bytes(self._line), bytearray()
            self._mode = "raw"
            if not self.ok_before_reset and b"machine.bootloader()" in code:
                self.executed.append(code.decode("utf-8", errors="replace"))
                self._gone_now("bootloader")
                return
            self.send(b"\x04")  # end of data acknowledged
            if byte == 0x04:
                self._execute(code)
            return
        self._line.append(byte)
        self._window_left -= 1
        if self._window_left == 0:
            self._window_left = WINDOW
            self.send(b"\x01")  # another window may be sent

    def _execute(self, code: bytes) -> None:
        text = code.decode("utf-8", errors="replace")
        self.executed.append(text)
        if "machine.bootloader()" in text:
            if self.bootloader_error is None:
                self.reset("bootloader")
                return
            error = f"Traceback (most recent call last):\r\n{self.bootloader_error}\r\n".encode()
            self.send(b"\x04" + error + b"\x04>")
            return
        self.send(b"\x04\x04>")  # ran, printed nothing, raised nothing


def _pending(fd: int) -> int:
    """Bytes waiting to be read on the pty slave (the host has not read them yet)."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])
