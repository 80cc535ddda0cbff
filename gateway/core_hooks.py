"""The gateway's built-in hook implementations, asked last (``trylast``).

They cover what is the same for every board: pyserial ports, picofleet's own firmware
protocol (firmware/PROTOCOL.md), MicroPython's raw REPL (through mpremote), the 1200-baud
touch, and writing a UF2 to a bootloader drive that is a directory (a mounted or virtual drive)
or a raw block device. Board plugins override any of them by answering first.

The firmware clients (firmware/host/) raise their own :class:`FirmwareError`; the hooks here turn
it into :class:`BoardError` with the same message, as the contract asks (any other exception would
be logged with a traceback as a plugin bug).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Generator
from contextlib import AbstractContextManager

import serial
from mpremote.transport import TransportError

from picofleet.firmware.host.errors import FirmwareError, NoAnswer, PortLost
from picofleet.firmware.host.mpremote_install import DeadlineTransport
from picofleet.firmware.host.protocol import FirmwareClient, UnknownOp, random_id
from picofleet.gateway import bootloader_drive
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.discovery.udev import usb_sources
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import (
    BoardError,
    BoardIdentity,
    BoardRef,
    DiscoverySource,
    EvaluationFirmware,
    FpgaState,
    ProgressCallback,
)

log = logging.getLogger("picofleet.board")

IDENTIFY_TIMEOUT = 1.0
TOUCH_HOLD = 0.15
WRITE_CHUNK = 64 * 512
UF2_FILE_NAME = "PICOFLEET.UF2"
MICROPYTHON_FIRMWARES = frozenset({"micropython", "pico-ice"})
"""USB identities that may be MicroPython: stock rp2 builds, and tinyVision's for the pico-ice boards."""
RAW_REPL_HANDSHAKE = 1.5
"""Seconds a MicroPython raw REPL has to answer Ctrl-A."""
RAW_REPL_BUDGET = 3.0
"""Seconds for the whole raw REPL exchange: handshake, sending the code, listening for the reset."""
RAW_REPL_READ_TIMEOUT = 0.2
RAW_REPL_FOLLOW = 1.0
BOOTLOADER_CODE = "import machine; machine.bootloader()"


board_output = logging.getLogger("picofleet.board.output")
"""What the boards' firmware logs; its level is DEPENDENT_LOG_LEVEL."""

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _client(board: BoardRef, port: serial.Serial) -> FirmwareClient:
    def forward(level: str, text: str) -> None:
        level_number = _LEVELS.get(level, logging.INFO)
        board_output.log(level_number, "[%s] %s", board.serial, text, extra={"board": board.serial})

    # a client per hook call: a random first id, so that a late answer to the previous call's
    # request (given up on) is not taken for this call's
    return FirmwareClient(port, on_log=forward, first_id=random_id())


@hookimpl(trylast=True)
def picofleet_open_port(board: BoardRef) -> serial.Serial | None:
    """Open ``board.port`` with pyserial: 115200 8N1, exclusive, short read timeout."""
    if board.port is None:
        return None
    try:
        return serial.Serial(board.port, 115200, timeout=0.1, write_timeout=2, exclusive=True)
    except (serial.SerialException, OSError) as error:
        raise BoardError(f"cannot open {board.port}: {error}") from None


@hookimpl(trylast=True)
def picofleet_close_port(board: BoardRef, port: serial.Serial) -> bool | None:
    """Close the port, ignoring errors of a device that is already gone."""
    with contextlib.suppress(serial.SerialException, OSError):
        port.close()
    return True


@hookimpl(trylast=True)
def picofleet_identify(board: BoardRef, port: serial.Serial) -> BoardIdentity | None:
    """Ask picofleet firmware (``identify``); ``None`` when the firmware does not speak it."""
    try:
        answer = _client(board, port).identify(timeout=IDENTIFY_TIMEOUT)
    except PortLost as error:
        raise BoardError(str(error)) from error
    except FirmwareError as error:
        log.debug("%s: no picofleet firmware answered identify: %s", board.serial, error)
        return None
    return BoardIdentity(
        board_type=str(answer["board"]),
        serial=str(answer["serial"]),
        firmware=str(answer["firmware"]),
        version=str(answer["version"]),
        environment=_string_map(answer.get("environment")),
        config=_string_map(answer.get("config")),
        fpga_image=_fpga_state(answer["fpga"]) if "fpga" in answer else None,
    )


