"""The `picofleet` command line: one console script, one module per subcommand.

Each module in ``picofleet.commands`` has ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors end the command with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from picofleet import __version__

COMMANDS = (
    "gateway",
    "demo",
    "plugins",
    "sim",
    "firmware",
    "flash",
    "local_mode",
    "fleet",
    "evaluate",
    "login",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="picofleet", description="Fleet gateway for Raspberry Pi Pico boards."
    )
    parser.add_argument("--version", action="version", version=f"picofleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"picofleet.commands.{name}").add_parser(subparsers)
    _plain_help(parser)
    return parser


_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`")


def plain(text: str | None) -> str | None:
    """``text`` with the reST markup of docstrings taken out: ````x```` → ``x``, ``:class:`~a.B``` → ``B``."""
    if not text:
        return text

    def role(match: re.Match[str]) -> str:
        target = match.group(1).strip()
        return target.rsplit(".", 1)[-1] if "`~" in match.group(0) else target

    return _ROLE.sub(role, _LITERAL.sub(r"\1", text))


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Descriptions and option help of ``parser`` and every subcommand's, as plain text.

    Commands take their descriptions from docstrings, which are written for Sphinx; ``--help``
    shows them without the markup.
    """
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    for action in parser._actions:
        action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for subparser in set(action.choices.values()):
                _plain_help(subparser)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `picofleet` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `picofleet ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
