"""What balena tells a service container through its environment (../shared/reference/balena.md).

The supervisor sets ``BALENA_SUPERVISOR_ADDRESS`` and ``BALENA_SUPERVISOR_API_KEY`` only for a
service labelled ``io.balena.features.supervisor-api: '1'``; older supervisors used the
``RESIN_*`` names, which are read when the ``BALENA_*`` one is absent. No address means the
gateway is not running on balena (or lacks the label): the bridge is off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from picofleet.gateway import features


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    """The value of the first of ``names`` that is set and not blank."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class BalenaEnvironment:
    """The balena variables of this process; ``address`` is ``None`` outside balena."""

    address: str | None
    api_key: str | None
    device_uuid: str | None
    device_name: str | None
    app_id: str | None
    device_type: str | None
    override_lock: bool

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> BalenaEnvironment:
        """Read the ``BALENA_*`` variables, falling back to their legacy ``RESIN_*`` names."""
        environ = os.environ if environ is None else environ
        address = _first(environ, "BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS")
        override = _first(
            environ,
            "BALENA_SUPERVISOR_OVERRIDE_LOCK",
            "RESIN_SUPERVISOR_OVERRIDE_LOCK",
            "RESIN_OVERRIDE_LOCK",
        )
        return cls(
            address=address.rstrip("/") if address else None,
            api_key=_first(environ, "BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY"),
            device_uuid=_first(environ, "BALENA_DEVICE_UUID", "RESIN_DEVICE_UUID"),
            device_name=_first(environ, "BALENA_DEVICE_NAME_AT_INIT", "RESIN_DEVICE_NAME_AT_INIT"),
            app_id=_first(environ, "BALENA_APP_ID", "RESIN_APP_ID"),
            device_type=_first(environ, "BALENA_DEVICE_TYPE", "RESIN_DEVICE_TYPE"),
            override_lock=(override or "").lower() in features.ON,
        )

    @property
    def on_balena(self) -> bool:
        """Whether a supervisor address was given (the bridge is on)."""
        return self.address is not None

    def device(self) -> dict[str, str | None]:
        """The device's identity as balena gave it (for the API and the log)."""
        return {
            "uuid": self.device_uuid,
            "name": self.device_name,
            "appId": self.app_id,
            "deviceType": self.device_type,
        }
