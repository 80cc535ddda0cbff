"""What the host side of the firmware protocols raises: :class:`FirmwareError` and its two kinds.

Plain firmware-layer exceptions: firmware/ knows nothing of the gateway. Where the gateway calls
a firmware client (its built-in hooks, gateway/core_hooks.py; the evaluation scheduler) it turns
them into its own errors with the same message.
"""

from __future__ import annotations

__all__ = ["FirmwareError", "NoAnswer", "PortLost"]


class FirmwareError(Exception):
    """The board's firmware did not do what was asked (error answer, no answer, port lost)."""


class NoAnswer(FirmwareError):
    """Nothing that speaks this protocol answered in time (another firmware, or a hung one)."""


class PortLost(FirmwareError):
    """The serial port failed (the board was unplugged or reset under us)."""
