"""Clients that pipeline HTTP/1.1 requests on raw sockets: some read every answer, some close without
reading (tests/test_gone_peers.py, benchmarks/abandoned_pipelines.py)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import h11
import psutil

SEND_FAILED = "socket.send() raised exception"
"""What asyncio logs for each write to a transport whose connection is lost (after the fifth)."""


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def _requests(url: str, path: str, count: int) -> bytes:
    host, port = _address(url)
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() * count


def abandon_pipelines(url: str, clients: int, requests: int, path: str = "/v1/devices") -> list[int]:
    """``clients`` connections at once, each sending ``requests`` pipelined GETs of ``path`` and closing
    without reading an answer; the clients' local ports."""
    payload = _requests(url, path, requests)
    ports: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with socket.create_connection(_address(url), timeout=10) as sock:
            with lock:
                ports.append(sock.getsockname()[1])
            sock.sendall(payload)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ports


def pipelined_answers(
    url: str, requests: int, path: str = "/v1/devices", half_close: bool = False
) -> list[int]:
    """Send ``requests`` pipelined GETs of ``path`` on one connection (then shut down the sending side
    with ``half_close``) and read the answers until each came or the server closed; their status codes."""
    statuses: list[int] = []
    parser = h11.Connection(h11.CLIENT)  # reads one answer per request it sent: it "sends" each in turn
    request = h11.Request(method="GET", target=path, headers=[("Host", "x")])
    parser.send(request)
    parser.send(h11.EndOfMessage())
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(_requests(url, path, requests))
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while len(statuses) < requests:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                statuses.append(event.status_code)
            elif isinstance(event, h11.EndOfMessage) and len(statuses) < requests:
                parser.start_next_cycle()
                parser.send(request)
                parser.send(h11.EndOfMessage())
            elif isinstance(event, h11.ConnectionClosed):
                break
    return statuses


def connections_from(pid: int, ports: list[int]) -> int:
    """How many TCP connections process ``pid`` still has to the client ports ``ports``."""
    wanted = set(ports)
    return sum(
        1
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port in wanted
    )
