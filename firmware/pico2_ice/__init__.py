"""The pulse-count evaluation firmware of pico2-ice boards (MicroPython-compatible); see ../PROTOCOL.md."""
