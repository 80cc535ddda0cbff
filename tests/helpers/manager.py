"""The gateway's device manager run in the test's own event loop: a real store and the installed
plugins, no discovery and no API (the test reports sightings itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from picofleet.common.store import Store
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.config import load_config
from picofleet.gateway.plugin_manager import load_plugins
from picofleet.gateway.service import prepare_directories


@asynccontextmanager
async def device_manager(
    data: Path, env: dict[str, str] | None = None, extra_plugins: Iterable[tuple[str, object]] = ()
) -> AsyncIterator[DeviceManager]:
    """A started :class:`DeviceManager` on ``data`` (settings from ``env``, plugins ``extra_plugins``
    registered next to the installed ones); stopped, and its store closed, on the way out."""
    config = load_config({"data": str(data)}, env or {})
    prepare_directories(config)
    store = Store(config.db_path)
    await store.open()
    manager = DeviceManager(config, store, load_plugins(extra=extra_plugins))
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()
        await store.close()
