"""Shared parts of the fleet benchmarks: a fleet with one pushed release, simulated gateways, a
minimal HTTP/1.1 keep-alive load client and a bare Hypercorn + Starlette "hello" server.

Everything talks to 127.0.0.1 only. ``python benchmarks/_fleet_common.py hello-server`` runs the
hello server (the limit the fleet's target-state endpoint is compared against): the same
Hypercorn config as ``picofleet.fleet.service`` (one worker, no access log, fd-bound socket).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")
BOARD_TYPE = "pico2-ice"


# -- fleet setup -----------------------------------------------------------------------------------


FIRMWARE_ONLY_MANIFEST = """\
boards:
  pico2-ice:
    firmware: build/app.uf2
"""
"""A release of the firmware alone: no ``fpga:``, no ``environment:`` / ``config:``."""

FPGA_CACHE = ROOT / "build" / "benchmarks" / "fpga-counter-16"
"""Where :func:`fpga_bitstream` keeps its build (``build/`` is not versioned)."""


def make_release_repo(work: Path, version: str = "2.0.0") -> tuple[str, bytes]:
    """A work tree with fleet.yml and build/app.uf2 committed: (commit, the UF2's bytes).

    The manifest is the tests' (``tests/test_fleet_git.py`` ``MANIFEST``): firmware plus
    ``environment:`` and ``config:`` values, no ``fpga:``."""
    from tests.helpers.fleet import git
    from tests.test_fleet_git import MANIFEST, app_uf2, commit, write

    work.mkdir(parents=True, exist_ok=True)
    git(work, "init", "-q", "-b", "main")
    firmware = app_uf2(version)
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": firmware})
    return commit(work, f"release {version}"), firmware


def commit_release(
    work: Path,
    version: str,
    *,
    fpga: bytes | None = None,
    environment: dict[str, str] | None = None,
    config: dict[str, str] | None = None,
) -> str:
    """Commit a release to the work tree ``work`` (created on first use): ``build/app.uf2`` (the
    pico2-ice app image of ``version``) under ``firmware:`` and, when given, ``fpga/top.bin`` under
    ``fpga:`` and the ``environment:`` / ``config:`` values. Returns the commit."""
    from tests.helpers.fleet import git
    from tests.test_fleet_git import app_uf2, commit, write

    if not (work / ".git").exists():
        work.mkdir(parents=True, exist_ok=True)
        git(work, "init", "-q", "-b", "main")
    manifest = FIRMWARE_ONLY_MANIFEST
    files: dict[str, bytes | str] = {"build/app.uf2": app_uf2(version)}
    if fpga is not None:
        manifest += "    fpga: fpga/top.bin\n"
        files["fpga/top.bin"] = fpga
    for key, values in (("environment", environment), ("config", config)):
        if values:
            manifest += f"    {key}: {json.dumps(values, sort_keys=True)}\n"  # JSON is flow YAML
    files["fleet.yml"] = manifest
    write(work, files)
    return commit(work, f"release {version}")


def fpga_bitstream() -> tuple[bytes, str]:
    """A real iCE40UP5K ``.bin`` (the divide-by-16 pulse counter of docs/hardware.md) built by the
    project's circuit builder :mod:`picofleet.firmware.circuits`, once: later runs reuse the build in
    :data:`FPGA_CACHE` while its Verilog is unchanged. Returns (the bytes, ``"cached"`` or
    ``"built in N s"``); raises ``RuntimeError`` naming the missing tools."""
    from picofleet.firmware.circuits import build, counter_verilog, missing_tools

    verilog = counter_verilog(16)
    source, packed = FPGA_CACHE / "top.v", FPGA_CACHE / "top.bin"
    if packed.is_file() and source.is_file() and source.read_text() == verilog:
        return packed.read_bytes(), "cached"
    missing = missing_tools()
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not installed (./dev setup installs them), needed to build the"
            " FPGA image; run with --phases firmware for the firmware-only figure"
        )
    started = time.perf_counter()
    packed.unlink(missing_ok=True)
    circuit = build(FPGA_CACHE, verilog)
    return circuit.bin.read_bytes(), f"built in {time.perf_counter() - started:.1f} s"


def push(work: Path, url: str) -> str:
    """``git push URL main`` with the real git client; its stderr (the ``remote:`` lines)."""
    from tests.helpers.fleet import git

    return git(work, "push", url, "main", timeout=120).stderr


def boards_of(
    index: int,
    commit: str | None,
    count: int = 4,
    targets: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The full board report of simulated gateway ``index``: ``count`` pico2-ice boards at
    ``commit``. With ``targets`` (the target state's ``boards``), each board reports the FPGA image,
    environment and config of its target as applied, as a real gateway does once the board confirms
    them (gateway/sync.py ``_board_report``); without, none applied (null)."""
    boards = []
    for slot in range(count):
        uuid = f"sim-{index:05d}-{slot}"
        target = (targets or {}).get(uuid)
        fpga = target.get("fpga") if target else None
        boards.append(
            {
                "LocalUUID": uuid,
                "BoardType": BOARD_TYPE,
                "Name": f"gw{index}-board{slot}",
                "Commit": commit,
                "Status": "Idle",
                "FirmwareVersion": None,
                "online": True,
                "Progress": None,
                "Environment": target["environment"] if target else None,
                "Config": target["config"] if target else None,
                "FpgaImage": fpga["sha256"] if fpga else None,
            }
        )
    return boards


async def provision_gateways(
    url: str, provisioning_key: str, count: int, concurrency: int, deadline: float, boards: int = 4
) -> list[dict[str, Any]]:
    """Provision ``count`` gateways (bounded concurrency), each reporting ``boards`` boards once
    (Commit null) and reading its target state: ``[{"index", "gateway", "key", "etag", "target"}]``."""
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(index: int) -> dict[str, Any]:
            async with semaphore:
                response = await client.post(
                    "/v1/gateways", json={"provisioning_key": provisioning_key, "name": f"sim-{index}"}
                )
                assert response.status_code == 201, response.text
                created = response.json()
                auth = {"Authorization": f"Bearer {created['key']}"}
                response = await client.put(
                    "/v1/gateway/state", json={"boards": boards_of(index, None, boards)}, headers=auth
                )
                assert response.status_code == 200, response.text
                response = await client.get("/v1/gateway/state", headers=auth)
                assert response.status_code == 200, response.text
                return {
                    "index": index,
                    "gateway": created["gateway"],
                    "key": created["key"],
                    "etag": response.headers["etag"],
                    "target": response.json(),
                }

        remaining = deadline - time.monotonic()
        return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), remaining))


