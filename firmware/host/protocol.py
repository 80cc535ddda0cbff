"""Host side of the board firmware protocol (PROTOCOL.md), over an open pyserial port.

Blocking, for the board plugins' hooks (which the gateway runs in worker threads)::

    client = FirmwareClient(port, on_log=lambda level, text: log.info("%s: %s", level, text))
    client.identify()            # {"id": 1, "ok": True, "proto": 1, "board": ..., "version": ...}
    client.request("blink", seconds=5)
    client.apply_settings({"MODE": "lab"}, {})       # what the board stored
    client.write_fpga_image(bitstream, progress)     # {"sha256", "configured", "error"?}

Log lines that arrive while waiting for a response are handed to ``on_log``; lines that are not
JSON objects (boot noise, another firmware's output) are skipped until the deadline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import serial

from picofleet.firmware.host.errors import FirmwareError, NoAnswer, PortLost

__all__ = [
    "FPGA_CHUNK",
    "MAX_ID",
    "MAX_LINE",
    "FirmwareClient",
    "UnknownOp",
    "brief_reads",
    "forward_log",
    "random_id",
]

log = logging.getLogger(__name__)

READ_SLICE = 0.05
"""Longest single blocking read, so that the deadline is honoured whatever the port's timeout."""
MAX_READ_BLOCK = 0.2
"""A port timeout up to this is used as it is; otherwise READ_SLICE is set for the request."""
MAX_PENDING = 64 * 1024
"""Bytes without a line end after which the receive buffer is dropped as garbage."""


MAX_ID = 0xFFFFFFFF
"""The largest request id (protocol version 2 carries ids as u32)."""
MAX_LINE = 4096
"""The longest request line the reference firmware takes (PROTOCOL.md), without its line end."""
FPGA_CHUNK = 2048
"""Bytes of FPGA image per ``fpga_chunk`` request (2,732 characters of base64)."""
FPGA_CHUNK_TIMEOUT = 2.0
"""Seconds the board has to answer one ``fpga_begin``/``fpga_chunk``/``fpga_clear``."""
FPGA_END_TIMEOUT = 20.0
"""Seconds the board has to store the image and configure its iCE40 (``fpga_end``)."""


class UnknownOp(FirmwareError):
    """The firmware answered ``unknown op '<op>'``: it does not implement that operation."""


def random_id() -> int:
    """A random first request id (1 to :data:`MAX_ID`) for a new session on a port."""
    return secrets.randbelow(MAX_ID) + 1


@contextlib.contextmanager
def brief_reads(port: serial.Serial) -> Iterator[None]:
    """Within: reads block briefly (never for ever, never not at all), so that deadlines hold.

    The port's timeout is changed only when needed (that reconfigures the port) and restored after;
    a failing port raises :class:`PortLost`.
    """
    saved = port.timeout
    retime = saved is None or not 0 < saved <= MAX_READ_BLOCK
    try:
        if retime:
            port.timeout = READ_SLICE
        yield
    except (serial.SerialException, OSError) as error:
        raise PortLost(f"serial port {port.port} failed: {error}") from error
    finally:
        if retime:  # a port that is gone: the caller hears about it from the error above
            with contextlib.suppress(serial.SerialException, OSError):
                port.timeout = saved


def forward_log(on_log: Callable[[str, str], None] | None, message: dict) -> None:
    """Hand a board's log message ``{"log", "level"}`` to ``on_log`` (whose errors are logged, not raised)."""
    if on_log is None:
        return
    try:
        on_log(str(message.get("level", "info")), str(message.get("log", "")))
    except Exception:
        log.exception("on_log callback failed")


