"""`picofleet fleet`: run the fleet service, and operate it (fleets, gateways, boards, pins, variables).

Operator subcommands talk to the service's HTTP API (docs/fleet-api.md) with the admin token:
``--url`` and ``--token``, else ``$PICOFLEET_FLEET_URL`` and ``$PICOFLEET_ADMIN_TOKEN``, else the
login stored by `picofleet login URL` (:mod:`picofleet.credentials`), else http://127.0.0.1:8080
and no token. Every one takes ``--json`` (the API's answer as JSON on stdout). Errors end the
command with one line ``picofleet fleet: <reason>`` on stderr and exit status 1.

`logs --follow`, `boards --watch` and `gateways --watch` read the fleet's Server-Sent Events
stream (``GET /v1/fleets/{name}/events``; :mod:`picofleet.event_stream`) until Ctrl-C (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from picofleet import credentials, event_stream
from picofleet.fleet import service

URL_ENV, TOKEN_ENV = "PICOFLEET_FLEET_URL", "PICOFLEET_ADMIN_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"


class CommandError(Exception):
    """Ends the command with this one-line reason."""


def _client(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The service's URL and the admin token's header: flags, else environment, else stored login.

    The stored login's token is only sent to the stored URL: with another URL given, the token
    must come from ``--token`` or the environment too.
    """
    url = (args.url or os.environ.get(URL_ENV) or "").rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not url or not token:
        try:
            stored = credentials.load()
        except credentials.CredentialsError as error:
            raise CommandError(str(error)) from None
        if stored is not None and (not url or url == stored.url):
            url, token = url or stored.url, token or stored.token
    if not token:
        raise CommandError(f"no admin token: run `picofleet login URL`, or pass --token, or set {TOKEN_ENV}")
    return url or DEFAULT_URL, {"Authorization": f"Bearer {token}"}


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API call with the admin token; its JSON answer, or :class:`CommandError` with the reason."""
    url, headers = _client(args)
    try:
        response = httpx.request(method, url + path, headers=headers, json=body, timeout=30)
    except httpx.HTTPError as error:
        raise CommandError(f"cannot reach the fleet service at {url}: {error}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise CommandError(
            f"{reason or response.text.strip() or response.reason_phrase} (HTTP {response.status_code})"
        )
    return answer


def with_credentials(git_url: str, token: str) -> str:
    """``git_url`` with ``admin:TOKEN@`` in it: the remote ``git push`` authenticates with."""
    parts = urlsplit(git_url)
    netloc = f"admin:{quote(token, safe='')}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _table(rows: list[list[str]], header: list[str]) -> None:
    print(_format_table(rows, header))


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"


# -- subcommands -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the fleet service until Ctrl-C (admin token in DATA/admin-token or $PICOFLEET_ADMIN_TOKEN)."""
    return service.run_from_args(args)


