"""Copy files onto a MicroPython board over its raw REPL (mpremote as a library), then soft-reset it.

The gateway uses it for the pulse-count firmware of pico2-ice boards (docs/pico2-ice-firmware.md):
after the MicroPython UF2 is flashed, ``main.py`` and its modules are written to the board's
filesystem and the board is soft-reset from its friendly REPL, so that MicroPython runs
``main.py``. It works on the port the gateway already has open::

    install_files(port, {"main.py": source, "pulsecount.py": ...})

A ``main.py`` already running is stopped by mpremote's Ctrl-C, as MicroPython does by default;
picofleet-pulsecount (which turns Ctrl-C off) leaves to the REPL on a 0x03 byte itself.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import time
from collections.abc import Callable

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from picofleet.firmware.host.errors import FirmwareError, PortLost

__all__ = ["DeadlineTransport", "install_files"]

HANDSHAKE_TIMEOUT = 2.0
"""Seconds the raw REPL has to answer Ctrl-A (per attempt)."""
HANDSHAKE_ATTEMPTS = 2
"""A firmware that was resynchronising after a bad frame ignores the first Ctrl-C; the second works."""
READ_TIMEOUT = 1.0
"""The port's read timeout during the copy (mpremote reads fixed-size answers without a deadline)."""
CHUNK_SIZE = 1024
"""Bytes of a file written per ``exec`` on the board."""
SOFT_REBOOT = b"soft reboot\r\n"
FRIENDLY_PROMPT = b">>> "


class DeadlineTransport(SerialTransport):
    """mpremote's serial transport whose every wait ends at ``self.deadline`` (monotonic) at the latest.

    mpremote waits up to 10 s for a silent device in places; picofleet's callers have time limits.
    """

    deadline: float

    def read_until(
        self,
        min_num_bytes: int,
        ending: bytes,
        timeout: float | None = 10,
        data_consumer: Callable[[bytes], None] | None = None,
        timeout_overall: float | None = None,
    ) -> bytes:
        """mpremote's ``read_until``, returning at the deadline at the latest."""
        remaining = max(0.0, self.deadline - time.monotonic())
        if timeout_overall is None or timeout_overall > remaining:
            timeout_overall = remaining
        return super().read_until(min_num_bytes, ending, timeout, data_consumer, timeout_overall)


class _PortTransport(DeadlineTransport):
    """mpremote's serial transport on a pyserial port that is already open, with one deadline.

    ``SerialTransport.__init__`` opens the device itself; this sets the same attributes on the
    given port instead, and cuts every wait of mpremote's off at the install's deadline.
    """

    def __init__(self, port: serial.Serial, deadline: float) -> None:
        # no super().__init__(): it would open the device itself
        self.in_raw_repl = False
        self.use_raw_paste = True
        self.device_name = port.port
        self.mounted = False
        self.serial = port
        self.is_pty = False  # read with in_waiting, as for a USB device
        self.deadline = deadline


def install_files(port: serial.Serial, files: dict[str, bytes], timeout: float = 30.0) -> None:
    """Write ``files`` (path on the board → content) to a MicroPython board, then soft-reset it.

    Folders in the paths are created. The port stays open (its read timeout is restored).
    Raises :class:`FirmwareError` with a one-line reason: no raw REPL answered, the board
    refused a write, the board did not soft-reboot, or the deadline passed;
    :class:`PortLost` when the port failed (the board went away).
    """
    deadline = time.monotonic() + timeout
    transport = _PortTransport(port, deadline)
    saved_timeout = port.timeout
    where = port.port or "the serial port"
    try:
        port.timeout = READ_TIMEOUT
        _enter_raw_repl(transport, where)
        for path, data in files.items():
            _check_deadline(deadline, timeout, f"writing {path}")
            _write_file(transport, path, bytes(data))
        transport.exit_raw_repl()  # to the friendly REPL: only there does a soft reset run main.py
        transport.read_until(1, FRIENDLY_PROMPT, timeout=None, timeout_overall=HANDSHAKE_TIMEOUT)
        port.write(b"\x04")
        answer = transport.read_until(1, SOFT_REBOOT, timeout=None, timeout_overall=HANDSHAKE_TIMEOUT)
        if not answer.endswith(SOFT_REBOOT):
            raise FirmwareError(f"the board on {where} did not soft-reboot after the copy")
    except (serial.SerialException, OSError) as error:
        raise PortLost(f"serial port {where} failed while copying files: {error}") from error
    finally:
        with contextlib.suppress(serial.SerialException, OSError):
            port.timeout = saved_timeout


def _enter_raw_repl(transport: _PortTransport, where: str) -> None:
    last_error: TransportError | None = None
    for _ in range(HANDSHAKE_ATTEMPTS):
        try:
            # mpremote prints what it received on a failed handshake (stdout): left there, as
            # redirecting sys.stdout is process-wide and the gateway's hooks run in threads
            transport.enter_raw_repl(soft_reset=False, timeout_overall=HANDSHAKE_TIMEOUT)
            return
        except TransportError as error:
            last_error = error
    raise FirmwareError(f"no MicroPython raw REPL answered on {where} ({last_error})")


def _write_file(transport: _PortTransport, path: str, data: bytes) -> None:
    try:
        folder = posixpath.dirname(path)
        if folder:
            transport.exec(
                "import os\n"
                f"p = ''\nfor d in {folder.split('/')!r}:\n"
                "    p = p + '/' + d if p else d\n"
                "    try:\n        os.mkdir(p)\n    except OSError:\n        pass\n"
            )
        transport.fs_writefile(path, data, chunk_size=CHUNK_SIZE)
    except TransportExecError as error:
        lines = error.error_output.strip().splitlines()
        reason = lines[-1] if lines else "no reason"
        raise FirmwareError(f"the board refused to write {path}: {reason}") from None
    except serial.SerialException:
        raise
    except OSError as error:
        if error.strerror != path:  # the port failed (a raw OSError from pyserial's ioctl)
            raise
        # mpremote's translation of the board's OSError: OSError(errno, path)
        reason = errno.errorcode.get(error.errno or 0, str(error.errno))
        raise FirmwareError(f"the board refused to write {path}: OSError {reason}") from None
    except TransportError as error:
        raise FirmwareError(f"copying {path} failed: {error}") from None


def _check_deadline(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() >= deadline:
        raise FirmwareError(f"copying files took longer than {timeout:.0f} s ({what})")
