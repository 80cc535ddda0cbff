"""Running the gateway: state store, plugins, device manager, discovery and the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from picofleet.common.errors import ConfigError
from picofleet.common.http.server import bind_socket, serve_app, stop_on_signals
from picofleet.common.store import Store, StoreLockedError
from picofleet.gateway.boards.board import Board
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.boot_scripts import run_boot_scripts
from picofleet.gateway.config import GatewayConfig
from picofleet.gateway.discovery.sightings import Discovery
from picofleet.gateway.evaluation.reservations import ReservationBook
from picofleet.gateway.evaluation.reserved_board import ReservedBoards
from picofleet.gateway.evaluation.scheduler import EvaluationScheduler
from picofleet.gateway.features import Features
from picofleet.gateway.http.app import create_app
from picofleet.gateway.panel import ROUTES as PANEL_ROUTES
from picofleet.gateway.plugin_manager import Plugins, load_plugins
from picofleet.gateway.sync import FleetSync
from picofleet.supervisor_bridge.bridge import SupervisorBridge
from picofleet.supervisor_bridge.environment import BalenaEnvironment
from picofleet.supervisor_bridge.proxyvisor import proxyvisor_for

log = logging.getLogger("picofleet.gateway")


@dataclass
class GatewayBoards:
    """The boards of a gateway and what serves them, wired together: the device manager
    (gateway/boards/), the reservation book and the evaluation scheduler (gateway/evaluation/).

    The board layer knows the layers above it only by the Protocols of gateway/boards/owner.py;
    this is where their implementations are handed in.
    """

    manager: DeviceManager
    reservations: ReservationBook
    evaluations: EvaluationScheduler[Board]

    @classmethod
    def build(cls, config: GatewayConfig, store: Store, plugins: Plugins) -> GatewayBoards:
        """The device manager with its reservation book, evaluation scheduler and reserved-board serving."""
        manager = DeviceManager(config, store, plugins)
        reservations = ReservationBook(manager)
        evaluations = EvaluationScheduler(manager, reservations, manager.metrics, manager.changes)
        manager.serve_reservations(reservations, ReservedBoards(manager, reservations, evaluations))
        return cls(manager, reservations, evaluations)

    async def start(self) -> None:
        """Load the stored boards, then their reservations (and run the expiry timer)."""
        await self.manager.start()
        await self.reservations.start()

    async def stop(self) -> None:
        """Fail the evaluations still queued, stop the reservations, then every board task."""
        await self.evaluations.stop()
        await self.reservations.stop()
        await self.manager.stop()


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


def prepare_directories(config: GatewayConfig) -> None:
    """Create the data directories, or refuse to start with one line saying which is unusable."""
    for directory in (config.data, config.db_directory, config.assets_directory):
        private = directory == config.db_directory  # the database holds secrets: a new directory is 0700
        try:
            directory.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create {directory}: {error.strerror} (choose another with --data DIR)"
            ) from None


def _log_if_failed(what: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback saying that the background task ``what`` stopped with an error."""

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %s (the gateway keeps serving its boards)", what, task.exception())

    return ended


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
    await asyncio.to_thread(plugins.startup, config)  # the balena update lock reports stale locks
    bridge_task = asyncio.create_task(bridge.run(), name="supervisor-bridge")
    bridge_task.add_done_callback(_log_if_failed("the supervisor bridge"))
    boards = GatewayBoards.build(config, store, plugins)
    manager = boards.manager
    await boards.start()
    sources = plugins.discovery_sources(config)
    if any(count for count, _ in config.simulate) and not any(source.name == "virtual" for source in sources):
        log.warning("--simulate was given but no plugin provides virtual boards (is 'virtual' disabled?)")
    discovery = Discovery(sources, plugins.board_types, manager.on_present, manager.on_gone)
    discovery.start()
    sync = FleetSync(config, manager, store, boards.reservations) if config.fleet_url else None
    sync_task = asyncio.create_task(sync.run()) if sync is not None else None
    if sync_task is not None:
        sync_task.add_done_callback(_log_if_failed("fleet sync"))
    proxyvisor = proxyvisor_for(config, bridge.env, manager)  # on balena, a dependent app, no fleet
    proxyvisor_task = None
    if proxyvisor is not None:
        bridge.attach(proxyvisor)
        proxyvisor_task = asyncio.create_task(proxyvisor.run(), name="proxyvisor")
        proxyvisor_task.add_done_callback(_log_if_failed("the balena proxyvisor"))

    stop = stop_on_signals()
    host, port = sock.getsockname()[:2]
    # printed whatever the log level: users (and tests) need the URL, also with --port 0
    print(
        f"picofleet gateway listening on http://{host}:{port} (data in {config.data}, board types: "
        f"{', '.join(sorted(plugins.board_types))})",
        flush=True,
    )
    try:
        app = create_app(
            manager,
            reservations=boards.reservations,
            evaluations=boards.evaluations,
            bridge=bridge,
            features=features,
            pages=PANEL_ROUTES,
        )

        async def shutdown_trigger() -> None:
            await stop.wait()
            boards.reservations.events.close()  # event websockets end now, not after the graceful timeout

        await serve_app(app, sock, shutdown_trigger)
    finally:
        log.info("shutting down: closing ports")
        for task in (sync_task, proxyvisor_task, bridge_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await discovery.stop()
            await boards.stop()
        finally:  # also when stopping failed: a lock left held would block every update of the device
            await asyncio.to_thread(plugins.shutdown, config)  # the update lock a cancelled flash left held
            await store.close()
