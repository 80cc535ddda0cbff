"""The rack of virtual boards: a separate process the gateway starts (``--simulate N``).

Usage::

    python -m picofleet.plugins.virtual.rack --state DIR --boards 4:pico2-ice,2:rp2040 [--socket PATH]

Every virtual board is a thread of this process (see board.py); the rack keeps their state in
``DIR`` (written atomically): ``rack.json``, the list of boards ever created (``slot``,
``board_type``, ``serial``, ``plugged``), and ``flash/<serial>.uf2``, each board's flash contents
(the valid UF2 blocks last flashed). Bootloader drives are the directories ``DIR/drives/<serial>/``.
``--boards`` plugs, for each ``N:TYPE``, the first N stored boards of that type (by slot),
creating missing ones with random serials and the factory firmware (picofleet-app 1.0.0); stored
boards beyond N stay in rack.json, unplugged. A rack start plugs exactly those boards, whatever
``plugged`` said when the previous rack stopped.

The rack exits when its standard input reaches end of file (the gateway holds the write end of a
pipe, so a gateway killed with SIGKILL takes its rack with it), on SIGTERM, SIGINT or SIGHUP. One
rack at a time per state directory (``DIR/rack.lock``).

Control socket (unix stream, ``DIR/rack.sock`` by default; see control.py for long paths):
newline-delimited JSON, a client sends request lines and gets one response line each:

* ``{"op": "subscribe"}``: ``{"event": "add", "device": {...}}`` for every present node, then
  ``{"event": "enumerated"}``, then live ``{"event": "add"|"remove", "device": {...}}`` lines until
  the client disconnects. ``device`` is a ``gateway.models.UsbDevice`` as a dict (``key``,
  ``subsystem``, ``devname``, ``properties``).
* ``{"op": "list"}``: ``{"ok": true, "boards": [{"serial", "board_type", "slot", "state",
  "plugged", "port", "drive", "firmware", "led_blinking", "boots", "flashes", "dropped_bytes",
  "blocks_accepted", "blocks_ignored"}]}`` (the last two count the bootloader's UF2 blocks while
  it runs, else null);
  ``state`` is ``application``, ``bootloader``, ``unplugged`` or, for the ~0.15 s between two
  nodes, ``booting``.
* ``{"op": "unplug"|"plug"|"bootsel", "serial": S}``: answered once the board got there
  (``{"ok": true, "board": {...}}``). ``bootsel`` on an unplugged board plugs it in with BOOTSEL held.
* ``{"op": "add", "board_type": T}``: a new board in the next slot, plugged:
  ``{"ok": true, "serial": S, "board": {...}}``.

Errors: ``{"ok": false, "error": "..."}`` (unknown serial, op or board type, malformed JSON, or
``timed out waiting for the board to ...`` when a board did not get there within 5 s).

Exit status: 0 after a stop, 2 for bad arguments (``--boards``; the gateway does not restart such
a rack), 1 when the state directory is in use or unreadable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from picofleet.common.atomic import atomic_write_bytes, atomic_write_json, stale_temp_files
from picofleet.gateway.config import parse_simulate
from picofleet.plugins.virtual import identities
from picofleet.plugins.virtual.board import VirtualBoard, factory_flash
from picofleet.plugins.virtual.bootrom import remove_drive
from picofleet.plugins.virtual.control import default_socket_path, socket_address

log = logging.getLogger("picofleet.rack")

BOOT_WAIT = 10.0
"""Seconds the rack waits for its boards' first nodes before it serves anyway."""
TRANSITION_WAIT = 5.0
"""Seconds an unplug/plug/bootsel/add request waits for the board to get there."""
MAX_SUBSCRIBER_BACKLOG = 4 * 1024 * 1024
"""Bytes of unread events after which a subscriber is disconnected."""
OPS = ("subscribe", "list", "unplug", "plug", "bootsel", "add")


class RackError(Exception):
    """The rack cannot start (bad arguments: exit 2; state directory in use or unreadable: exit 1)."""


def parse_boards(spec: str) -> dict[str, int]:
    """Parse ``N`` / ``N:TYPE`` / a comma-separated list of them (``--simulate``) into {type: count}."""
    try:
        groups = parse_simulate(spec)
    except ValueError as error:
        raise RackError(str(error)) from None
    counts: dict[str, int] = {}
    for count, board_type in groups:
        if board_type not in identities.BOARD_TYPES:
            raise RackError(f"unknown board type '{board_type}' (known: {', '.join(identities.BOARD_TYPES)})")
        counts[board_type] = counts.get(board_type, 0) + count
    return counts


