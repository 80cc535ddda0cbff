"""What the client commands (`picofleet flash`, `picofleet evaluate`) share: the gateway flag and a
terminal status line with a progress bar."""

from __future__ import annotations

import argparse
import os
from typing import TextIO

DEFAULT_GATEWAY = "http://localhost:1337"
BAR_WIDTH = 30


def add_gateway_flag(parser: argparse.ArgumentParser) -> None:
    """``--gateway URL`` (env ``PICOFLEET_GATEWAY``, default :data:`DEFAULT_GATEWAY`)."""
    parser.add_argument(
        "--gateway",
        default=os.environ.get("PICOFLEET_GATEWAY", DEFAULT_GATEWAY),
        metavar="URL",
        help=f"the gateway's API (env PICOFLEET_GATEWAY; default {DEFAULT_GATEWAY})",
    )


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (``--timeout``, ``--ready-timeout``)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return seconds


def bar(done: int, total: int) -> str:
    """``[#####-----]``: ``done`` of ``total`` (a positive number) in :data:`BAR_WIDTH` characters."""
    filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


class StatusLine:
    """One terminal line rewritten in place (``\\r``), and whole lines printed above it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.text = ""  # what the status line shows now ("" when there is none)

    def show(self, text: str) -> None:
        """Show ``text`` on the status line (written only when it changed)."""
        if text == self.text:
            return
        self.out.write("\r" + text + " " * max(len(self.text) - len(text), 0))
        self.out.flush()
        self.text = text

    def clear(self) -> None:
        """Blank the status line, the cursor back at its start."""
        if self.text:
            self.out.write("\r" + " " * len(self.text) + "\r")
            self.text = ""

    def print(self, text: str) -> None:
        """A whole line, where the status line was (it shows again at the next :meth:`show`)."""
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        """End the status line: what it shows stays, the next output starts on a new line."""
        if self.text:
            self.out.write("\n")
            self.out.flush()
            self.text = ""
