"""The hardware of a real RP2040/RP2350 board under MicroPython, for main.py.

Copy this file next to main.py on the board. It implements the ``hw`` interface described in
main.py with MicroPython's ``machine`` module; the simulator has its own implementation
(picofleet.plugins.virtual.hardware). Stock MicroPython does not honour the 1200-baud touch:
the ``bootloader`` request of the protocol is the way into the UF2 bootloader.
"""

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

    def stdin(self):
        """The USB serial input, binary."""
        return sys.stdin.buffer

    def stdout(self):
        """The USB serial output, binary."""
        return sys.stdout.buffer