def new_serial(taken: Iterable[str]) -> str:
    """A fresh 16-hex-digit upper-case serial (like an RP2 unique id), not in ``taken``."""
    taken = set(taken)
    while True:
        serial = secrets.token_hex(8).upper()
        if serial not in taken:
            return serial


def _valid_record(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    serial, slot = record.get("serial"), record.get("slot")
    return (
        isinstance(serial, str)
        and len(serial) == 16
        and all(c in "0123456789ABCDEF" for c in serial)
        and isinstance(slot, int)
        and not isinstance(slot, bool)
        and slot >= 0
        and record.get("board_type") in identities.BOARD_TYPES
    )


def load_records(path: Path) -> list[dict]:
    """The boards stored in ``rack.json`` (or its ``.bak`` if it is unreadable); [] if none."""
    for candidate in (path, path.with_name(path.name + ".bak")):
        try:
            data = json.loads(candidate.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            log.warning("cannot read %s (%s)", candidate, error)
            continue
        if not isinstance(data, list):
            log.warning("%s is not a list of boards; ignored", candidate)
            continue
        records, serials, slots = [], set(), set()
        for record in data:
            if not _valid_record(record) or record["serial"] in serials or record["slot"] in slots:
                log.warning("ignoring the invalid board record %r in %s", record, candidate)
                continue
            serials.add(record["serial"])
            slots.add(record["slot"])
            records.append(
                {
                    "slot": record["slot"],
                    "board_type": record["board_type"],
                    "serial": record["serial"],
                    "plugged": bool(record.get("plugged", False)),
                }
            )
        return sorted(records, key=lambda r: r["slot"])
    if path.exists():
        raise RackError(f"{path} is unreadable and has no readable backup; move it away to start afresh")
    return []


class Rack:
    """The boards of one state directory, their control socket and their persistence."""

    def __init__(self, state_dir: Path, counts: dict[str, int], socket_path: Path | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.counts = counts
        self.socket_path = Path(socket_path) if socket_path else default_socket_path(self.state_dir)
        self.address = socket_address(self.socket_path)
        self.records_path = self.state_dir / "rack.json"
        self.boards: dict[str, VirtualBoard] = {}
        self._boards_lock = threading.Lock()  # slot and serial allocation, snapshots of self.boards
        self._save_lock = threading.Lock()
        self._generation = 0  # of the records snapshots: an older one never overwrites a newer one
        self._saved_generation = 0
        self._present: dict[str, dict] = {}
        self._subscribers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._lock_fd: int | None = None

    # --- state directory ------------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "rack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RackError(f"another rack is running with the state directory {self.state_dir}") from None
        self._lock_fd = fd

    def _clean(self) -> None:
        """Remove what a killed rack may have left: drives, temporary files, the socket."""
        drives = self.state_dir / "drives"
        if drives.exists():
            for entry in drives.iterdir():
                remove_drive(entry)
        for stale in stale_temp_files(self.records_path):
            stale.unlink(missing_ok=True)
        for entry in (self.state_dir / "flash").iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
        if not self.address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.address).st_mode):
                    os.unlink(self.address)

    def _snapshot(self) -> tuple[int, list[dict]]:
        """The records to write, numbered (call it where the boards change: the loop, or setup)."""
        with self._boards_lock:
            boards = sorted(self.boards.values(), key=lambda b: b.slot)
            self._generation += 1
            generation = self._generation
        records = [
            {"slot": b.slot, "board_type": b.board_type, "serial": b.serial, "plugged": b.plugged}
            for b in boards
        ]
        return generation, records

    def _write_records(self, snapshot: tuple[int, list[dict]]) -> None:
        """Write rack.json (atomically; the previous version is kept as rack.json.bak)."""
        generation, records = snapshot
        with self._save_lock:
            if generation > self._saved_generation:
                atomic_write_json(self.records_path, records, keep_backup=True)
                self._saved_generation = generation

    async def save(self) -> None:
        """Write the current records from a worker thread."""
        await asyncio.to_thread(self._write_records, self._snapshot())

    def _new_board(self, board_type: str) -> VirtualBoard:
        """A new board with a fresh serial in the next slot, added to :attr:`boards` (flash not written)."""
        with self._boards_lock:
            serial = new_serial(self.boards)
            slot = max((b.slot for b in self.boards.values()), default=-1) + 1
            board = VirtualBoard(serial, board_type, slot, self.state_dir, self.emit)
            self.boards[serial] = board
        log.info("new %s board %s in slot %d", board_type, serial, slot)
        return board

    @staticmethod
    def _write_factory_flash(board: VirtualBoard) -> None:
        atomic_write_bytes(board.flash_path, factory_flash(board.board_type))

    def setup(self) -> list[VirtualBoard]:
        """Lock and clean the state directory, load and create the boards; return those to plug."""
        (self.state_dir / "flash").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "drives").mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._clean()
        for record in load_records(self.records_path):
            board = VirtualBoard(
                record["serial"], record["board_type"], record["slot"], self.state_dir, self.emit
            )
            self.boards[board.serial] = board
        to_plug: list[VirtualBoard] = []
        for board_type, count in self.counts.items():
            stored = sorted(
                (b for b in self.boards.values() if b.board_type == board_type), key=lambda b: b.slot
            )
            to_plug.extend(stored[:count])
            for _ in range(count - len(stored)):
                board = self._new_board(board_type)
                self._write_factory_flash(board)
                to_plug.append(board)
        for board in self.boards.values():
            board._plugged = board in to_plug  # before the threads start: no lock needed
        self._write_records(self._snapshot())
        return to_plug

    # --- events -----------------------------------------------------------------------------

    def emit(self, action: str, device: dict) -> None:
        """Publish a node's ``add``/``remove`` (called from board threads)."""
        log.info("%s %s %s", action, device["key"], device["devname"])
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(self._publish, action, device)

    def _publish(self, action: str, device: dict) -> None:
        if action == "add":
            self._present[device["key"]] = device
        else:
            self._present.pop(device["key"], None)
        line = _line({"event": action, "device": device})
        for writer in list(self._subscribers):
            self._send(writer, line)

    def _send(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        if writer.is_closing():
            self._subscribers.discard(writer)
            return
        if writer.transport.get_write_buffer_size() > MAX_SUBSCRIBER_BACKLOG:
            log.warning("dropping a subscriber that does not read its events")
            self._subscribers.discard(writer)
            writer.close()
            return
        writer.write(line)

    # --- control socket ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the stream limit
                    writer.write(_line({"ok": False, "error": "request line too long"}))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError:
                    writer.write(_line({"ok": False, "error": "malformed JSON request"}))
                    await writer.drain()
                    continue
                if isinstance(request, dict) and request.get("op") == "subscribe":
                    await self._subscribe(reader, writer)
                    break
                writer.write(_line(await self._dispatch(request)))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._subscribers.discard(writer)
            writer.close()

    async def _subscribe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for device in self._present.values():
            writer.write(_line({"event": "add", "device": device}))
        writer.write(_line({"event": "enumerated"}))
        self._subscribers.add(writer)  # no await since the snapshot: no event is missed or doubled
        await writer.drain()
        while await reader.read(4096):
            pass

    def _board(self, request: dict) -> VirtualBoard | str:
        serial = request.get("serial")
        if not isinstance(serial, str) or not serial:
            return f"'{request.get('op')}' needs a serial"
        board = self.boards.get(serial.strip().upper())
        if board is None:
            return f"no virtual board with serial '{serial}'"
        return board

    async def _dispatch(self, request: object) -> dict:
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request must be a JSON object"}
        op = request.get("op")
        if not isinstance(op, str):
            return {"ok": False, "error": f"a request needs an op (one of {', '.join(OPS)})"}
        if op == "list":
            return {
                "ok": True,
                "boards": [b.info() for b in sorted(self.boards.values(), key=lambda b: b.slot)],
            }
        if op == "add":
            return await self._add(request.get("board_type"))
        if op not in OPS:
            return {"ok": False, "error": f"unknown op '{op}' (known: {', '.join(OPS)})"}
        board = self._board(request)
        if isinstance(board, str):
            return {"ok": False, "error": board}
        boots = board.boots
        arrived = True
        if op == "unplug":
            goal = "unplug"
            board.unplug()
            await self.save()
            arrived = await self._until(lambda: board.state == "unplugged")
        elif op == "plug":
            goal = "boot"
            if not board.plugged:
                board.plug()
                await self.save()
                arrived = await self._until(lambda: board.boots > boots and board.state != "booting")
        else:  # bootsel
            goal = "enter its bootloader"
            was_plugged = board.plugged
            board.bootsel()
            if not was_plugged:
                board.plug()
                await self.save()
            arrived = await self._until(lambda: board.boots > boots and board.state == "bootloader")
        if not arrived:
            return {"ok": False, "error": f"timed out waiting for the board to {goal} ({board.serial})"}
        return {"ok": True, "board": board.info()}

    async def _add(self, board_type: object) -> dict:
        if board_type not in identities.BOARD_TYPES:
            return {
                "ok": False,
                "error": f"unknown board type '{board_type}' (known: {', '.join(identities.BOARD_TYPES)})",
            }
        board = self._new_board(str(board_type))  # no await before it is in self.boards: a slot of its own
        await asyncio.to_thread(self._write_factory_flash, board)
        board.start(plugged=True)
        await self.save()
        if not await self._until(lambda: board.boots > 0 and board.state != "booting"):
            return {"ok": False, "error": f"timed out waiting for the board to boot ({board.serial})"}
        return {"ok": True, "serial": board.serial, "board": board.info()}

    @staticmethod
    async def _until(condition: Callable[[], object], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (TRANSITION_WAIT if timeout is None else timeout)
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # --- life cycle ---------------------------------------------------------------------------

    def _watch_stdin(self) -> None:
        """Stop the rack when standard input reaches end of file (the gateway is gone)."""
        try:
            while os.read(0, 65536):
                pass
        except OSError as error:
            log.warning("standard input unreadable (%s); stopping", error)
        log.info("standard input closed; stopping")
        self.request_stop()

    def request_stop(self) -> None:
        """Make :meth:`run` shut down (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    async def run(self, watch_stdin: bool = True) -> int:
        """Run the rack until stdin EOF or a signal; return the exit status."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.add_signal_handler(signum, self._stop.set)
        to_plug = await asyncio.to_thread(self.setup)
        if watch_stdin:
            threading.Thread(target=self._watch_stdin, name="stdin", daemon=True).start()
        for board in sorted(self.boards.values(), key=lambda b: b.slot):
            board.start(plugged=board in to_plug)
        await self._until(lambda: all(b.boots > 0 and b.state != "booting" for b in to_plug), BOOT_WAIT)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.address)
        server = await asyncio.start_unix_server(self._handle, sock=sock)
        log.info(
            "rack ready: %d boards plugged of %d, state %s, socket %s",
            len(to_plug),
            len(self.boards),
            self.state_dir,
            self.address.replace("\0", "@"),
        )
        try:
            await self._stop.wait()
        finally:
            server.close()
            for board in self.boards.values():
                board.stop()
            await asyncio.to_thread(self._join_boards)
            for writer in list(self._subscribers):
                writer.close()
            if not self.address.startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address)
            for board in self.boards.values():
                remove_drive(board.drive_path)
            log.info("rack stopped")
        return 0

    def _join_boards(self) -> None:
        deadline = time.monotonic() + 5.0
        for board in self.boards.values():
            board.join(max(0.0, deadline - time.monotonic()))


def _line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def main(argv: list[str] | None = None) -> int:
    """Command line of the rack process."""
    parser = argparse.ArgumentParser(
        prog="python -m picofleet.plugins.virtual.rack", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--state", required=True, type=Path, help="state directory (rack.json, flash/, drives/)"
    )
    parser.add_argument("--boards", default="", help="boards to plug: N or N:TYPE, comma-separated")
    parser.add_argument("--socket", type=Path, help="control socket path (default: STATE/rack.sock)")
    parser.add_argument("--ignore-stdin", action="store_true", help="do not stop at end of standard input")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s rack[%(process)d] %(levelname)s %(message)s"
    )
    threading.stack_size(512 * 1024)
    try:
        counts = parse_boards(args.boards)
    except RackError as error:
        print(f"rack: {error}", file=sys.stderr)
        return 2  # bad arguments, as argparse's own errors
    try:
        return asyncio.run(Rack(args.state, counts, args.socket).run(watch_stdin=not args.ignore_stdin))
    except RackError as error:
        print(f"rack: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
