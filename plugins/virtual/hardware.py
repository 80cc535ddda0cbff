"""The hardware behind a virtual board's firmware: a pseudo-terminal as its USB serial port.

:class:`PtyPort` is the board's end of the USB CDC link: the *master* side of a pty whose slave
the gateway opens with pyserial. It offers the firmware the stream interfaces of
``firmware/app/main.py`` (``readline()``, ``write()``) and of ``firmware/pico2_ice/pulsecount.py``
(``wait(timeout_ms)``, ``read(n)``, ``write()``) and watches for what a real USB device would
see (either ends the boot: ``readline``/``read`` return short, ``wait`` returns True):

* the host setting 1200 baud (the "touch"): on Linux ``tcgetattr`` on a pty master returns the
  slave's termios (the kernel redirects TCGETS to the slave), so the speed the host set is
  polled there a few times a second;
* a request from the rack (unplug, BOOTSEL, shutdown), signalled through the board's wake pipe.

While no process has the slave open, the master reads EIO and ``select`` reports it readable
for ever; the port then sleeps on the wake pipe and polls instead of spinning: every 50 ms just
after the node appeared or the host closed it (when a host is likely to open it), backing off to
every 0.5 s (``HANGUP_POLL_MIN``/``HANGUP_POLL_MAX``).
Writes never block: output nobody reads is dropped once the pty buffer is full, as a USB device
drops what the host does not fetch.

:class:`SimulatedHardware` is the firmware's ``hw`` object for a virtual board: its "flash
filesystem" is a directory of the rack's state (``storage/<serial>/``, beside ``flash/<serial>.uf2``),
so what the firmware stores there survives reboots, reflashes, unplugging and a rack restart; a
pico2-ice's also has a simulated FPGA (fpga.py), which the reference firmware configures from its
stored image at every boot. :class:`SimulatedPulseCountHardware` is the ``hw`` of the pulse-count
firmware, with the simulated FPGA it evaluates bitstreams on.
"""

from __future__ import annotations

import errno
import os
import re
import select
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from picofleet.common.atomic import atomic_write_bytes
from picofleet.plugins.virtual.fpga import FpgaSimulator

MAX_LINE = 4096
"""Longer lines are cut here (the firmware answers them as malformed)."""
TOUCH_POLL = 0.25
"""Seconds between two looks at the line speed while a host has the port open."""
HANGUP_POLL_MIN = 0.05
"""Seconds between two looks for a host opening the port, just after it appeared or was closed."""
HANGUP_POLL_MAX = 0.5
"""... backing off (x1.5 a look) to this while nobody opens it."""
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""The names the simulated flash filesystem takes (one directory, no paths)."""


class BoardControl(Protocol):
    """What the port and the hardware need from the board that owns them."""

    serial: str
    board_type: str

    def interrupted(self) -> bool:
        """Whether the rack wants the current boot to end (unplug, BOOTSEL, shutdown)."""
        ...

    def request_bootloader(self) -> None:
        """Reboot into the ROM bootloader when the firmware returns."""
        ...

    def start_blinking(self, seconds: float) -> None:
        """Blink the LED for ``seconds``."""
        ...


class PtyPort:
    """The master side of a virtual board's serial port, as the firmware's input and output stream."""

    segment = 4096
    """The pulse-count firmware's read size here (a real board's USB packets are 64 bytes: reading
    those one by one would cost the simulator, which runs every board in one process, a core)."""

    def __init__(
        self,
        master_fd: int,
        wake_fd: int,
        interrupted: Callable[[], bool],
        on_touch: Callable[[], None],
        honour_touch: bool = True,
    ) -> None:
        self.master_fd = master_fd
        self.wake_fd = wake_fd
        self.interrupted = interrupted
        self.on_touch = on_touch
        self.honour_touch = honour_touch
        self.dropped = 0
        self.touched = False
        self._pending = bytearray()
        self._discarding = False
        self._hung_up = True
        self._hangup_poll = HANGUP_POLL_MIN
        os.set_blocking(master_fd, False)

    def _speed_is_1200(self) -> bool:
        try:
            attributes = termios.tcgetattr(self.master_fd)
        except termios.error:
            return False
        return termios.B1200 in (attributes[4], attributes[5])

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_fd, 64):
                pass
        except BlockingIOError:
            pass

    def _read_master(self) -> None:
        try:
            data = os.read(self.master_fd, 4096)
        except BlockingIOError:
            self._hung_up = False  # a host has the slave open, nothing to read
            return
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            self._hangup()
            return
        if not data:
            self._hangup()
            return
        self._hung_up = False
        self._pending += data

    def _hangup(self) -> None:
        """No host has the slave open (any more)."""
        if not self._hung_up:
            self._hung_up = True
            self._hangup_poll = HANGUP_POLL_MIN

    def _take_line(self) -> bytes | None:
        while True:
            end = self._pending.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._pending.clear()
                    return None
                del self._pending[: end + 1]
                self._discarding = False
                continue
            if end >= 0:
                line = bytes(self._pending[: end + 1])
                del self._pending[: end + 1]
                return line
            if len(self._pending) > MAX_LINE:
                line = bytes(self._pending[:MAX_LINE]) + b"\n"
                self._pending.clear()
                self._discarding = True
                return line
            return None

    def _boot_must_end(self) -> bool:
        """Whether the current boot must end: the rack interrupted it, or the host touched 1200 baud."""
        if self.interrupted():
            return True
        if self.honour_touch and self._speed_is_1200():
            if not self.touched:
                self.touched = True
                self.on_touch()
            return True
        return False

    def _await_input(self, limit: float | None = None) -> None:
        """Wait (at most ``limit`` seconds) for bytes from the host or a wake-up, and read them.

        While nobody has the slave open this sleeps on the wake pipe and looks for a host
        opening the port with a backing-off period, never ending the boot.
        """
        if self._hung_up:
            watched, timeout = [self.wake_fd], self._hangup_poll
            if limit is None or limit >= timeout:
                self._hangup_poll = min(self._hangup_poll * 1.5, HANGUP_POLL_MAX)
        else:
            watched, timeout = [self.master_fd, self.wake_fd], TOUCH_POLL
        if limit is not None:
            timeout = min(timeout, max(0.0, limit))
        readable, _, _ = select.select(watched, [], [], timeout)
        if self.wake_fd in readable:
            self._drain_wake()
        if self._hung_up or self.master_fd in readable:
            self._read_master()

    def readline(self) -> bytes:
        """The next line the host sent (with its ``\\n``); ``b""`` when this boot must end."""
        while True:
            line = self._take_line()
            if line is not None:
                return line
            if self._boot_must_end():
                return b""
            self._await_input()

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input: True when a byte can be read now or the boot must end.

        A host closing the port does not end the boot: the board waits for the next one.
        """
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            if self._pending or self._boot_must_end():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._await_input(left)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes from the host (blocking); fewer, possibly ``b""``, when the boot must end."""
        while len(self._pending) < n and not self._boot_must_end():
            self._await_input()
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def write(self, data: bytes) -> None:
        """Send bytes to the host without ever blocking; what does not fit is dropped and counted."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master_fd, view)
            except (BlockingIOError, OSError):
                self.dropped += len(view)
                return
            view = view[written:]

    def flush(self) -> None:
        """Nothing to flush: writes go straight to the pty."""


