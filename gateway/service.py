"""Running the gateway: state store, plugins, device manager, discovery and the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from ..supervisor_bridge import update_lock
from ..supervisor_bridge.bridge import SupervisorBridge
from ..supervisor_bridge.environment import BalenaEnvironment
from . import reason_phrase
from .api import create_app
from .boot_scripts import run_boot_scripts
from .config import ConfigError, GatewayConfig
from .discovery import Discovery
from .features import Features
from .manager import DeviceManager
from .plugin_manager import Plugins, load_plugins
from .store import Store, StoreLockedError
from .sync import FleetSync

log = logging.getLogger("picofleet.gateway")


def setup_logging(config: GatewayConfig) -> None:
    """Log to stdout (where balena users look), one line per event; board lines name the board."""
    logging.basicConfig(
        stream=sys.stdout,
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("picofleet.board.output").setLevel(config.dependent_log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request to the fleet


def check_simulate(config: GatewayConfig, plugins: Plugins) -> None:
    """Refuse ``--simulate N:BOARD`` for a board type no loaded plugin provides."""
    for _, board_type in config.simulate:
        if board_type not in plugins.board_types:
            known = ", ".join(sorted(plugins.board_types)) or "none"
            raise ConfigError(f"invalid simulate board type {board_type!r} (known: {known})")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the API's listening socket ourselves, so that port 0 gives a known free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(1024)
    return sock


def prepare_directories(config: GatewayConfig) -> None:
    """Create the data directories, or refuse to start with one line saying which is unusable."""
    for directory in (config.data, config.db_directory, config.assets_directory):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create {directory}: {error.strerror} (choose another with --data DIR)"
            ) from None


def _sync_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("fleet sync stopped: %s (the gateway keeps serving its boards)", task.exception())


def _bridge_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "the supervisor bridge stopped: %s (the gateway keeps serving its boards)", task.exception()
        )


async def _run_boot_scripts(config: GatewayConfig) -> None:
    """The user's boot scripts (gateway/boot_scripts.py); nothing they do stops the gateway."""
    try:
        await run_boot_scripts(config.boot_dir, config.boot_script_timeout)
    except Exception:
        log.exception("running the boot scripts failed; the gateway starts anyway")


async def run_gateway(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; then close every port, stop discovery and flush the store."""
    prepare_directories(config)
    features = Features.from_environ()
    plugins = load_plugins(config.disable_plugins)
    check_simulate(config, plugins)
    sock = bind_socket(config.host, config.port)

    store = Store(config.db_path)
    try:
        await store.open()
    except StoreLockedError as error:
        raise ConfigError(str(error)) from None
    await _run_boot_scripts(config)  # before any board is touched; the API answers once they are done
    features.announce()
    bridge = SupervisorBridge(BalenaEnvironment.from_environ())
    bridge.announce()
    await asyncio.to_thread(update_lock.check_at_start, config)
    bridge_task = asyncio.create_task(bridge.run(), name="supervisor-bridge")
    bridge_task.add_done_callback(_bridge_ended)
    manager = DeviceManager(config, store, plugins)
    await manager.start()
    sources = plugins.discovery_sources(config)
    if any(count for count, _ in config.simulate) and not any(source.name == "virtual" for source in sources):
        log.warning("--simulate was given but no plugin provides virtual boards (is 'virtual' disabled?)")
    discovery = Discovery(sources, plugins.board_types, manager.on_present, manager.on_gone)
    discovery.start()
    sync_task = asyncio.create_task(FleetSync(config, manager, store).run()) if config.fleet_url else None
    if sync_task is not None:
        sync_task.add_done_callback(_sync_ended)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    reason_phrase.install()
    hypercorn_config = HypercornConfig()
    host, port = sock.getsockname()[:2]
    # Hypercorn wraps an fd:// bind without duplicating it and closes it at shutdown: hand it over.
    hypercorn_config.bind = [f"fd://{sock.detach()}"]
    hypercorn_config.accesslog = None
    hypercorn_config.errorlog = logging.getLogger("hypercorn.error")
    hypercorn_config.graceful_timeout = 2.0
    # printed whatever the log level: users (and tests) need the URL, also with --port 0
    print(
        f"picofleet gateway listening on http://{host}:{port} (data in {config.data}, board types: "
        f"{', '.join(sorted(plugins.board_types))})",
        flush=True,
    )
    try:
        app = create_app(manager, bridge=bridge, features=features)

        async def shutdown_trigger() -> None:
            await stop.wait()
            manager.events.close()  # open event websockets end now, not after the graceful timeout

        await serve(app, hypercorn_config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
    finally:
        log.info("shutting down: closing ports")
        for task in (sync_task, bridge_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await discovery.stop()
            await manager.stop()
        finally:  # also when stopping failed: a lock left held would block every update of the device
            await asyncio.to_thread(update_lock.release_all)  # whatever a cancelled flash left held
            await store.close()
