"""The built-in plugin ``balena_update_lock``: balena's update lock, held while boards are flashed.

Loaded through the ``picofleet`` entry-point group like the board plugins (pyproject.toml), so
``picofleet plugins`` lists it and ``PICOFLEET_DISABLE_PLUGINS=balena_update_lock`` turns it
off: the gateway then takes no update lock. The lock itself is :mod:`.update_lock`; this module
only hands it to the gateway through three hooks:

* ``picofleet_startup``: say where the lock is taken, report stale locks (or remove them with
  ``BALENA_SUPERVISOR_OVERRIDE_LOCK=1``);
* ``picofleet_update_lock``: the lock, entered while any board flashes or evaluates. ``trylast``,
  as the core's default was: any other plugin's lock answers first;
* ``picofleet_shutdown``: release whatever a flash cut short left held.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.hookspecs import hookimpl
from picofleet.supervisor_bridge import update_lock


@hookimpl
def picofleet_startup(config: GatewayConfig) -> None:
    """Say where balena's update lock is taken and report (or, with the override, remove) stale ones."""
    update_lock.check_at_start(config)


@hookimpl(trylast=True)
def picofleet_update_lock(config: GatewayConfig) -> AbstractContextManager[object] | None:
    """balena's update lock: ``/tmp/balena/updates.lock`` and the legacy ``/tmp/resin/resin-updates.lock``
    where their directories exist, or the file ENM_LOCK_FILE_LOCATION names; a no-op outside balena
    when neither directory exists."""
    return update_lock.update_lock_for(config)


@hookimpl
def picofleet_shutdown(config: GatewayConfig) -> None:
    """Release every balena update lock this gateway still holds (a flash cut short by the shutdown)."""
    update_lock.release_all()
