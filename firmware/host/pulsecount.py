"""Host side of protocol version 2 (PROTOCOL.md): the pulse-count firmware over a pyserial port.

Blocking, for the gateway's evaluation workers (one thread per board)::

    board = PulseCountBoard(port, on_log=lambda level, text: log.info("%s: %s", level, text))
    board.identify()                                 # {"proto": 2, "slots": 2, ...}
    board.load(sha256, bitstream)                    # skipped when the board holds it already
    request = board.start_evaluate(sha256, 48_000_000, 1000)
    board.load(next_sha256, next_bitstream)          # sent while the board counts
    pulses = board.wait(request, timeout=6.0)["pulses"]

Requests are pipelined: :meth:`send` returns at once, responses may come in any order and are
kept by id until :meth:`wait` asks for them. Answers are taken from frames only; log messages
(frames or lines) are handed to ``on_log``; anything else (boot noise, version 1 answers meant
for another client) is skipped.

A new ``PulseCountBoard`` is a new session: it discards what the port received before it was
made and numbers its requests from a random id, so that answers the board still sends to an
earlier session (a request given up on) are never taken for its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import serial

from picofleet.firmware.host.errors import FirmwareError, NoAnswer, PortLost
from picofleet.firmware.host.protocol import MAX_ID, brief_reads, forward_log, random_id
from picofleet.firmware.pico2_ice import frames

__all__ = ["CHUNK_WINDOW", "FirmwareError", "NoAnswer", "PortLost", "PulseCountBoard"]

log = logging.getLogger(__name__)

CHUNK_WINDOW = 4
"""Bitstream chunks sent ahead of their acknowledgements."""
EVALUATE_MARGIN = 25.0
"""Seconds an evaluation may take beyond its window (configuring; a simulated circuit may need 20 s)."""
MAX_LINE = 64 * 1024
"""Bytes of a line without its end after which the line is dropped as garbage."""


class PulseCountBoard:
    """Pipelined requests and responses with picofleet-pulsecount over a board's serial port.

    One object per session on an open port (see the module docstring); not thread-safe.
    ``on_log(level, text)`` receives the board's log messages. Errors: :class:`FirmwareError`
    (the board answered ``ok: false``: the message is ``"board answered: <error>"``),
    :class:`NoAnswer` (nothing in time), :class:`PortLost`.
    """

    def __init__(self, port: serial.Serial, on_log: Callable[[str, str], None] | None = None) -> None:
        self.port = port
        self.on_log = on_log
        self._next_id = random_id()
        reset = getattr(port, "reset_input_buffer", None)
        if reset is not None:
            try:
                reset()  # a new session: what an earlier one left unread is not for us
            except (serial.SerialException, OSError) as error:
                raise PortLost(f"serial port {port.port} failed: {error}") from error
        self._decoder = frames.Decoder(max_line=MAX_LINE)
        self._ops: dict[int, str] = {}
        """Requests sent and not yet collected: id → op (for error messages)."""
        self._responses: dict[int, dict] = {}

    # -- requests ------------------------------------------------------------------------------
    def send(self, op: str, **args: Any) -> int:
        """Send a ``J`` request ``{"id", "op", **args}``; return its id (for :meth:`wait`)."""
        request_id = self._new_id(op)
        self._write(frames.encode_json({"id": request_id, "op": op, **args}))
        return request_id

    def send_chunk(self, data: bytes) -> int:
        """Send one ``D`` frame of bitstream data (after ``load``); return its request id."""
        if len(data) > frames.MAX_DATA:
            raise ValueError(f"a chunk holds at most {frames.MAX_DATA} bytes, not {len(data)}")
        request_id = self._new_id("load")
        self._write(frames.encode_data(request_id, data))
        return request_id

    def wait(self, request_id: int, timeout: float) -> dict:
        """The board's ``ok: true`` response to ``request_id``; answers to others are kept.

        Raises :class:`FirmwareError` ``"board answered: <error>"`` for an ``ok: false`` answer
        and :class:`NoAnswer` when none came within ``timeout`` seconds.
        """
        op = self._ops.get(request_id)
        if op is None and request_id not in self._responses:
            raise ValueError(f"request {request_id} was not sent, or its answer was collected already")
        deadline = time.monotonic() + timeout
        with brief_reads(self.port):
            while request_id not in self._responses:
                if time.monotonic() >= deadline:
                    raise NoAnswer(f"no answer to '{op}' within {timeout:.1f} s")
                self._receive()
        self._ops.pop(request_id, None)
        response = self._responses.pop(request_id)
        if response.get("ok") is True:
            return response
        raise FirmwareError(f"board answered: {response.get('error', 'an error without reason')}")

    def forget(self, request_id: int) -> None:
        """Drop a request's answer, now or whenever it comes (a request given up on)."""
        self._ops.pop(request_id, None)
        self._responses.pop(request_id, None)

    def request(self, op: str, timeout: float = 2.0, **args: Any) -> dict:
        """Send a request and wait for its ``ok: true`` response."""
        request_id = self.send(op, **args)
        try:
            return self.wait(request_id, timeout)
        except NoAnswer:
            self.forget(request_id)
            raise

    # -- operations ------------------------------------------------------------------------------
    def identify(self, timeout: float = 2.0) -> dict:
        """``proto``, ``board``, ``serial``, ``firmware``, ``version``, ``slots``, ``max_bitstream``."""
        response = self.request("identify", timeout=timeout)
        missing = [key for key in ("board", "serial", "firmware", "version", "slots") if key not in response]
        if missing:
            raise FirmwareError(f"board answered identify without {', '.join(missing)}")
        return response

    def status(self, timeout: float = 2.0) -> dict:
        """``loaded`` (sha256 list), ``programmed`` (sha256 or None), ``counting`` (bool)."""
        return self.request("status", timeout=timeout)

    def load(self, sha256: str, data: bytes, timeout: float = 10.0) -> None:
        """Send a bitstream to the board: ``load``, then its chunks, up to CHUNK_WINDOW unacknowledged.

        Returns once the board checked the sha256 of all of it (at once when the board holds
        that bitstream already). ``timeout`` bounds the whole transfer.
        """
        deadline = time.monotonic() + timeout
        answer = self.request("load", timeout=timeout, sha256=sha256, size=len(data))
        if answer.get("complete"):
            return
        view = memoryview(data)
        pending: deque[int] = deque()
        last: dict = {}
        try:
            for offset in range(0, len(data), frames.MAX_DATA):
                if len(pending) >= CHUNK_WINDOW:
                    last = self._wait_chunk(pending.popleft(), deadline, timeout)
                pending.append(self.send_chunk(bytes(view[offset : offset + frames.MAX_DATA])))
            while pending:
                last = self._wait_chunk(pending.popleft(), deadline, timeout)
        finally:
            for request_id in pending:
                self.forget(request_id)
        if not last.get("complete"):
            raise FirmwareError(f"board did not confirm the end of bitstream {sha256[:12]}")

    def _wait_chunk(self, request_id: int, deadline: float, timeout: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"bitstream transfer not done within {timeout:.1f} s")
        try:
            return self.wait(request_id, remaining)
        except NoAnswer:
            raise NoAnswer(f"bitstream transfer not done within {timeout:.1f} s") from None

    def start_evaluate(self, sha256: str, clock_hz: int, window_ms: int) -> int:
        """Ask for program (unless programmed with it) + count; the request id for :meth:`wait`."""
        return self.send("evaluate", sha256=sha256, clock_hz=clock_hz, window_ms=window_ms)

    def evaluate(self, sha256: str, clock_hz: int, window_ms: int, timeout: float | None = None) -> int:
        """Program a loaded bitstream, count for ``window_ms`` at ``clock_hz``: the pulse count.

        ``timeout`` defaults to the window plus EVALUATE_MARGIN seconds.
        """
        if timeout is None:
            timeout = window_ms / 1000 + EVALUATE_MARGIN
        request_id = self.start_evaluate(sha256, clock_hz, window_ms)
        try:
            return int(self.wait(request_id, timeout)["pulses"])
        except NoAnswer:
            self.forget(request_id)
            raise

    # -- the port -------------------------------------------------------------------------------
    def _new_id(self, op: str) -> int:
        request_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < MAX_ID else 1
        self._ops[request_id] = op
        return request_id

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)  # no flush(): tcdrain could wait for ever on a stuck board
        except serial.SerialTimeoutException as error:
            raise NoAnswer(f"the board did not take data on {self.port.port}: {error}") from None
        except (serial.SerialException, OSError) as error:
            raise PortLost(f"serial port {self.port.port} failed: {error}") from error

    def _receive(self) -> None:
        """Read what the port has (or wait one read slice) and dispatch what it completes."""
        chunk = self.port.read(max(1, self.port.in_waiting))
        if not chunk:
            return
        for event in self._decoder.feed(chunk):
            if event[0] == "frame":
                if event[1] == frames.KIND_JSON:
                    self._dispatch(_parse(event[2]))
            elif event[0] == "line":
                if event[1]:  # empty: the line end after a frame
                    self._log_line(_parse(event[1].rstrip(b"\r")))
            elif event[0] == "error":
                log.debug("skipping a bad frame from the board: %s", event[1])

    def _dispatch(self, message: dict | None) -> None:
        if message is None:
            return
        if "id" not in message:
            if "log" in message:
                forward_log(self.on_log, message)
            return
        request_id = message["id"]
        if request_id is None:
            # the board rejected a frame it could not attribute to a request (CRC, length)
            forward_log(
                self.on_log, {"level": "error", "log": f"board rejected a frame: {message.get('error')}"}
            )
            return
        if request_id in self._ops:
            self._responses[request_id] = message
        # else: a late answer to a request given up on

    def _log_line(self, message: dict | None) -> None:
        """A version 1 line: a log message (before the board's first frame), or not for us."""
        if message is not None and "id" not in message and "log" in message:
            forward_log(self.on_log, message)
        # else: noise, or a version 1 answer to another client (FirmwareClient): never ours


def _parse(data: bytes | bytearray) -> dict | None:
    try:
        message = json.loads(bytes(data))
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
