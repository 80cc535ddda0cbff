"""picofleet: a balena-style fleet gateway for Raspberry Pi Pico boards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("picofleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