class FirmwareClient:
    """Requests and responses over a board's serial port (protocol version 1).

    Not thread-safe (the gateway serialises the hooks of a board). ``on_log(level, text)``
    receives the board's log lines. Requests are numbered from ``first_id`` (default 1; pass
    :func:`random_id` when several clients in turn use one port, as the gateway's hooks do, so that
    a late answer to an earlier client's request never carries the id of one of this client's).
    """

    def __init__(
        self, port: serial.Serial, on_log: Callable[[str, str], None] | None = None, first_id: int = 1
    ) -> None:
        self.port = port
        self.on_log = on_log
        self._next_id = first_id
        self._pending = bytearray()

    def request(self, op: str, timeout: float = 2.0, **args: Any) -> dict:
        """Send ``{"id", "op", **args}`` and return the board's ``ok: true`` response.

        Raises :class:`FirmwareError` ``"board answered: <error>"`` for an ``ok: false`` answer,
        ``"no answer to '<op>' within <timeout> s"`` when no response with this request's id came
        in time, and a ``FirmwareError`` naming the port when it fails (board unplugged).
        """
        request_id = self._next_id
        line = json.dumps({"id": request_id, "op": op, **args}, separators=(",", ":")) + "\n"
        if len(line) - 1 > MAX_LINE:
            raise FirmwareError(
                f"the '{op}' request would be {len(line) - 1} bytes, over the protocol's"
                f" {MAX_LINE}-byte line limit"
            )
        self._next_id += 1
        deadline = time.monotonic() + timeout
        with brief_reads(self.port):
            self.port.write(line.encode())  # no flush(): tcdrain could wait for ever on a stuck board
            while True:
                message = self._next_message(deadline)
                if message is None:
                    raise NoAnswer(f"no answer to '{op}' within {timeout:.1f} s")
                if "id" not in message:
                    if "log" in message:
                        forward_log(self.on_log, message)
                    continue
                if message.get("id") != request_id:
                    continue  # a late answer to an earlier request that timed out
                if message.get("ok") is True:
                    return message
                error = str(message.get("error", "an error without reason"))
                if error == f"unknown op '{op}'":
                    raise UnknownOp(f"board answered: {error}")
                raise FirmwareError(f"board answered: {error}")

    def identify(self, timeout: float = 2.0) -> dict:
        """Ask the firmware who it is: ``proto``, ``board``, ``serial``, ``firmware``, ``version``."""
        response = self.request("identify", timeout=timeout)
        missing = [key for key in ("board", "serial", "firmware", "version") if key not in response]
        if missing:
            raise FirmwareError(f"board answered identify without {', '.join(missing)}")
        return response

    def ping(self, timeout: float = 2.0) -> None:
        """Check that the firmware answers."""
        self.request("ping", timeout=timeout)

    def blink(self, seconds: float = 3.0, timeout: float = 2.0) -> None:
        """Make the board blink its LED for ``seconds``."""
        self.request("blink", timeout=timeout, seconds=seconds)

    def reboot(self, timeout: float = 2.0) -> None:
        """Make the board reboot into its firmware (its port goes away and comes back)."""
        self.request("reboot", timeout=timeout)

    def bootloader(self, timeout: float = 2.0) -> None:
        """Make the board reboot into its UF2 bootloader (its port goes away, a drive appears)."""
        self.request("bootloader", timeout=timeout)

    def apply_settings(
        self, environment: dict[str, str], config: dict[str, str], timeout: float = 2.0
    ) -> dict:
        """Store ``environment`` and ``config`` on the board (``settings``); return what it stored:
        ``{"environment": {...}, "config": {...}}``.

        Raises :class:`UnknownOp` when the firmware has no ``settings`` op, :class:`FirmwareError`
        with the board's reason when it refuses the values (or they do not fit in one request).
        """
        answer = self.request("settings", timeout=timeout, environment=environment, config=config)
        applied = {key: answer.get(key) for key in ("environment", "config")}
        if not all(isinstance(value, dict) for value in applied.values()):
            raise FirmwareError("board answered settings without the environment and config it stored")
        return applied

    def write_fpga_image(
        self, image: bytes, progress: Callable[[int, int], None] | None = None, chunk: int = FPGA_CHUNK
    ) -> dict:
        """Send an iCE40 image in chunks (``fpga_begin``, ``fpga_chunk``..., ``fpga_end``); the board
        checks its sha256, stores it and configures its FPGA from it. Returns the board's answer:
        ``{"sha256", "configured", "error"?}``. ``progress(done, total)`` after each chunk.

        Raises :class:`UnknownOp` when the firmware has no FPGA ops, :class:`FirmwareError` with the
        board's reason when it refuses (no FPGA, too large, sha256 mismatch).
        """
        sha256 = hashlib.sha256(image).hexdigest()
        total = len(image)
        self.request("fpga_begin", timeout=FPGA_CHUNK_TIMEOUT, sha256=sha256, size=total)
        for offset in range(0, total, chunk):
            data = base64.b64encode(image[offset : offset + chunk]).decode("ascii")
            self.request("fpga_chunk", timeout=FPGA_CHUNK_TIMEOUT, offset=offset, data=data)
            if progress is not None:
                progress(min(offset + chunk, total), total)
        answer = self.request("fpga_end", timeout=FPGA_END_TIMEOUT)
        if answer.get("sha256") != sha256 or not isinstance(answer.get("configured"), bool):
            raise FirmwareError(
                "board answered fpga_end without the sha256 and configured state of the image"
            )
        result = {"sha256": sha256, "configured": answer["configured"]}
        if not answer["configured"]:
            result["error"] = str(answer.get("error") or "the FPGA did not configure")
        return result

    def clear_fpga_image(self) -> None:
        """Make the board forget its stored FPGA image (``fpga_clear``; not configured at the next boot)."""
        self.request("fpga_clear", timeout=FPGA_CHUNK_TIMEOUT)

    def _next_message(self, deadline: float) -> dict | None:
        """The next line that is a JSON object, or ``None`` at the deadline."""
        while True:
            line = self._next_line(deadline)
            if line is None:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                log.debug("skipping a line that is not JSON: %r", line[:80])
                continue
            if isinstance(message, dict):
                return message

    def _next_line(self, deadline: float) -> bytes | None:
        """The next complete line (without its end), or ``None`` at the deadline."""
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                line = bytes(self._pending[:end]).rstrip(b"\r")
                del self._pending[: end + 1]
                return line
            if time.monotonic() >= deadline:
                return None
            chunk = self.port.read(max(1, self.port.in_waiting))
            if chunk:
                self._pending += chunk
                if len(self._pending) > MAX_PENDING and b"\n" not in self._pending:
                    self._pending.clear()
