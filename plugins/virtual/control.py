"""Talking to a running rack of virtual boards over its control socket (client side).

The rack (``python -m picofleet.plugins.virtual.rack``) listens on a unix stream socket,
``<state dir>/rack.sock`` unless told otherwise. A path longer than 107 bytes cannot be bound;
the rack then listens in the Linux abstract namespace instead, at
``"\\0picofleet-rack-" + sha1(absolute socket path)[:16]`` (:func:`socket_address`).

The protocol is newline-delimited JSON: a connection carries any number of request lines, each
answered by one response line (``subscribe`` turns it into a stream of events); see rack.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

SOCKET_NAME = "rack.sock"
MAX_UNIX_PATH = 107
"""The longest socket path ``bind`` takes (``sun_path`` is 108 bytes with its NUL)."""


class RackUnavailable(Exception):
    """No rack answers at the state directory (not running, still starting, or hung)."""


def default_socket_path(state_dir: Path) -> Path:
    """Where a rack with this state directory listens by default."""
    return Path(state_dir) / SOCKET_NAME


def socket_address(socket_path: Path) -> str:
    """The address to bind or connect for ``socket_path``: the path, or an abstract name if too long."""
    absolute = os.path.abspath(socket_path)
    if len(os.fsencode(absolute)) <= MAX_UNIX_PATH:
        return absolute
    return "\0picofleet-rack-" + hashlib.sha1(os.fsencode(absolute)).hexdigest()[:16]


def connect(state_dir: Path, timeout: float = 5.0, socket_path: Path | None = None) -> socket.socket:
    """A connected socket to the rack of ``state_dir``; raises :class:`RackUnavailable`."""
    address = socket_address(socket_path or default_socket_path(state_dir))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise RackUnavailable(f"no virtual board rack is running in {state_dir}") from None
    except OSError as error:
        sock.close()
        raise RackUnavailable(f"cannot reach the virtual board rack in {state_dir}: {error}") from None
    return sock


def read_line(sock: socket.socket, buffer: bytearray, deadline: float | None) -> bytes | None:
    """The next line from ``sock`` (``buffer`` keeps what follows it); ``None`` at EOF.

    Raises ``TimeoutError`` at ``deadline`` (``time.monotonic()``), ``None`` meaning no deadline.
    """
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:  # socket.timeout
            raise TimeoutError from None
        if not chunk:
            return None
        buffer += chunk


def rack_request(state_dir: Path, request: dict, timeout: float = 5.0) -> dict:
    """Send one request to the rack of ``state_dir`` and return its response.

    The response is returned as it is, ``{"ok": false, "error": ...}`` included. Raises
    :class:`RackUnavailable` with a readable message when no rack runs there or it does not
    answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    sock = connect(state_dir, timeout)
    try:
        sock.sendall(json.dumps(request).encode() + b"\n")
        try:
            line = read_line(sock, bytearray(), deadline)
        except TimeoutError:
            raise RackUnavailable(
                f"the virtual board rack in {state_dir} did not answer within {timeout:g} s"
            ) from None
        except OSError as error:
            raise RackUnavailable(f"the virtual board rack in {state_dir} failed: {error}") from None
    finally:
        sock.close()
    if line is None:
        raise RackUnavailable(f"the virtual board rack in {state_dir} closed the connection")
    try:
        response = json.loads(line)
    except ValueError:
        raise RackUnavailable(f"the virtual board rack in {state_dir} answered garbage") from None
    if not isinstance(response, dict):
        raise RackUnavailable(f"the virtual board rack in {state_dir} answered garbage")
    return response
