"""Serving an ASGI app with Hypercorn on a socket we bound: the gateway, the fleet service, the benchmarks.

Binding the socket ourselves gives a known free port with ``--port 0``; Hypercorn then serves it
(``fd://``), with no access log and a short graceful shutdown, until ``shutdown_trigger`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from .config import ConfigError

GRACEFUL_TIMEOUT = 2.0
"""Seconds open connections get to finish at shutdown."""


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


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve_app(app: Any, sock: socket.socket, shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    """Serve ``app`` on ``sock`` until ``shutdown_trigger()`` returns; Hypercorn closes the socket."""
    config = HypercornConfig()
    # Hypercorn wraps an fd:// bind without duplicating it and closes it at shutdown: hand it over.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT
    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
