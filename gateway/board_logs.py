"""Board log lines, queued for whoever sends them on: the fleet (gateway/sync.py) or the balena
supervisor (supervisor_bridge/proxyvisor.py).

:class:`BoardLogQueue` is a logging handler on the board loggers (:data:`BOARD_LOGGERS`): it keeps
every line about a board — the firmware's own lines and the gateway's status lines — in a bounded
queue (:data:`LOG_QUEUE_LINES`, oldest dropped and counted) until the sender has sent them.
"""

from __future__ import annotations

import calendar
import collections
import logging
import re
import threading
import time
from typing import Any

LOG_QUEUE_LINES = 10_000
"""Board log lines kept while the fleet is unreachable; beyond that the oldest are dropped."""
LOG_BATCH_LINES = 500
"""Board log lines per send (the fleet: one ``POST /v1/gateway/logs`` per report cycle at most)."""
LOG_TEXT_MAX = 2048
BOARD_LOGGERS = ("picofleet.board", "picofleet.manager", "picofleet.sync", "picofleet.supervisor")
"""Loggers whose lines about a board are sent (``picofleet.board.output`` propagates to the first)."""
_OUTPUT_PREFIX = re.compile(r"\[([^\]]+)\] ")
_LABEL = re.compile(r"^(?:.*? )?\(([^()\s]+)\): ")


def _iso(created: float) -> str:
    """``created`` (seconds since the epoch) as a line's ``time``: ``2026-01-31T12:00:00.123Z``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z"


class BoardLogQueue(logging.Handler):
    """A logging handler keeping the log lines about boards, bounded, until they are sent.

    A record's board is its ``board`` attribute (``extra={"board": serial}``); failing that, the
    ``[SERIAL] `` prefix of a firmware line (``picofleet.board.output``) or the ``name (SERIAL): ``
    label the gateway's status lines start with. Records about no board are ignored. Thread-safe:
    hooks log from worker threads.
    """

    def __init__(self, capacity: int = LOG_QUEUE_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[dict[str, Any]] = collections.deque()
        self.capacity = capacity
        self.dropped = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record if it is about a board (never raises)."""
        try:
            text = record.getMessage()
            board = getattr(record, "board", None)
            if record.name == "picofleet.board.output":
                match = _OUTPUT_PREFIX.match(text)
                if match:
                    board = board or match.group(1)
                    text = text[match.end() :]
            elif board is None:
                match = _LABEL.match(text)
                if match:
                    board = match.group(1)
            if not board:
                return
            line = {
                "board": str(board),
                "time": _iso(record.created),
                "level": record.levelname.lower(),
                "text": text[:LOG_TEXT_MAX],
            }
            with self._guard:
                if len(self.lines) >= self.capacity:
                    self.lines.popleft()
                    self.dropped += 1
                self.lines.append(line)
        except Exception:  # a log handler must never break the code that logs
            self.handleError(record)

    def peek(self, limit: int = LOG_BATCH_LINES) -> list[dict[str, Any]]:
        """The oldest ``limit`` queued lines (left queued)."""
        with self._guard:
            return [self.lines[i] for i in range(min(limit, len(self.lines)))]

    def sent(self, batch: list[dict[str, Any]]) -> None:
        """Forget the lines of ``batch`` (the oldest), unless they were dropped meanwhile."""
        with self._guard:
            for line in batch:
                if self.lines and self.lines[0] is line:
                    self.lines.popleft()

    def install(self) -> None:
        """Attach to the board loggers."""
        for name in BOARD_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def uninstall(self) -> None:
        """Detach from the board loggers."""
        for name in BOARD_LOGGERS:
            logging.getLogger(name).removeHandler(self)


def line_millis(line: dict[str, Any]) -> int:
    """A queued line's ``time`` as milliseconds since the epoch (what balena's log routes take)."""
    stamp = str(line["time"])
    seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int(stamp[20:23] or 0)
