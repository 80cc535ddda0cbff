"""What an evaluation is: its arguments, its units (one bitstream on one board) and its results.

The scheduler (gateway/evaluation/scheduler.py) cuts each ``POST /v1/evaluations`` into :class:`Unit` s
and records their results in the :class:`Evaluation`, which the API streams as they come.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from picofleet.common.http.errors import ApiError

__all__ = ["ARG_RANGES", "DEFAULT_ARGS", "MODES", "Evaluation", "EvaluationRefused", "Unit", "check_args"]

MODES = ("each", "any")
DEFAULT_ARGS = {"clock_hz": 48_000_000, "window_ms": 1000}
ARG_RANGES = {"clock_hz": (1, 50_000_000), "window_ms": (1, 60_000)}
"""The evaluation arguments and their ranges (whole numbers): CLK frequency and counting window."""


class EvaluationRefused(ApiError):
    """A request the scheduler cannot take: ``status`` and the reason (answered as that 4xx)."""


def check_args(args: Any, what: str | None = None) -> dict[str, int]:
    """Evaluation arguments (``clock_hz``, ``window_ms``), whole numbers in range; ValueError else.

    The one check of them: the gateway's reservations and evaluations, the client and the CLI.
    ``what`` (e.g. ``"args"``) starts the error message when given.
    """
    prefix = f"{what}: " if what else ""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ValueError(f"{what or 'args'} must be a JSON object")
    checked = {}
    for key, value in args.items():
        if key not in ARG_RANGES:
            raise ValueError(f"{prefix}unknown argument {key!r} (known: {', '.join(ARG_RANGES)})")
        low, high = ARG_RANGES[key]
        if isinstance(value, float) and value.is_integer() and low <= value <= high:
            value = int(value)  # 1000.0 is a whole number (JSON Schema's "integer" says so too)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{prefix}{key} must be a whole number from {low} to {high}, not {value!r}")
        checked[key] = value
    return checked


@dataclass(eq=False)
class Unit:
    """One bitstream to count on one board (``serial``), or on any of the client's boards.

    ``boards``: the boards a unit of mode ``any`` may run on (``None``: any the client holds).
    """

    evaluation: Evaluation
    sha256: str
    label: str | None
    serial: str | None
    boards: frozenset[str] | None = None
    attempts: int = 0
    running_on: str | None = None
    done: bool = False


class Evaluation:
    """One ``POST /v1/evaluations``: its units and the results so far, in completion order."""

    def __init__(self, name: str, mode: str, args: dict[str, int]) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.name = name
        self.mode = mode
        self.args = args
        self.units: list[Unit] = []
        self.results: list[dict[str, Any]] = []
        self.failed = 0
        self.created_at = time.time()
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        """Whether every unit has its result."""
        return len(self.results) == len(self.units)

    def add(self, result: dict[str, Any]) -> None:
        """Record a result and wake whoever follows the evaluation."""
        self.results.append(result)
        if "error" in result:
            self.failed += 1
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def summary(self) -> dict[str, Any]:
        """The last line of the stream: ``{"evaluation", "done", "results", "failed"}``."""
        return {"evaluation": self.id, "done": True, "results": len(self.results), "failed": self.failed}

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/evaluations/{id}`` shows."""
        return {
            "evaluation": self.id,
            "name": self.name,
            "mode": self.mode,
            "args": self.args,
            "created_at": self.created_at,
            "units": len(self.units),
            "done": self.done,
            "failed": self.failed,
            "results": list(self.results),
        }

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every result as it comes (those already in first), until the last one."""
        sent = 0
        while True:
            while sent < len(self.results):
                sent += 1
                yield self.results[sent - 1]
            if self.done:
                return
            await asyncio.shield(self._changed)
