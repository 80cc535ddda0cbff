"""Running the fleet service: admin token, ``DATA/fleet.db``, the repositories and Hypercorn.

``python -m picofleet.fleet.service --data DIR [--host H] [--port P] [--max-asset-bytes N]
[--workers N]`` runs it (the ``picofleet fleet serve`` command is wired elsewhere).

With ``--workers N`` (N > 1) this process, the *primary*, binds the port with ``SO_REUSEPORT``,
also listens on a Unix socket in Linux's abstract namespace (``@picofleet-fleet-<pid>-<random>``:
no file to leave behind), and starts N-1 front workers (:mod:`.front_worker`) on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from pathlib import Path

from picofleet.common.errors import ConfigError
from picofleet.common.http.server import bind_socket, bind_unix_socket, serve_app, stop_on_signals
from picofleet.common.store import StoreLockedError
from picofleet.fleet import dashboard
from picofleet.fleet.git.http_backend import FleetRepos
from picofleet.fleet.http.app import create_app
from picofleet.fleet.http.context import FleetService
from picofleet.fleet.manifest import DEFAULT_MAX_ASSET_BYTES
from picofleet.fleet.store import FleetStore
from picofleet.fleet.workers.pool import MAX_WORKERS, FrontWorkers

__all__ = ["load_admin_token", "main", "run_fleet"]

log = logging.getLogger("picofleet.fleet")

TOKEN_ENV = "PICOFLEET_ADMIN_TOKEN"
MAX_ASSET_ENV = "PICOFLEET_MAX_ASSET_BYTES"
WORKERS_ENV = "PICOFLEET_FLEET_WORKERS"


def load_admin_token(data: Path) -> str:
    """``PICOFLEET_ADMIN_TOKEN`` if set, else ``DATA/admin-token`` (created, mode 0600, at first start;
    a token file found open to other users is narrowed to 0600 with a warning)."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    path = data / "admin-token"
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode & 0o777
        if mode & ~0o600:
            path.chmod(0o600)
            log.warning("%s was open to other users (mode %04o); it is now 0600", path, mode)
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when an empty file was there, with its own mode
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


async def run_fleet(
    data: Path,
    host: str = "0.0.0.0",
    port: int = 8080,
    max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Serve the fleet service until SIGINT/SIGTERM; prints the URL it listens on at any log level."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}, not {workers}")
    data = Path(data)
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create {data}: {error.strerror} (choose another with --data DIR)"
        ) from None
    token = load_admin_token(data)
    socks = [bind_socket(host, port, reuse_port=workers > 1)]
    store = FleetStore(data / "fleet.db")
    try:
        await store.open()
    except StoreLockedError as error:
        socks[0].close()
        raise ConfigError(str(error)) from None
    bound_host, bound_port = socks[0].getsockname()[:2]
    front: FrontWorkers | None = None
    primary = ""
    if workers > 1:
        primary = f"@picofleet-fleet-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            socks.append(bind_unix_socket(primary))
        except ConfigError:
            socks[0].close()
            await store.close()
            raise
        front = FrontWorkers(workers - 1, bound_host, bound_port, primary, {TOKEN_ENV: token}, log_level)
    repos = FleetRepos(data, store, max_asset_bytes)
    try:
        await repos.start()
    except BaseException:
        await repos.close()
        for sock in socks:
            sock.close()
        await store.close()
        raise

    stop = stop_on_signals()

    service = FleetService(store, repos, token)

    async def shutdown() -> None:
        await stop.wait()
        service.close_long_polls()
        if front is not None:
            await front.stop()  # first: their change-feed connections would hold up Hypercorn's shutdown

    suffix = f"; {workers} processes, primary on {primary}" if front is not None else ""
    print(
        f"picofleet fleet listening on http://{bound_host}:{bound_port} (data in {data}{suffix})", flush=True
    )
    try:
        app = create_app(service, pages=dashboard.ROUTES)
        if front is not None:
            await front.start()
        await serve_app(app, socks, shutdown)
    finally:
        if front is not None:
            await front.stop()
        await repos.close()
        await store.close()


def add_arguments(parser: argparse.ArgumentParser, data_default: Path | None = None) -> None:
    """The options of the fleet service (``--data`` is required when it has no default)."""
    parser.add_argument(
        "--data",
        type=Path,
        default=data_default,
        required=data_default is None,
        help="directory of fleet.db, git/, assets/" + (f" (default {data_default})" if data_default else ""),
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--max-asset-bytes",
        type=int,
        default=os.environ.get(MAX_ASSET_ENV) or str(DEFAULT_MAX_ASSET_BYTES),
        help=f"size limit of one firmware file (default 32 MiB, or ${MAX_ASSET_ENV})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.environ.get(WORKERS_ENV) or "1",  # a string: argparse checks it as it checks --workers
        help="processes serving the port: this one and N-1 front workers answering target-state "
        f"checks from a cache (default 1, or ${WORKERS_ENV}); about one per core for large fleets",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ENM_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default info, or $ENM_LOG_LEVEL)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the fleet service with the options of :func:`add_arguments` until SIGINT/SIGTERM."""
    logging.basicConfig(
        stream=sys.stdout,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        asyncio.run(
            run_fleet(args.data, args.host, args.port, args.max_asset_bytes, args.workers, args.log_level)
        )
    except ConfigError as error:
        print(f"picofleet fleet: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry for tests and development: ``python -m picofleet.fleet.service``."""
    parser = argparse.ArgumentParser(prog="python -m picofleet.fleet.service", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
