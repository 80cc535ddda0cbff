"""One open port of a board running the pulse-count firmware, as the evaluation scheduler sees it.

The session mirrors the bitstreams the board holds (its slots, least recently used first), so a
bitstream the board holds is never sent again; serving fails with :class:`BoardLost` or
:class:`BoardStuck` when the board goes away or stops answering.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from picofleet.gateway.evaluation.jobs import Unit


@dataclass
class BoardSession:
    """The scheduler's view of one open port of a board running the pulse-count firmware."""

    port: Any
    client: Any
    slots: int
    max_bitstream: int
    loaded: OrderedDict[str, None]
    """Bitstreams the board holds, least recently used first (mirrors the firmware's slots)."""
    programmed: str | None = None
    stuck: Exception | None = None
    """Set when sending the next bitstream got no answer: the board is given up after this unit."""

    def holds(self, sha: str) -> bool:
        """Whether the board holds bitstream ``sha``."""
        return sha in self.loaded

    def used(self, sha: str) -> None:
        """The board used ``sha`` (evaluated it)."""
        if sha in self.loaded:
            self.loaded.move_to_end(sha)

    def note_loaded(self, sha: str, keep: str | None) -> None:
        """The board took ``sha``; like the firmware, evict the LRU slot that is not ``keep``."""
        self.loaded.pop(sha, None)
        while len(self.loaded) >= max(self.slots, 1):
            victim = next((held for held in self.loaded if held != keep), None)
            if victim is None:
                break
            del self.loaded[victim]
        self.loaded[sha] = None


class BoardLost(Exception):
    """The board's port failed or the board went away mid-unit."""


class BoardStuck(Exception):
    """The board did not answer in time."""


def preference(session: BoardSession, unit: Unit) -> int:
    """2: the board is configured with the unit's bitstream, 1: it holds it, 0: it must be sent."""
    if unit.sha256 == session.programmed:
        return 2
    return 1 if session.holds(unit.sha256) else 0


def refusal(error: Exception) -> str:
    """A board's refusal without the client's ``board answered:`` prefix."""
    text = str(error)
    return text.removeprefix("board answered: ")
