"""Serving an ASGI app with Hypercorn on a socket we bound: the gateway, the fleet service, the benchmarks.

Binding the socket ourselves gives a known free port with ``--port 0``; Hypercorn then serves it
(``fd://``), with no access log and a short graceful shutdown, until ``shutdown_trigger`` returns;
status lines carry their reason phrase (:mod:`.reason_phrase`), and a connection that is gone gets
no more work (:mod:`.gone_peers`: its queued pipelined requests are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from picofleet.common.errors import ConfigError
from picofleet.common.http import gone_peers, reason_phrase

GRACEFUL_TIMEOUT = 2.0
"""Seconds open connections get to finish at shutdown."""


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind the API's listening socket ourselves, so that port 0 gives a known free port.

    With ``reuse_port`` (``SO_REUSEPORT``) other processes of this user may bind the same port, and
    the kernel spreads new connections over all of them: the fleet service's ``--workers``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(1024)
    return sock


def unix_address(spec: str) -> str:
    """``@NAME`` → ``\0NAME``, a socket in Linux's abstract namespace (no file, nothing left behind
    by a killed process); anything else is a path."""
    return "\0" + spec[1:] if spec.startswith("@") else spec


def bind_unix_socket(spec: str) -> socket.socket:
    """A listening Unix socket at ``spec`` (see :func:`unix_address`); at a path, a stale socket is
    replaced and the new one is mode 0600."""
    address = unix_address(spec)
    abstract = address.startswith("\0")
    if not abstract:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        if not abstract:
            os.chmod(address, 0o600)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {spec}: {error.strerror}") from None
    sock.listen(1024)
    return sock


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve_app(
    app: Any, socks: socket.socket | list[socket.socket], shutdown_trigger: Callable[[], Awaitable[object]]
) -> None:
    """Serve ``app`` on ``socks`` until ``shutdown_trigger()`` returns; Hypercorn closes them."""
    reason_phrase.install()
    gone_peers.install()
    config = HypercornConfig()
    # Hypercorn wraps an fd:// bind without duplicating it and closes it at shutdown: hand it over.
    config.bind = [f"fd://{sock.detach()}" for sock in (socks if isinstance(socks, list) else [socks])]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT
    await serve(app, config, shutdown_trigger=shutdown_trigger)