class SimulatedHardware:
    """The ``hw`` object of ``firmware/app/main.py`` on a virtual board.

    ``storage`` is the board's simulated flash filesystem (a directory, made when first written;
    ``None``: it holds nothing and refuses writes, as for the pulse-count firmware, which stores
    nothing); ``fpga`` its simulated iCE40, or ``None`` for a board without one.
    """

    def __init__(
        self, board: BoardControl, storage: Path | None = None, fpga: FpgaSimulator | None = None
    ) -> None:
        self._board = board
        self._storage = storage
        self._fpga = fpga

    def _path(self, name: str) -> Path:
        if self._storage is None:
            raise OSError(errno.EROFS, "this board has no flash filesystem")
        if not FILE_NAME.fullmatch(name) or name.endswith(".tmp"):
            raise OSError(errno.EINVAL, f"invalid file name {name!r}")
        return self._storage / name

    def read_file(self, name: str) -> bytes | None:
        """A file of the simulated flash filesystem, or None when there is none."""
        if self._storage is None:
            return None
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write_file(self, name: str, data: bytes) -> None:
        """Replace a file atomically (picofleet.common.atomic)."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, bytes(data))

    def remove_file(self, name: str) -> None:
        """Remove a file (nothing when there is none)."""
        self._path(name).unlink(missing_ok=True)

    def has_fpga(self) -> bool:
        """Whether the board has a (simulated) iCE40."""
        return self._fpga is not None

    def fpga_program(self, bitstream: bytes) -> None:
        """Configure the simulated FPGA (fpga.py ``program``); raises with the simulator's reason."""
        if self._fpga is None:
            raise OSError("this board has no FPGA")
        self._fpga.program(bytes(bitstream))

    def serial(self) -> str:
        """The board's unique id."""
        return self._board.serial

    def board(self) -> str:
        """The board type."""
        return self._board.board_type

    def blink(self, seconds: float) -> None:
        """Blink the (virtual) LED; ``list`` shows ``led_blinking`` meanwhile."""
        self._board.start_blinking(seconds)

    def reboot(self) -> None:
        """Returns at once: the firmware's loop then returns and the board reboots."""

    def bootloader(self) -> None:
        """Returns at once: the board reboots into its bootloader when the firmware returns."""
        self._board.request_bootloader()


class SimulatedPulseCountHardware(SimulatedHardware):
    """The ``hw`` object of ``firmware/pico2_ice/pulsecount.py`` on a virtual board: its FPGA is simulated.

    ``fpga`` (plugins/virtual/fpga.py) configures and counts; its failures reach the firmware as
    exceptions whose text is the reason the host sees.
    """

    SLOTS = 2
    """Bitstreams the board holds at once, as on a pico2-ice."""
    MAX_BITSTREAM = 135_100
    """The largest bitstream accepted, in bytes, as on a pico2-ice (an up5k .bin is 104,090)."""

    def __init__(self, board: BoardControl, fpga: FpgaSimulator) -> None:
        super().__init__(board, None, fpga)
        self._simulator = fpga  # the parent's ``_fpga``, typed as present: this board always has one

    def slots(self) -> int:
        """Bitstreams the board can hold at once."""
        return self.SLOTS

    def max_bitstream(self) -> int:
        """The largest bitstream accepted, in bytes."""
        return self.MAX_BITSTREAM

    def fpga_prepare(self, bitstream: bytes) -> None:
        """A bitstream arrived complete: the simulator starts building its circuit in the background."""
        self._simulator.prepare(bytes(bitstream))

    def count_start(self, clock_hz: int, window_ms: int) -> None:
        """Drive CLK at ``clock_hz`` and count rising edges on ICE_27 for ``window_ms``; returns at once."""
        self._simulator.count_start(clock_hz, window_ms)

    def count_result(self) -> int | None:
        """None while the window runs, then the count; raises with the reason when counting failed."""
        return self._simulator.count_result()

    def close(self) -> None:
        """The boot ended: stop a running count."""
        self._simulator.stop()
