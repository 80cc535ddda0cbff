"""Feature flags: experimental behaviour, off unless ``PICOFLEET_FEATURE_<NAME>`` turns it on.

As on Opentrons' robots, a flag is an environment variable (on balena: a fleet or device
variable), read once at start. ``1``, ``true``, ``yes`` and ``on`` turn a flag on; ``0``,
``false``, ``no``, ``off`` or an empty value leave it off; any other value stops the gateway with
one line (:class:`~picofleet.gateway.config.ConfigError`). A ``PICOFLEET_FEATURE_*`` variable
naming no flag is reported with a warning, not refused: a flag removed by an update must not
keep a device from starting. docs/configuration.md lists every flag; a test keeps it in step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from picofleet.common.errors import ConfigError

log = logging.getLogger("picofleet.gateway")

PREFIX = "PICOFLEET_FEATURE_"
ON = frozenset({"1", "true", "yes", "on"})
OFF = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Feature:
    """One feature flag: its name (after the prefix) and what it turns on."""

    name: str
    help: str

    @property
    def env(self) -> str:
        """Its environment variable."""
        return PREFIX + self.name


FEATURES: tuple[Feature, ...] = (
    Feature(
        "IDENTIFY_BOARDS",
        "PUT /v1/enm/identify also blinks the LED of every board running its firmware "
        "(not only the Pi's, through the balena supervisor)",
    ),
)
FEATURES_BY_NAME = {feature.name: feature for feature in FEATURES}


@dataclass(frozen=True)
class Features:
    """The flags that are on."""

    on: frozenset[str] = frozenset()

    def __contains__(self, name: object) -> bool:
        return name in self.on

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Features:
        """Read every ``PICOFLEET_FEATURE_*`` variable; :class:`ConfigError` for a value not on/off."""
        environ = os.environ if environ is None else environ
        on: set[str] = set()
        for variable, value in sorted(environ.items()):
            if not variable.startswith(PREFIX):
                continue
            name = variable[len(PREFIX) :]
            if name not in FEATURES_BY_NAME:
                known = ", ".join(feature.env for feature in FEATURES)
                log.warning("unknown feature flag %s ignored (known: %s)", variable, known)
                continue
            word = value.strip().lower()
            if word in ON:
                on.add(name)
            elif word not in OFF:
                raise ConfigError(f"invalid {variable} {value!r}: must be 1/true/yes/on or 0/false/no/off")
        return cls(frozenset(on))

    def announce(self) -> None:
        """Log the flags that are on (once, at start)."""
        if self.on:
            log.info("feature flags on: %s", ", ".join(PREFIX + name for name in sorted(self.on)))
