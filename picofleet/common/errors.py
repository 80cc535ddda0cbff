"""The error every service and command reports as one line: a setting or flag that cannot be used."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message is the one line to show."""
