"""One virtual board: its flash, its boot sequence and its USB nodes, run by one thread.

A board thread owns every file descriptor of its board (the pty master of the application
firmware, the wake pipe) and closes them itself when it ends. Other threads talk to it through
flags under the board's lock and a byte on the wake pipe (:meth:`VirtualBoard.plug`,
:meth:`VirtualBoard.unplug`, :meth:`VirtualBoard.bootsel`, :meth:`VirtualBoard.stop`); that byte is
written under the same lock, and only while the pipe is open, so no write can reach a reused
file-descriptor number.

Boot: the flash (``flash/<serial>.uf2``, the UF2 blocks last flashed) is read as a flat image;
its image descriptor (``firmware/formats/image.py``) named ``picofleet-app`` boots the reference firmware
(``firmware/app/main.py``, unchanged) behind a pty, its files (settings, a pico2-ice's FPGA image,
configured into a simulated FPGA at every boot) in ``storage/<serial>/``; one named
``picofleet-pulsecount`` boots the evaluation firmware (``firmware/pico2_ice/pulsecount.py``,
unchanged) with a simulated FPGA (fpga.py; compiled circuits cached in ``<state>/fpga/``); another
or no descriptor boots "unknown firmware" (a tty that never answers but honours the 1200-baud
touch); empty or invalid flash, or an image the chip's bootrom would not boot (no valid RP2040
boot2 CRC / RP2350 IMAGE_DEF block: bootrom.py), boots the ROM bootloader, as a real RP2 does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from picofleet.common.atomic import atomic_write_bytes
from picofleet.firmware.app.main import FPGA_FILE, App
from picofleet.firmware.formats import image as fw_image
from picofleet.firmware.formats import uf2
from picofleet.firmware.pico2_ice import pulsecount
from picofleet.plugins.virtual import identities
from picofleet.plugins.virtual.bootrom import DriveWatcher, ImageAssembler, boot_refusal, remove_drive
from picofleet.plugins.virtual.fpga import CircuitCache, FpgaError, FpgaSimulator, simulation_mode
from picofleet.plugins.virtual.hardware import PtyPort, SimulatedHardware, SimulatedPulseCountHardware

log = logging.getLogger("picofleet.rack")

Emit = Callable[[str, dict], None]
"""``emit(action, device)``: ``action`` is ``"add"`` or ``"remove"``, ``device`` a UsbDevice as a dict."""

FLASH_SIZE = 16 * 1024 * 1024
"""The largest flat image a flash file may describe (the RP2 XIP window)."""
DRIVE_POLL_MIN = 0.05
"""Seconds between two scans of the bootloader drive while blocks arrive (20 Hz)..."""
DRIVE_POLL_MAX = 0.25
"""... backing off (x1.5 a scan) to this while nothing is written."""
LINGER = 0.05
"""Seconds a rebooting board keeps its port after the firmware returned, so the host reads the answer."""


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def reboot_delay() -> float:
    """Seconds from the last UF2 block to the reboot (``PICOFLEET_SIM_REBOOT_DELAY``, 0.3)."""
    return _env_seconds("PICOFLEET_SIM_REBOOT_DELAY", 0.3)


def boot_delay() -> float:
    """Seconds from a node's removal to the next node's appearance (``PICOFLEET_SIM_BOOT_DELAY``, 0.15)."""
    return _env_seconds("PICOFLEET_SIM_BOOT_DELAY", 0.15)


def factory_flash(board_type: str) -> bytes:
    """The UF2 flash contents of a new board: picofleet-app 1.0.0 built for it."""
    image = fw_image.make_app_image(identities.APP_FIRMWARE, "1.0.0", board_type)
    return uf2.from_binary(image, fw_image.FLASH_BASE, identities.factory_family(board_type))


def read_flash(path: Path, board_type: str) -> tuple[str, dict[str, str] | None]:
    """What the flash file holds, as the bootrom of a ``board_type`` board sees it.

    ``("app", descriptor)``, ``("pulsecount", descriptor)``, ``("unknown", descriptor or None)``,
    ``("blank", None)``, or ``("unbootable", {"reason": why})`` when the chip's bootrom would not
    boot it (no valid boot2 CRC / IMAGE_DEF block: bootrom.py's boot rule).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "blank", None
    try:
        base, binary = uf2.read_uf2(data).to_binary(max_size=FLASH_SIZE)
    except uf2.UF2Error:
        return "blank", None
    if not binary:
        return "blank", None
    refusal = boot_refusal(base, binary, board_type)
    if refusal is not None:
        return "unbootable", {"reason": refusal}
    descriptor = fw_image.find_descriptor(binary)
    if descriptor is not None and descriptor["name"] == identities.APP_FIRMWARE:
        return "app", descriptor
    if descriptor is not None and descriptor["name"] == pulsecount.FIRMWARE:
        return "pulsecount", descriptor
    return "unknown", descriptor


class VirtualBoard:
    """A virtual RP2040/RP2350/pico2-ice board in one slot of the rack."""

    def __init__(self, serial: str, board_type: str, slot: int, state_dir: Path, emit: Emit) -> None:
        self.serial = serial
        self.board_type = board_type
        self.slot = slot
        self.flash_path = state_dir / "flash" / f"{serial}.uf2"
        self.drive_path = state_dir / "drives" / serial
        self.fpga_cache = CircuitCache(state_dir / "fpga")
        self.storage_path = state_dir / "storage" / serial  # its flash filesystem (settings, FPGA image)
        self._emit = emit
        self._lock = threading.Lock()
        self._plugged = False
        self._stopping = False
        self._bootsel = False
        self._to_bootloader = False  # set by the board itself: firmware request or 1200-baud touch
        self.state = "unplugged"
        self.port: str | None = None
        self.drive: str | None = None
        self.firmware: dict[str, str] | None = None
        self.boot_error: str | None = None  # why the bootrom did not boot the flash (in BOOTSEL then)
        self.boots = 0
        self.dropped = 0
        self.flashes = 0
        self._blink_until = 0.0
        self._assembler: ImageAssembler | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._pipe_closed = False
        self._thread: threading.Thread | None = None

    # --- control, from any thread -------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        """Whether the board is (to be) plugged in."""
        with self._lock:
            return self._plugged

    def start(self, plugged: bool) -> None:
        """Start the board's thread; a plugged board boots at once."""
        self._plugged = plugged
        self._thread = threading.Thread(target=self._run, name=f"board-{self.serial}", daemon=True)
        self._thread.start()

    def plug(self) -> None:
        """Plug the USB cable in: the board boots."""
        self._set_flag(plugged=True)

    def unplug(self) -> None:
        """Pull the USB cable: the board's node disappears."""
        self._set_flag(plugged=False)

    def bootsel(self) -> None:
        """Hold BOOTSEL and press reset: the board reboots into its ROM bootloader."""
        self._set_flag(bootsel=True)

    def stop(self) -> None:
        """Ask the thread to remove the board's node and end."""
        self._set_flag(stopping=True)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`stop`); a board never started closes its pipe here."""
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._close_pipe()

    def _close_pipe(self) -> None:
        with self._lock:
            if not self._pipe_closed:
                self._pipe_closed = True
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _set_flag(self, **flags: bool) -> None:
        with self._lock:
            if "plugged" in flags:
                self._plugged = flags["plugged"]
            if flags.get("bootsel"):
                self._bootsel = True
            if flags.get("stopping"):
                self._stopping = True
            if not self._pipe_closed:
                with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                    os.write(self._wake_write, b"!")

    def info(self) -> dict:
        """The board as the control socket's ``list`` shows it."""
        with self._lock:
            return {
                "serial": self.serial,
                "board_type": self.board_type,
                "slot": self.slot,
                "state": self.state,
                "plugged": self._plugged,
                "port": self.port,
                "drive": self.drive,
                "firmware": dict(self.firmware) if self.firmware else None,
                "boot_error": self.boot_error,
                "led_blinking": self.state == "application" and time.monotonic() < self._blink_until,
                "boots": self.boots,
                "flashes": self.flashes,
                "dropped_bytes": self.dropped,
                "blocks_accepted": None if self._assembler is None else self._assembler.accepted,
                "blocks_ignored": None if self._assembler is None else self._assembler.ignored,
            }

    # --- BoardControl, from the board's own thread ------------------------------------------

    def interrupted(self) -> bool:
        """Whether the current boot must end (unplug, BOOTSEL, shutdown)."""
        with self._lock:
            return self._stopping or not self._plugged or self._bootsel

    def request_bootloader(self) -> None:
        """The next boot goes to the ROM bootloader (1200-baud touch, ``bootloader`` request)."""
        self._to_bootloader = True
        time.sleep(LINGER)

    def start_blinking(self, seconds: float) -> None:
        """Blink the LED for ``seconds``."""
        with self._lock:
            self._blink_until = time.monotonic() + seconds

    # --- the board's thread -------------------------------------------------------------------

    def _wait(self, seconds: float | None) -> None:
        """Sleep until woken or ``seconds`` have passed (``None``: until woken)."""
        select.select([self._wake_read], [], [], seconds)
        try:
            while os.read(self._wake_read, 64):
                pass
        except BlockingIOError:
            pass

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the boot is interrupted first."""
        deadline = time.monotonic() + seconds
        while not self.interrupted():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wait(left)

    def _set(self, **fields: object) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(self, name, value)

    def _run(self) -> None:
        try:
            self._run_boots()
        finally:
            self._close_pipe()

    def _run_boots(self) -> None:
        delay = False
        while True:
            with self._lock:
                stopping, plugged = self._stopping, self._plugged
            if stopping:
                break
            if not plugged:
                self._set(state="unplugged")
                self._to_bootloader = False
                self._wait(None)
                delay = True
                continue
            if delay:
                self._set(state="booting")
                self._sleep(boot_delay())
                delay = False
                continue  # look at the flags again: the delay may have been cut short
            with self._lock:
                to_bootloader = self._bootsel or self._to_bootloader
                self._bootsel = False
            self._to_bootloader = False
            delay = True
            try:
                kind, descriptor = (
                    ("blank", None) if to_bootloader else read_flash(self.flash_path, self.board_type)
                )
                if kind == "blank":
                    self._run_bootloader()
                elif kind == "unbootable":
                    reason = (descriptor or {}).get("reason", "image does not boot")
                    log.info("board %s: %s: stays in BOOTSEL", self.serial, reason)
                    self._run_bootloader(reason)
                else:
                    self._run_application(kind, descriptor)
            except Exception:
                log.exception("board %s crashed; it reboots", self.serial)
                self._sleep(1.0)
        self._set(state="unplugged")
        log.debug("board %s stopped", self.serial)

    def _device(self, subsystem: str, devname: str, properties: dict[str, str]) -> dict:
        return {
            "key": f"virtual/{self.serial}/{subsystem}/{self.boots}",
            "subsystem": subsystem,
            "devname": devname,
            "properties": properties,
        }

    def _run_application(self, kind: str, descriptor: dict[str, str] | None) -> None:
        """Boot the flashed firmware behind a fresh pty until it reboots or the board is interrupted."""
        if kind == "app" and self.board_type == "pico2-ice":
            self._build_stored_fpga_image()
        master, slave = os.openpty()
        try:
            path = os.ttyname(slave)
            tty.setraw(slave)  # the host reads exactly the bytes the firmware writes
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # hold the master only: the host gets EIO/hangup when it closes
        try:
            port = PtyPort(
                master, self._wake_read, self.interrupted, on_touch=self.request_bootloader, honour_touch=True
            )
            firmware = {"name": descriptor["name"], "version": descriptor["version"]} if descriptor else None
            name = identities.APP_FIRMWARE if kind in ("app", "pulsecount") else None  # MicroPython's id
            properties = identities.tty_properties(self.board_type, name, self.serial, self.slot)
        except BaseException:
            os.close(master)
            raise
        with self._lock:
            self.boots += 1
            self.state, self.port, self.firmware = "application", path, firmware
            self._blink_until = 0.0
            device = self._device("tty", path, properties)
        self._emit("add", device)
        try:
            if kind == "app" and descriptor is not None:
                fpga = FpgaSimulator(self.fpga_cache) if self.board_type == "pico2-ice" else None
                hw = SimulatedHardware(self, self.storage_path, fpga)
                ended = App(hw, port, port, version=descriptor["version"]).run()
                if ended == "reboot":
                    time.sleep(LINGER)
            elif kind == "pulsecount" and descriptor is not None:
                self._run_pulsecount(port, descriptor["version"])
            else:
                while port.readline():
                    pass  # unknown firmware: never answers
        finally:
            with self._lock:
                self.dropped += port.dropped
                self.state, self.port, self.firmware = "booting", None, None
                self._blink_until = 0.0
            os.close(master)  # the one place this fd is closed, by the thread that used it
            self._emit("remove", device)

    def _build_stored_fpga_image(self) -> None:
        """Build the circuit of the FPGA image picofleet-app configures at boot before the USB node
        appears (a real board configures its iCE40 in milliseconds; the simulator may need seconds
        to build a circuit it has not cached, and a host's identify must not wait for that)."""
        try:
            image = (self.storage_path / FPGA_FILE).read_bytes()
        except OSError:
            return
        if simulation_mode() == "netlist":
            with contextlib.suppress(FpgaError):  # the firmware configures it and reports the failure
                self.fpga_cache.get(image)

    def _run_pulsecount(self, port: PtyPort, version: str) -> None:
        """Run the evaluation firmware with a simulated FPGA until it returns; stop its count then."""
        hw = SimulatedPulseCountHardware(self, FpgaSimulator(self.fpga_cache))
        try:
            ended = pulsecount.App(hw, port, port, version=version).run()
        finally:
            hw.close()
        if ended == "reboot":
            time.sleep(LINGER)

    def _run_bootloader(self, boot_error: str | None = None) -> None:
        """Show the bootloader drive until a complete image was flashed or the board is interrupted.

        ``boot_error``: why the bootrom did not boot the flash (``info()`` shows it meanwhile).
        """
        watcher = DriveWatcher(self.drive_path, self.board_type)
        watcher.create()
        properties = identities.block_properties(self.board_type, self.serial, self.slot)
        with self._lock:
            self.boots += 1
            self.state, self.drive = "bootloader", str(self.drive_path)
            self.boot_error = boot_error
            self._assembler = watcher.assembler
            device = self._device("block", str(self.drive_path), properties)
        self._emit("add", device)
        delay = reboot_delay()
        poll = DRIVE_POLL_MIN
        try:
            while not self.interrupted():
                self._wait(poll)
                fresh = watcher.scan()
                last = watcher.assembler.last_accepted
                recent = last is not None and time.monotonic() - last < delay + 1.0
                poll = DRIVE_POLL_MIN if fresh or recent else min(poll * 1.5, DRIVE_POLL_MAX)
                image = watcher.assembler.ready(delay)
                if image is not None:
                    atomic_write_bytes(self.flash_path, image)
                    with self._lock:
                        self.flashes += 1
                    log.info(
                        "board %s flashed %d blocks (%d ignored)",
                        self.serial,
                        len(image) // 512,
                        watcher.assembler.ignored,
                    )
                    break
        finally:
            remove_drive(self.drive_path)
            with self._lock:
                self.state, self.drive, self._assembler = "booting", None, None
                self.boot_error = None
            self._emit("remove", device)