# -- the bare Hypercorn + Starlette limit ----------------------------------------------------------


def hello_server_main(processes: int = 1, port: int = 0) -> None:
    """Serve ``GET /hello`` (a tiny JSON body) exactly as the fleet service serves (common/http/server.py):
    ``processes`` processes on one port with ``SO_REUSEPORT``, as ``picofleet fleet serve --workers``."""
    import logging

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from picofleet.common.http.server import bind_socket, serve_app, stop_on_signals

    async def hello(request: Any) -> Response:
        return Response(b'{"hello":"world"}', media_type="application/json")

    async def run() -> None:
        sock = bind_socket("127.0.0.1", port, reuse_port=True)
        stop = stop_on_signals()
        host, bound = sock.getsockname()[:2]
        others = [
            subprocess.Popen(
                [sys.executable, __file__, "hello-server", "1", str(bound)], stdout=subprocess.DEVNULL
            )
            for _ in range(processes - 1)
        ]
        print(f"hello listening on http://{host}:{bound}", flush=True)
        app = Starlette(routes=[Route("/hello", hello, methods=["GET"])])
        try:
            await serve_app(app, sock, stop.wait)
        finally:
            for other in others:
                other.terminate()
                other.wait()

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run())


class HelloProcess:
    """The hello server as a subprocess on an ephemeral loopback port."""

    def __init__(self, processes: int = 1) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.processes = processes
        self.url = ""

    def start(self, timeout: float = 20.0) -> HelloProcess:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "hello-server", str(self.processes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                return self
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("the hello server did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- a minimal HTTP/1.1 keep-alive load client ------------------------------------------------------


def request_bytes(url: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``GET`` request (HTTP/1.1, keep-alive) for the raw load client."""
    host = url.removeprefix("http://")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _load(
    host: str, port: int, requests: list[bytes], expect: int, conns: int, start_at: float, duration: float
) -> dict[str, Any]:
    """``conns`` keep-alive connections sending ``requests`` round-robin, one at a time each, until
    ``start_at + duration``; responses completing in ``[start_at, start_at + duration)`` count."""
    stop_at = start_at + duration
    feed = itertools.cycle(requests)
    counted, statuses, errors = 0, Counter[int](), Counter[str]()

    async def connection() -> None:
        nonlocal counted
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                writer.write(next(feed))
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                status = int(head[9:12])
                found = re.search(rb"\r\ncontent-length: *(\d+)", head)
                if found and int(found.group(1)):
                    await reader.readexactly(int(found.group(1)))
                elif status != 304 and not found:
                    raise RuntimeError(f"no content-length in {head[:200]!r}")
                if b"\r\nconnection: close" in head:  # keep_alive_max_requests: reconnect
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                now = time.monotonic()
                if now >= stop_at:
                    return
                if now >= start_at:
                    counted += 1
                    statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as error:
            errors[type(error).__name__] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(conns)))
    return {
        "count": counted,
        "unexpected": sum(n for s, n in statuses.items() if s != expect),
        "statuses": dict(statuses),
        "errors": dict(errors),
    }


def _load_process(
    host: str, port: int, requests: list[bytes], expect: int, conns: int, start_at: float, duration: float
) -> dict[str, Any]:
    cpu = time.process_time()
    result = asyncio.run(_load(host, port, requests, expect, conns, start_at, duration))
    result["client_cpu_s"] = time.process_time() - cpu
    return result


def _busy(times: Any) -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def measure_rps(
    url: str,
    requests: list[bytes],
    expect: int,
    server_pid: int,
    processes: int = 2,
    conns: int = 32,
    duration: float = 10.0,
    warmup: float = 1.5,
) -> dict[str, Any]:
    """Requests per second ``processes`` client processes × ``conns`` connections get over
    ``duration`` seconds (after ``warmup``), with the server's CPU use (its process and children)
    in that window."""
    import psutil

    host, _, port = url.removeprefix("http://").partition(":")
    server = psutil.Process(server_pid)

    def server_cpu_s() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in [server, *server.children(recursive=True)])

    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        list(pool.map(abs, range(processes)))  # the workers are up before the clock starts
        start_at = time.monotonic() + warmup
        shares = [requests[i::processes] or requests for i in range(processes)]
        futures = [
            pool.submit(_load_process, host, int(port), share, expect, conns, start_at, duration)
            for share in shares
        ]
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before, machine_before = server_cpu_s(), psutil.cpu_times()
        time.sleep(duration)
        server_cpu = server_cpu_s() - cpu_before
        machine_after = psutil.cpu_times()
        results = [future.result(timeout=duration + warmup + 60) for future in futures]
    count = sum(r["count"] for r in results)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    return {
        "requests_per_s": round(count / duration, 1),
        "requests": count,
        "unexpected_status": sum(r["unexpected"] for r in results),
        "errors": dict(errors),
        "server_cpu_cores": round(server_cpu / duration, 2),
        "requests_per_server_cpu_s": round(count / server_cpu, 1) if server_cpu else None,
        "client_cpu_cores": round(sum(r["client_cpu_s"] for r in results) / (duration + warmup), 2),
        "machine_busy_cores": round((_busy(machine_after) - _busy(machine_before)) / duration, 2),
        "client_processes": processes,
        "connections": processes * conns,
        "duration_s": duration,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["hello-server"] and len(sys.argv) <= 4:
        hello_server_main(*(int(arg) for arg in sys.argv[2:]))
    else:
        sys.exit("usage: python benchmarks/_fleet_common.py hello-server [PROCESSES [PORT]]")
