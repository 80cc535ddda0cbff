"""picofleet-pulsecount on a real pico2-ice: MicroPython runs this file (``main.py``) at boot.

Copy it to the board with ``pulsecount.py``, ``frames.py`` and ``hw_pico2_ice.py`` (the gateway
does it, see docs/pico2-ice-firmware.md). It serves the protocol (../PROTOCOL.md) on the USB
serial port until a Ctrl-C byte (0x03) arrives in a version 1 line, as MicroPython's tools send
one (mpremote, ``picofleet`` itself when it installs new files): the board then returns to the
MicroPython REPL. ``reboot`` and ``bootloader`` requests reset the board.
"""

import sys

import hw_pico2_ice
import micropython
import pulsecount


def main():
    """Serve the protocol; back to the REPL after Ctrl-C or a crash (reported on the console)."""
    hw = None
    ended = None
    try:
        hw = hw_pico2_ice.Hardware()  # inside: a failing init still gives Ctrl-C back (it sets kbd_intr(-1))
        ended = pulsecount.run(hw, hw.stdin(), hw.stdout(), interrupt=True)
    except Exception as error:
        sys.print_exception(error)
        ended = "crash"
    finally:
        try:
            if hw is not None:
                hw.release()
        finally:
            micropython.kbd_intr(3)  # Ctrl-C interrupts again at the REPL
    if ended == "interrupt":
        print("picofleet-pulsecount stopped (Ctrl-C): MicroPython REPL")


main()
