"""The ``hw`` object the firmware asks (firmware/app, firmware/pico2_ice/pulsecount), faked for tests."""

from __future__ import annotations


class FakeHardware:
    """Records what the firmware asks of the hardware: a fixed serial and ``BOARD``, and the calls made."""

    BOARD = "rp2350"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def serial(self) -> str:
        return "E6614C311B7E3C2A"

    def board(self) -> str:
        return self.BOARD

    def blink(self, seconds: float) -> None:
        self.calls.append(("blink", seconds))

    def reboot(self) -> None:
        self.calls.append(("reboot",))

    def bootloader(self) -> None:
        self.calls.append(("bootloader",))
