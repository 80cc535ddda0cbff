"""`picofleet evaluate`: count the pulses of iCE40 bitstreams on boards reserved on a gateway.

    picofleet evaluate --gateway URL [--name CLIENT] [--boards N] [--arg KEY=VALUE ...] [--json] FILE...

Every FILE (an IceStorm ``.asc`` or a packed ``.bin``) is checked locally first: an unreadable
or invalid one ends the command (one line, exit 1) before any board is reserved. Then N boards
are reserved under CLIENT (default ``$PICOFLEET_NAME``, else ``user@host``), each file is uploaded
once, every file is counted on every board (``--mode any``: once, on any board) and the
reservations are ended, also on Ctrl-C. Output: ``--json`` one line per result
``{"serial", "file", "sha256", "pulses"}`` (``"error"`` instead of ``"pulses"`` when it failed), as
results arrive; otherwise a table at the end (with a progress bar on a terminal).

Exit 0 when every evaluation counted, 1 when one failed or the gateway refused or could not be
reached (one line on stderr), 2 for usage errors, 130 on Ctrl-C (143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import socket
import sys
import time
from typing import Any, TextIO

from picofleet.client import (
    DEFAULT_READY_TIMEOUT,
    ClientError,
    EvaluationResult,
    PulseCountClient,
    load_bitstreams,
)
from picofleet.commands.console import StatusLine, add_gateway_flag, bar, positive_seconds
from picofleet.gateway.evaluation.jobs import ARG_RANGES, MODES, check_args


class EvaluateFailed(Exception):
    """Ends the command with exit status 1 and this one-line reason."""


def _fail(reason: str) -> int:
    print(f"picofleet evaluate: {' '.join(reason.split())}", file=sys.stderr)
    return 1


def parse_arg(text: str) -> tuple[str, int]:
    """``KEY=VALUE`` of an evaluation argument (a whole number); ``ArgumentTypeError`` otherwise."""
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        number = int(value.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a whole number") from None
    try:
        check_args({key: number})
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return key, number


def positive_int(text: str) -> int:
    """A whole number of at least 1 (for ``--boards``)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def default_name() -> str:
    """``$PICOFLEET_NAME``, else ``user@host``."""
    if os.environ.get("PICOFLEET_NAME"):
        return os.environ["PICOFLEET_NAME"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "researcher"
    return f"{user}@{socket.gethostname()}"


def load_files(paths: list[str]) -> list[bytes]:
    """The files' bytes, each checked to be an up5k ``.asc`` or ``.bin`` (the client's
    :func:`~picofleet.client.load_bitstreams`); :class:`EvaluateFailed` else."""
    try:
        return [data for data, _ in load_bitstreams(paths)]
    except ClientError as error:
        raise EvaluateFailed(str(error)) from None


class ResultView:
    """Shows results: JSON lines as they come, or a progress bar (terminal) and a table at the end."""

    def __init__(self, out: TextIO, *, json_lines: bool, tty: bool, expected: int):
        self.out = out
        self.json_lines = json_lines
        self.tty = tty and not json_lines
        self.expected = expected
        self.results: list[EvaluationResult] = []
        self.line = StatusLine(out)

    def say(self, text: str) -> None:
        """A status line (terminal only, not with --json)."""
        if self.tty:
            self.line.print(text)

    def add(self, result: EvaluationResult) -> None:
        """Show one result."""
        self.results.append(result)
        if self.json_lines:
            line: dict[str, Any] = {"serial": result.serial, "file": result.label, "sha256": result.sha256}
            if result.ok:
                line["pulses"] = result.pulses
            else:
                line["error"] = result.error or "no pulse count in the answer"
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
        elif self.tty:
            done, total = len(self.results), max(self.expected, len(self.results))
            failed = sum(1 for r in self.results if not r.ok)
            text = f"{bar(done, total)} {done}/{total} results"
            self.line.show(text + (f", {failed} failed" if failed else ""))

    def finish(self, order: list[str]) -> None:
        """The table (not with --json): results grouped by file in ``order``, then by board."""
        if self.tty:
            self.line.clear()
        if self.json_lines or not self.results:
            return
        rank = {label: index for index, label in enumerate(order)}
        rows = [
            [r.label or "", r.serial or "", str(r.pulses) if r.ok else f"error: {r.error}"]
            for r in sorted(self.results, key=lambda r: (rank.get(r.label or "", len(rank)), r.serial or ""))
        ]
        header = ["FILE", "BOARD", "PULSES"]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
        for row in [header, *rows]:
            self.out.write(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip() + "\n")
        self.out.flush()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the reservations are ended


def evaluate(args: argparse.Namespace, client: PulseCountClient, view: ResultView) -> None:
    """Reserve, upload, evaluate and show the results; raises ``ClientError`` on failure."""
    files = load_files(args.files)
    started = time.monotonic()
    plural = "s" if args.boards > 1 else ""
    view.say(f"reserving {args.boards} board{plural} on {client.gateway} as {client.name} …")
    serials = client.reserve(args.boards, timeout=args.ready_timeout)
    view.say(f"ready: {', '.join(serials)} ({time.monotonic() - started:.1f} s)")
    for path, data in zip(args.files, files, strict=True):
        sha256 = client.upload(data)  # remembered: evaluate() below sends nothing again
        view.say(f"{path}: on the gateway as {sha256[:12]} ({len(data)} bytes)")
    checked = dict(args.arg or [])
    labelled = [(data, path) for path, data in zip(args.files, files, strict=True)]  # read once
    for result in client.evaluate(labelled, serials=serials, mode=args.mode, args=checked or None):
        view.add(result)


def run(args: argparse.Namespace) -> int:
    """Reserve boards, count the pulses of every file on them, print the results, end the reservations."""
    expected = len(args.files) * (args.boards if args.mode == "each" else 1)
    view = ResultView(sys.stdout, json_lines=args.json, tty=sys.stdout.isatty(), expected=expected)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            client = PulseCountClient(args.gateway, args.name, args.token)
            try:
                evaluate(args, client, view)
            except BaseException:
                # Ctrl-C, SIGTERM or an error decide the exit status and the message, not a
                # failure to end the reservations after it (a gateway gone meanwhile)
                try:
                    client.close()
                except ClientError as error:
                    print(f"picofleet evaluate: the reservations were not ended: {error}", file=sys.stderr)
                raise
            client.close()
        finally:
            view.finish(args.files)  # what came back, also when interrupted
    except (EvaluateFailed, ClientError) as error:
        return _fail(str(error))
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [result for result in view.results if not result.ok]
    if len(view.results) < expected:
        return _fail(f"only {len(view.results)} of {expected} results came back")
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet evaluate`."""
    parser = subparsers.add_parser(
        "evaluate",
        help="count the pulses of iCE40 bitstreams on reserved boards",
        description=run.__doc__,
    )
    add_gateway_flag(parser)
    parser.add_argument(
        "--name",
        default=default_name(),
        metavar="CLIENT",
        help="the client name the boards are reserved under (env PICOFLEET_NAME; default user@host)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("PICOFLEET_TOKEN"),
        metavar="TOKEN",
        help="the name's token (env PICOFLEET_TOKEN; default: the one remembered from its first use)",
    )
    parser.add_argument(
        "--boards", type=positive_int, default=1, metavar="N", help="reserve N boards (default 1)"
    )
    parser.add_argument(
        "--arg",
        type=parse_arg,
        action="append",
        metavar="KEY=VALUE",
        help=f"an evaluation argument: {', '.join(ARG_RANGES)} (repeatable)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="each",
        help="each: every file on every board (default); any: every file once, on any board",
    )
    parser.add_argument(
        "--ready-timeout",
        type=positive_seconds,
        default=DEFAULT_READY_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the boards are not ready after this long (default {DEFAULT_READY_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    parser.add_argument("files", nargs="+", metavar="FILE", help="iCE40 bitstreams (.asc or .bin)")
    parser.set_defaults(run=run)