def cmd_create(args: argparse.Namespace) -> int:
    """Create a fleet; print its git remote (admin token embedded), its deploy branch (only pushes to
    it change what the boards run) and its provisioning key."""
    answer = call(args, "POST", "/v1/fleets", {"name": args.name, "deploy_branch": args.deploy_branch})
    _, headers = _client(args)
    git_url = with_credentials(answer["git_url"], headers["Authorization"].removeprefix("Bearer "))
    result = {
        "fleet": answer["fleet"],
        "git_url": git_url,
        "deploy_branch": answer["deploy_branch"],
        "provisioning_key": answer["provisioning_key"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"fleet {result['fleet']} created")
    print(f"git remote:       {git_url}")
    print(f"deploy branch:    {result['deploy_branch']}")
    print("                  (pushes to other branches and tags make releases you can pin, not deploys)")
    print("                  (the admin token is embedded: `git push` needs it; keep this URL secret)")
    print(f"provisioning key: {result['provisioning_key']}")
    print(
        "                  (shown only now; gateways use it once: picofleet gateway "
        "--provisioning-key-file FILE, or PICOFLEET_PROVISIONING_KEY=KEY)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List the fleets with their deploy branch, target commit and pin."""
    fleets = call(args, "GET", "/v1/fleets")
    if args.json:
        print(json.dumps(fleets))
        return 0
    rows = [
        [f["fleet"], f["deploy_branch"], _short(f["target"]), _short(f.get("pinned")), f["git_url"]]
        for f in fleets
    ]
    _table(rows, ["FLEET", "DEPLOY BRANCH", "TARGET", "PINNED", "GIT URL"])
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """List the fleet's gateways with when they were last seen and their boards; with ``--watch``,
    redraw the list on every change until Ctrl-C."""
    if args.watch:
        return _watch(args, lambda gateways: gateways, _gateways_table)
    gateways = call(args, "GET", f"/v1/fleets/{args.fleet}/gateways")
    if args.json:
        print(json.dumps(gateways))
        return 0
    print(_gateways_table(gateways))
    return 0


def _gateways_table(gateways: list[dict[str, Any]]) -> str:
    rows = []
    for g in gateways:
        online = sum(1 for b in g["boards"] if b.get("online"))
        converged = sum(1 for b in g["boards"] if b.get("converged"))  # commit, FPGA image, env, config
        rows.append(
            [
                g["gateway"],
                g["name"] or "",
                g["last_seen"] or "never",
                str(len(g["boards"])),
                str(online),
                str(converged),
            ]
        )
    return _format_table(rows, ["GATEWAY", "NAME", "LAST SEEN", "BOARDS", "ONLINE", "ON TARGET"])


def _note(board: dict[str, Any]) -> str:
    """What the operator should know of a board beyond its status: local mode, a failed release."""
    notes = []
    if board.get("LocalMode"):
        notes.append("local mode")
    failed = board.get("FailedRelease")
    if isinstance(failed, dict):
        notes.append(f"release {_short(failed.get('commit'))} failed, rolled back: {failed.get('reason')}")
    return "; ".join(notes)


def cmd_boards(args: argparse.Namespace) -> int:
    """List the fleet's boards: online state, commit, target commit, pin, status, and a note: local
    mode, or a release that failed on the board (rolled back) with the reason (retry it with
    ``picofleet fleet retry FLEET UUID``). With ``--watch``, redraw the list on every change until
    Ctrl-C."""
    if args.watch:
        return _watch(args, _boards_of, _boards_table)
    boards = call(args, "GET", f"/v1/fleets/{args.fleet}/boards")
    if args.json:
        print(json.dumps(boards))
        return 0
    print(_boards_table(boards))
    return 0


def _boards_of(gateways: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The boards of ``gateways`` (as ``GET .../gateways`` lists them), as ``GET .../boards`` does."""
    return [board for gateway in gateways for board in gateway.get("boards") or []]


def _boards_table(boards: list[dict[str, Any]]) -> str:
    rows = [
        [
            b["LocalUUID"],
            b["BoardType"],
            "online" if b.get("online") else "offline",
            _short(b.get("Commit")),
            _short(b.get("target_commit")),
            _short(b.get("pin")),
            b.get("Status") or "",
            _note(b),
        ]
        for b in boards
    ]
    return _format_table(rows, ["BOARD", "TYPE", "STATE", "COMMIT", "TARGET", "PINNED", "STATUS", "NOTE"])


def cmd_releases(args: argparse.Namespace) -> int:
    """List the fleet's releases, oldest first."""
    releases = call(args, "GET", f"/v1/fleets/{args.fleet}/releases")
    if args.json:
        print(json.dumps(releases))
        return 0
    rows = [[r["commit"], r.get("ref") or "", r["created"], ", ".join(sorted(r["boards"]))] for r in releases]
    _table(rows, ["COMMIT", "REF", "CREATED", "BOARD TYPES"])
    return 0


def _print_fleet(args: argparse.Namespace, fleet: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(fleet))
    elif fleet.get("pinned"):
        print(f"fleet {fleet['fleet']} pinned to {fleet['pinned']}")
    else:
        print(f"fleet {fleet['fleet']} tracks its latest release ({fleet.get('target') or 'none yet'})")


def cmd_pin(args: argparse.Namespace) -> int:
    """Pin the fleet to a release (full commit or a unique prefix)."""
    _print_fleet(args, call(args, "PUT", f"/v1/fleets/{args.fleet}/pin", {"commit": args.commit}))
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    """Unpin the fleet: it tracks its latest release again."""
    _print_fleet(args, call(args, "DELETE", f"/v1/fleets/{args.fleet}/pin"))
    return 0


def _print_board(args: argparse.Namespace, board: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(board))
    elif board.get("pin"):
        print(f"board {board['LocalUUID']} pinned to {board['pin']}")
    else:
        print(f"board {board['LocalUUID']} follows fleet {board['fleet']}")


def cmd_pin_board(args: argparse.Namespace) -> int:
    """Pin one board to a release, whatever the fleet's target."""
    path = f"/v1/fleets/{args.fleet}/boards/{args.board}/pin"
    _print_board(args, call(args, "PUT", path, {"commit": args.commit}))
    return 0


def cmd_unpin_board(args: argparse.Namespace) -> int:
    """Unpin one board: it follows the fleet again."""
    _print_board(args, call(args, "DELETE", f"/v1/fleets/{args.fleet}/boards/{args.board}/pin"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Flash the release that failed on a board (and was rolled back) once more."""
    path = f"/v1/fleets/{quote(args.fleet, safe='')}/boards/{quote(args.board, safe='')}/retry"
    answer = call(args, "POST", path)
    if args.json:
        print(json.dumps(answer))
    else:
        failed = answer.get("failed_release") or {}
        release = _short(failed.get("commit"))
        print(f"board {answer['LocalUUID']}: release {release} is flashed again (retry {answer['retry']})")
    return 0


def cmd_variables(args: argparse.Namespace) -> int:
    """Set, unset or list environment / config variables of the fleet or (``--board``) of a board."""
    base = f"/v1/fleets/{args.fleet}" + (f"/boards/{args.board}" if args.board else "")
    kind = args.kind
    if args.action == "set":
        variables = call(args, "PUT", f"{base}/{kind}/{args.key}", {"value": args.value})
    elif args.action == "unset":
        variables = call(args, "DELETE", f"{base}/{kind}/{args.key}")
    else:
        variables = call(args, "GET", f"{base}/{kind}")
    if args.json:
        print(json.dumps(variables))
    else:
        for key, value in sorted(variables.items()):
            print(f"{key}={value}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a board's last log lines, oldest first: ``TIME LEVEL TEXT``. With ``--follow``, then
    print its new lines as they come, until Ctrl-C (with ``--json``: one JSON object per line)."""
    if not 1 <= args.limit <= 1000:
        raise CommandError("--limit: a whole number from 1 to 1000")
    path = f"/v1/fleets/{quote(args.fleet, safe='')}/boards/{quote(args.board, safe='')}/logs"
    if args.follow:
        return _follow_logs(args, path)
    lines = call(args, "GET", f"{path}?limit={args.limit}")
    if args.json:
        print(json.dumps(lines))
        return 0
    for line in lines:
        print(_log_line(line))
    return 0


def _log_line(line: dict[str, Any]) -> str:
    return f"{line['time']} {str(line['level']).upper():<7} {line['text']}"


# -- live: logs --follow, boards/gateways --watch ------------------------------------------------


def _events(args: argparse.Namespace, query: str) -> Iterator[event_stream.Event]:
    """The events of the fleet's stream (``GET /v1/fleets/{fleet}/events?QUERY``), reconnecting;
    a lost stream is one line on stderr, a refused one a :class:`CommandError`."""
    url, headers = _client(args)
    stream_url = f"{url}/v1/fleets/{quote(args.fleet, safe='')}/events" + (f"?{query}" if query else "")

    def notice(text: str) -> None:
        print(f"picofleet fleet: {text}", file=sys.stderr, flush=True)

    events = event_stream.follow(stream_url, headers, notice=notice)
    try:
        yield from events
    except event_stream.StreamRefused as error:
        raise CommandError(str(error)) from None
    finally:
        events.close()


class _Seen:
    """The log lines printed lately (a bounded memory), so that a line read twice — in the tail
    fetched on (re)connection and on the stream — is printed once."""

    def __init__(self, size: int = 5000) -> None:
        self.order: deque[tuple[str, str, str]] = deque()
        self.keys: set[tuple[str, str, str]] = set()
        self.size = size
        self.latest = ""

    def fresh(self, line: dict[str, Any], *, newer_only: bool = False) -> bool:
        """Whether ``line`` was not printed yet (then it counts as printed); ``newer_only`` also
        refuses lines older than the latest printed one (an old tail line never printed)."""
        key = (str(line.get("time")), str(line.get("level")), str(line.get("text")))
        if key in self.keys or (newer_only and key[0] < self.latest):
            return False
        self.order.append(key)
        self.keys.add(key)
        if len(self.order) > self.size:
            self.keys.discard(self.order.popleft())
        self.latest = max(self.latest, key[0])
        return True


def _follow_logs(args: argparse.Namespace, path: str) -> int:
    """``logs --follow``: the last lines, then the new ones from the stream (``logs=UUID&boards=0``).

    The stream is opened first and the tail read after, so no line falls in between; on each
    reconnection the tail is read again for the lines posted while the stream was down.
    """
    seen = _Seen()

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line) if args.json else _log_line(line), flush=True)

    query = f"logs={quote(args.board, safe='')}&boards=0"
    try:
        for event in _events(args, query):
            if event.name == event_stream.OPEN:
                first = event.data == 0
                try:
                    tail = call(args, "GET", f"{path}?limit={args.limit if first else 1000}")
                except CommandError:
                    if first:
                        raise
                    continue  # the service went away again: the stream says so and reconnects
                for line in tail:
                    if seen.fresh(line, newer_only=not first):
                        emit(line)
            elif event.name == "logs" and isinstance(event.data, dict):
                if event.data.get("board") != args.board:
                    continue
                dropped = event.data.get("dropped") or 0
                if dropped:
                    print(
                        f"picofleet fleet: {dropped} lines missed (this reader fell behind)", file=sys.stderr
                    )
                for line in event.data.get("lines") or []:
                    if seen.fresh(line):
                        emit(line)
    except KeyboardInterrupt:
        return 0
    return 0


CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _watch(
    args: argparse.Namespace,
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    render: Callable[[list[dict[str, Any]]], str],
) -> int:
    """``--watch``: the table of ``select(gateways)``, again after every change the stream reports
    (``fleet`` events carry every gateway, ``gateway`` events one). On a terminal the table is
    redrawn in place under a header line; otherwise (a pipe, a file) each new table is printed
    after a blank line. With ``--json``, each new list is one line of JSON."""
    gateways: list[dict[str, Any]] = []
    shown: str | None = None
    tty = sys.stdout.isatty()
    try:
        for event in _events(args, ""):
            if event.name == "fleet" and isinstance(event.data, dict):
                gateways = list(event.data.get("gateways") or [])
            elif event.name == "gateway" and isinstance(event.data, dict):
                gid = event.data.get("gateway")
                at = next((i for i, g in enumerate(gateways) if g.get("gateway") == gid), None)
                if at is None:
                    gateways.append(event.data)
                else:
                    gateways[at] = event.data
            else:
                continue
            selected = select(gateways)
            text = json.dumps(selected) if args.json else render(selected)
            if text == shown:
                continue  # nothing this table shows changed
            if args.json:
                print(text, flush=True)
            elif tty:
                stamp = time.strftime("%H:%M:%S")
                header = f"fleet {args.fleet} at {stamp}, live (Ctrl-C to stop)\n\n"
                sys.stdout.write(CLEAR_SCREEN + header + text + "\n")
                sys.stdout.flush()
            else:
                print(("\n" if shown is not None else "") + text, flush=True)
            shown = text
    except KeyboardInterrupt:
        return 0
    return 0


# -- wiring ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a `picofleet fleet` subcommand; errors are one line and exit status 1."""
    try:
        return int(args.fleet_run(args) or 0)
    except CommandError as error:
        print(f"picofleet fleet: {error}", file=sys.stderr)
        return 1


def _operator(
    sub: argparse._SubParsersAction, name: str, fn: Callable[[argparse.Namespace], int], help_: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=fn.__doc__)
    parser.add_argument(
        "--url",
        default=None,
        help=f"fleet service URL (env {URL_ENV}, then `picofleet login`'s; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=None, help=f"admin token (env {TOKEN_ENV}, then `picofleet login`'s)"
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.set_defaults(fleet_run=fn)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet fleet` and its subcommands."""
    parser = subparsers.add_parser(
        "fleet", help="run or operate the fleet service", description=__doc__.split("\n\n")[0]
    )
    parser.set_defaults(run=run)
    sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)

    serve = sub.add_parser("serve", help="run the fleet service", description=cmd_serve.__doc__)
    service.add_arguments(serve, data_default=Path("fleet-data"))
    serve.set_defaults(fleet_run=cmd_serve)

    create = _operator(sub, "create", cmd_create, "create a fleet")
    create.add_argument("name")
    create.add_argument(
        "--deploy-branch",
        default="main",
        metavar="BRANCH",
        help="the branch whose pushes the boards run (default main); other branches make releases to pin",
    )
    _operator(sub, "list", cmd_list, "list fleets")
    for name, fn, help_ in (
        ("gateways", cmd_gateways, "list a fleet's gateways"),
        ("boards", cmd_boards, "list a fleet's boards"),
        ("releases", cmd_releases, "list a fleet's releases"),
        ("unpin", cmd_unpin, "unpin a fleet"),
    ):
        listing = _operator(sub, name, fn, help_)
        listing.add_argument("fleet")
        if name in ("gateways", "boards"):
            listing.add_argument(
                "--watch", action="store_true", help="redraw the list on every change, until Ctrl-C"
            )
    pin = _operator(sub, "pin", cmd_pin, "pin a fleet to a release")
    pin.add_argument("fleet")
    pin.add_argument("commit")
    pin_board = _operator(sub, "pin-board", cmd_pin_board, "pin a board to a release")
    unpin_board = _operator(sub, "unpin-board", cmd_unpin_board, "unpin a board")
    for board_parser in (pin_board, unpin_board):
        board_parser.add_argument("fleet")
        board_parser.add_argument("board", metavar="UUID")
    pin_board.add_argument("commit")
    retry = _operator(sub, "retry", cmd_retry, "flash a release that failed on a board once more")
    retry.add_argument("fleet")
    retry.add_argument("board", metavar="UUID")
    logs = _operator(sub, "logs", cmd_logs, "print a board's last log lines")
    logs.add_argument("fleet")
    logs.add_argument("board", metavar="UUID")
    logs.add_argument("--limit", type=int, default=100, help="at most this many lines, 1..1000 (default 100)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then print new lines as they come, until Ctrl-C"
    )

    for kind, what in (("env", "environment"), ("config", "configuration")):
        variables = _operator(sub, kind, cmd_variables, f"set/unset {what} variables")
        variables.set_defaults(kind=kind)
        variables.add_argument("fleet")
        actions = variables.add_subparsers(dest="action", metavar="ACTION", required=True)
        for action in ("set", "unset", "list"):
            act = actions.add_parser(action, help=f"{action} {what} variables")
            act.add_argument(
                "--board", default=None, metavar="UUID", help="a board's variable, not the fleet's"
            )
            act.add_argument(
                "--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON"
            )
            act.add_argument("--url", default=argparse.SUPPRESS, help="fleet service URL")
            act.add_argument("--token", default=argparse.SUPPRESS, help="admin token")
            if action != "list":
                act.add_argument("key", help="the variable's name")
            if action == "set":
                act.add_argument("value", help="its value")
