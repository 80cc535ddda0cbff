"""The reference board firmware (MicroPython-compatible); see ../PROTOCOL.md."""