def _string_map(value: object) -> dict[str, str] | None:
    """A ``{name: value}`` of strings from a board's answer, or ``None`` when it is not one."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None
    return dict(value)


def _fpga_state(value: object) -> FpgaState:
    """An ``identify`` answer's ``fpga``: ``null`` (no image) or ``{"sha256", "configured", "error"?}``."""
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), str):
        return FpgaState(None, False)
    error = value.get("error")
    return FpgaState(str(value["sha256"]), value.get("configured") is True, str(error) if error else None)


@hookimpl(trylast=True)
def picofleet_apply_settings(
    board: BoardRef, port: serial.Serial, environment: dict[str, str], config: dict[str, str]
) -> dict[str, dict[str, str]] | None:
    """picofleet's ``settings`` op; ``None`` when the firmware does not know it or does not answer."""
    try:
        return _client(board, port).apply_settings(environment, config, timeout=IDENTIFY_TIMEOUT)
    except (UnknownOp, NoAnswer):
        return None
    except FirmwareError as error:
        raise BoardError(str(error)) from error


@hookimpl(trylast=True)
def picofleet_write_fpga_image(
    board: BoardRef, port: serial.Serial, image: bytes | None, progress: ProgressCallback
) -> FpgaState | None:
    """picofleet's ``fpga_begin``/``fpga_chunk``/``fpga_end`` (``fpga_clear`` for ``None``); ``None``
    when the firmware does not know them."""
    client = _client(board, port)
    try:
        if image is None:
            client.clear_fpga_image()
            return FpgaState(None, False)
        answer = client.write_fpga_image(image, progress)
    except UnknownOp:
        return None
    except FirmwareError as error:
        raise BoardError(str(error)) from error
    return FpgaState(answer["sha256"], answer["configured"], answer.get("error"))


def touch_1200(port: serial.Serial) -> None:
    """The 1200-baud touch: set the line coding to 1200 baud, then drop DTR, as arduino-cli does.

    pico-sdk's stdio_usb reboots into BOOTSEL on the line coding alone
    (``PICO_STDIO_USB_RESET_MAGIC_BAUD_RATE``), so once the baud rate is set the DTR step may
    fail harmlessly: a port without modem lines (a pty) refuses it, and a board already
    rebooting is gone.
    """
    try:
        port.baudrate = 1200
    except (serial.SerialException, OSError) as error:
        raise BoardError(f"1200-baud touch failed: {error}") from None
    with contextlib.suppress(serial.SerialException, OSError):
        port.dtr = False
    time.sleep(TOUCH_HOLD)  # the firmware reacts to the line coding; give it a moment before close


