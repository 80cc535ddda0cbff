"""The hardware of a real RP2040/RP2350 board under MicroPython, for main.py.

Copy this file next to main.py on the board. It implements the ``hw`` interface described in
main.py with MicroPython's ``machine`` module; the simulator has its own implementation
(picofleet.plugins.virtual.hardware). Stock MicroPython does not honour the 1200-baud touch:
the ``bootloader`` request of the protocol is the way into the UF2 bootloader.

Files (settings, the FPGA image) live in MicroPython's flash filesystem, next to main.py; a file
is replaced atomically: written to ``<name>.tmp``, then renamed over the old one (littlefs renames
atomically). On a pico2-ice the iCE40 is configured by the pulse-count firmware's hardware module
(``firmware/pico2_ice/hw_pico2_ice.py``, copied to the board as well; it needs tinyVision's
MicroPython with the ``ice`` module), created the first time an image is configured.
"""

import os
import sys
import time

import machine
import micropython


def _board():
    """The board type, from the MicroPython build's machine name."""
    machine_name = sys.implementation._machine.lower()
    if "ice" in machine_name:
        return "pico2-ice"
    if "rp2350" in machine_name:
        return "rp2350"
    return "rp2040"


class Hardware:
    """The ``hw`` object of main.py for a real board."""

    def __init__(self):
        self._board = _board()
        # The green LED: GPIO0 on pico2-ice (active low), GPIO25 on Pico / Pico 2.
        self._led_active_low = self._board == "pico2-ice"
        self._led = machine.Pin(0 if self._led_active_low else 25, machine.Pin.OUT)
        self._led_off()
        self._timer = machine.Timer()
        self._blink_until = 0
        micropython.kbd_intr(-1)  # byte 0x03 is data, not Ctrl-C
        self._ice = None  # hw_pico2_ice.Hardware, made when the FPGA is first configured

    def serial(self):
        """The chip's unique id as 16 upper-case hex digits (as USB reports it)."""
        return "".join("%02X" % b for b in machine.unique_id())  # noqa: UP031 (MicroPython-safe)

    def board(self):
        """The board type name."""
        return self._board

    def _led_off(self):
        self._led.value(1 if self._led_active_low else 0)

    def _tick(self, timer):
        if time.ticks_diff(self._blink_until, time.ticks_ms()) <= 0:
            timer.deinit()
            self._led_off()
        else:
            self._led.toggle()

    def blink(self, seconds):
        """Blink the LED at 2 Hz for ``seconds``, in the background (a timer callback)."""
        self._blink_until = time.ticks_add(time.ticks_ms(), int(seconds * 1000))
        self._timer.init(period=250, mode=machine.Timer.PERIODIC, callback=self._tick)

    def reboot(self):
        """Reboot into this firmware."""
        machine.reset()

    def bootloader(self):
        """Reboot into the ROM UF2 bootloader."""
        machine.bootloader()

    def read_file(self, name):
        """The bytes of a file of the flash filesystem, or None when there is none."""
        try:
            with open(name, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def write_file(self, name, data):
        """Replace a file atomically: a temporary file, synced, then renamed over the old one."""
        temp = name + ".tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
        if hasattr(os, "sync"):
            os.sync()
        os.rename(temp, name)

    def remove_file(self, name):
        """Remove a file (nothing when there is none)."""
        try:  # noqa: SIM105 (MicroPython has no contextlib)
            os.remove(name)
        except OSError:
            pass

    def has_fpga(self):
        """Whether the board carries an iCE40 (the pico2-ice)."""
        return self._board == "pico2-ice"

    def fpga_program(self, bitstream):
        """Configure the iCE40 with hw_pico2_ice's code; raises Exception(reason) unless CDONE went high."""
        if self._ice is None:
            try:
                import hw_pico2_ice
            except ImportError as error:
                missing = "hw_pico2_ice.py or the ice module is missing (" + str(error) + ")"
                raise Exception("cannot configure the FPGA: " + missing) from None
            self._ice = hw_pico2_ice.Hardware()
            self._led_off()
        self._ice.fpga_program(bitstream)

    def stdin(self):
        """The USB serial input, binary."""
        return sys.stdin.buffer

    def stdout(self):
        """The USB serial output, binary."""
        return sys.stdout.buffer