class _RawRepl(DeadlineTransport):
    """mpremote's serial transport, with every wait cut off at one deadline.

    mpremote waits up to 10 s for a silent device in places; the hook must return within 5 s.
    """

    def __init__(self, device: str, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        super().__init__(device, baudrate=115200, timeout=RAW_REPL_READ_TIMEOUT)

    def close(self) -> None:
        """Close the device; a board that reset may refuse mpremote's DTR/RTS change first."""
        try:
            super().close()
        except OSError:
            with contextlib.suppress(serial.SerialException, OSError):
                self.serial.close()


def _raw_repl_bootloader(board: BoardRef, device: str) -> bool:
    """Run ``machine.bootloader()`` through MicroPython's raw REPL on ``device`` (mpremote).

    Returns ``False`` when no raw REPL answered, ``True`` once the code was accepted (``OK``):
    the board then resets and its port goes away mid-read, which is success. Raises
    :class:`BoardError` if the board ran the code and reported an error instead.
    """
    try:
        repl = _RawRepl(device, RAW_REPL_BUDGET)
    except (TransportError, serial.SerialException, OSError) as error:
        log.info("%s: cannot open %s for the MicroPython raw REPL: %s", board.serial, device, error)
        return False
    try:
        try:
            # On a failed handshake mpremote prints what it received to stdout; that line is left
            # there: redirecting sys.stdout is process-wide and these hooks run in parallel threads.
            repl.enter_raw_repl(soft_reset=False, timeout_overall=RAW_REPL_HANDSHAKE)
            repl.exec_raw_no_follow(BOOTLOADER_CODE)
        except (TransportError, serial.SerialException, OSError) as error:
            log.info("%s: no MicroPython raw REPL answered on %s (%s)", board.serial, device, error)
            if repl.in_raw_repl:
                with contextlib.suppress(serial.SerialException, OSError):
                    repl.exit_raw_repl()  # leave a MicroPython that half-answered at its normal REPL
            return False
        try:
            _, error_output = repl.follow(timeout=RAW_REPL_FOLLOW)
        except (TransportError, serial.SerialException, OSError):
            return True  # the board reset under us: what machine.bootloader() does
        if error_output:
            text = error_output.decode("utf-8", errors="replace").strip().splitlines()
            raise BoardError(f"machine.bootloader() failed on the board: {text[-1] if text else '?'}")
        return True
    finally:
        repl.close()


@hookimpl(trylast=True)
def picofleet_enter_bootloader(board: BoardRef, port: serial.Serial) -> bool | None:
    """Reboot a board into its UF2 bootloader, whatever firmware it runs.

    1. picofleet firmware: its ``bootloader`` command (1 s for an answer).
    2. No picofleet firmware answered, and the USB identity may be MicroPython's
       (``board.firmware`` is ``micropython``, or ``pico-ice``, which may be tinyVision's
       MicroPython): ``machine.bootloader()`` through the raw REPL (mpremote; 1.5 s for the
       handshake; the connection dropping as the board resets is success). mpremote opens the
       device itself, so the gateway's port is closed first (and reopened for step 3).
    3. Otherwise, or when no raw REPL answered: the 1200-baud touch (pico-sdk stdio_usb and
       pico-ice-sdk firmware reboot on it; stock MicroPython ignores it).

    Returns within about 4.5 s. The gateway closes the port afterwards; closing a port already
    closed here is a no-op.
    """
    try:
        _client(board, port).request("bootloader", timeout=IDENTIFY_TIMEOUT)
        return True
    except PortLost:
        return True  # it reset before its answer reached us: the gateway waits for the drive
    except NoAnswer:
        pass  # not picofleet firmware
    except FirmwareError as error:
        raise BoardError(str(error)) from error
    device = board.port or port.port
    if board.firmware in MICROPYTHON_FIRMWARES and device is not None:
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()  # mpremote opens the device exclusively itself
        if _raw_repl_bootloader(board, device):
            log.info("%s: asked MicroPython for its bootloader (machine.bootloader())", board.serial)
            return True
        try:
            port.open()
        except (serial.SerialException, OSError) as error:
            if not os.path.exists(device):  # it reset before its "OK" reached us: let the gateway wait
                log.info(
                    "%s: %s went away during the raw REPL exchange; taken as rebooting", board.serial, device
                )
                return True
            raise BoardError(f"cannot reopen {device} for the 1200-baud touch: {error}") from None
    log.info("%s: no picofleet firmware or MicroPython answered; 1200-baud touch", board.serial)
    touch_1200(port)
    return True


@hookimpl(wrapper=True)
def picofleet_update_lock(
    config: GatewayConfig,
) -> Generator[None, AbstractContextManager[object] | None, AbstractContextManager[object]]:
    """No update lock when no plugin provides one: a lock that holds nothing.

    A wrapper rather than a ``trylast`` answer, so that every plugin's implementation, ``trylast``
    ones included (balena's, supervisor_bridge/lock_plugin.py), is asked before this default.
    """
    lock = yield
    if lock is None:
        return contextlib.nullcontext()
    return lock


@hookimpl(trylast=True)
def picofleet_restart(board: BoardRef, port: serial.Serial) -> bool | None:
    """Send picofleet's ``reboot`` command; ``None`` if no picofleet firmware answers."""
    try:
        _client(board, port).request("reboot", timeout=IDENTIFY_TIMEOUT)
    except NoAnswer:
        return None
    except FirmwareError as error:
        raise BoardError(str(error)) from error
    return True


@hookimpl(trylast=True)
def picofleet_blink(board: BoardRef, port: serial.Serial, seconds: float) -> bool | None:
    """Send picofleet's ``blink`` command; ``None`` if no picofleet firmware answers."""
    try:
        _client(board, port).request("blink", timeout=IDENTIFY_TIMEOUT, seconds=seconds)
    except NoAnswer:
        return None
    except FirmwareError as error:
        raise BoardError(str(error)) from error
    return True


def _write_chunks(fd: int, uf2: bytes, progress: ProgressCallback, *, positional: bool) -> None:
    total = len(uf2)
    view = memoryview(uf2)
    for offset in range(0, total, WRITE_CHUNK):
        chunk = view[offset : offset + WRITE_CHUNK]
        written = os.pwrite(fd, chunk, offset) if positional else os.write(fd, chunk)
        if written != len(chunk):
            raise BoardError(f"short write to the bootloader drive at byte {offset}")
        progress(offset + len(chunk), total)
    os.fsync(fd)


def _same_device(fd: int, drive: str) -> None:
    """The checks read ``drive`` by its path: make sure it still names the device ``fd`` holds."""
    held, named = os.fstat(fd), os.stat(drive)
    if (held.st_dev, held.st_ino, held.st_rdev) != (named.st_dev, named.st_ino, named.st_rdev):
        raise BoardError(f"refusing to write to {drive}: it changed while it was being checked")


def _open_raw(drive: str, mode: int) -> int:
    """Open a block device (or a regular file standing in for one) for raw, synchronous writes."""
    flags = os.O_WRONLY | os.O_DSYNC  # each chunk is on the board before progress counts it
    if stat.S_ISBLK(mode):
        flags |= os.O_EXCL  # Linux refuses a mounted (or otherwise claimed) block device: EBUSY
    try:
        return os.open(drive, flags)
    except OSError as error:
        if error.errno == errno.EBUSY:
            raise BoardError(
                f"refusing to write to {drive}: it is mounted or in use by another program "
                "(the gateway writes the bootloader drive raw; unmount it)"
            ) from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise BoardError(
                f"no permission to write to {drive} (docs/hardware.md: privileges and udev rules)"
            ) from None
        raise


@hookimpl(trylast=True)
def picofleet_write_uf2(board: BoardRef, drive: str, uf2: bytes, progress: ProgressCallback) -> bool | None:
    """Write the UF2 into a drive directory as one file, or raw and 512-aligned to a block device.

    The RP2 bootroms check every written 512-byte sector for UF2 magics and ignore the FAT, so a
    raw write needs neither a mount nor extra tools: UF2 block ``i`` goes to byte ``512 * i`` of
    the device (``pwrite``, 32 KiB at a time, ``O_DSYNC``, ``fsync`` at the end). Before the
    first byte, ``bootloader_drive.check_raw_write`` insists that INFO_UF2.TXT was checked to
    name the board's chip and still does, that the device is no larger than 1 GiB (the bootroms
    present 128 MiB) and that the image is whole UF2 blocks; a mounted block device is refused.
    """
    try:
        mode = os.stat(drive).st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(os.path.join(drive, UF2_FILE_NAME), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            positional = False
        elif stat.S_ISBLK(mode) or stat.S_ISREG(mode):
            fd = _open_raw(drive, mode)  # first: O_EXCL holds a block device while it is checked
            try:
                bootloader_drive.check_raw_write(drive, uf2)
                _same_device(fd, drive)
            except BaseException:
                os.close(fd)
                raise
            positional = True
        else:
            raise BoardError(f"{drive} is neither a directory nor a block device")
        try:
            _write_chunks(fd, uf2, progress, positional=positional)
        finally:
            os.close(fd)
    except OSError as error:
        raise BoardError(f"the bootloader drive {drive} went away while writing: {error.strerror}") from None
    return True


@hookimpl(trylast=True)
def picofleet_discovery_sources(config: GatewayConfig) -> list[DiscoverySource]:
    """The source of real USB boards, as ``usb_discovery`` says (gateway/discovery/udev.py).

    ``auto``: udev when it is usable, else sysfs polling with one warning saying why;
    ``udev``, ``sysfs``: that one; ``off``: none.
    """
    return usb_sources(config.usb_discovery)


@hookimpl(trylast=True)
def picofleet_evaluation_firmware(
    board: BoardRef, kind: str, config: GatewayConfig
) -> EvaluationFirmware | None:
    """No evaluation firmware for boards no plugin knows: they are never reserved."""
    return None


@hookimpl(trylast=True)
def picofleet_install_files(board: BoardRef, port: serial.Serial, files: dict[str, bytes]) -> bool | None:
    """Copy ``files`` over MicroPython's raw REPL and reset the board (firmware/host/mpremote_install.py)."""
    from picofleet.firmware.host.mpremote_install import install_files

    try:
        install_files(port, files)
    except FirmwareError as error:
        raise BoardError(str(error)) from error
    return True
