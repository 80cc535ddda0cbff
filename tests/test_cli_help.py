"""`--help` of every command, and a demo that cannot start (issue #13, item 17).

Every option says what it does, in plain text (docstrings are written for Sphinx: ``--help``
shows them without the markup); `picofleet demo --help` shows the demo's defaults, not the
gateway's; a demo whose ports are taken says so in one line before printing anything.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from picofleet.cli import build_parser

MARKUP = re.compile(r"``|:[a-z]+:`")
DEMO = [sys.executable, "-m", "picofleet.cli", "demo"]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command of ``parser``: the words after `picofleet`, and its parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from commands(subparser, (*path, name))


def help_of(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    """What `picofleet WORDS --help` prints."""
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


ALL_COMMANDS = [words for words, _ in commands(build_parser())]


def test_every_command_is_walked() -> None:
    assert ("fleet", "serve") in ALL_COMMANDS and ("fleet", "env", "set") in ALL_COMMANDS
    assert ("fleet", "logs") in ALL_COMMANDS and ("demo",) in ALL_COMMANDS


@pytest.mark.parametrize("words", ALL_COMMANDS, ids=lambda words: " ".join(words) or "picofleet")
def test_help_is_plain_text(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(words, capsys)
    assert not MARKUP.search(text), text


def test_every_option_of_every_command_says_what_it_does() -> None:
    silent = [
        f"picofleet {' '.join(words)} {action.option_strings[-1]}"
        for words, parser in commands(build_parser())
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert silent == []


def test_fleet_serve_explains_host_and_port(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(("fleet", "serve"), capsys)
    assert re.search(r"--host HOST +address to listen on", text), text
    assert re.search(r"--port PORT +port to listen on \(default 8080\)", text), text


def test_fleet_env_and_logs_help_show_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    assert "(--board) of a board" in " ".join(help_of(("fleet", "env"), capsys).split())
    assert "oldest first: TIME LEVEL TEXT." in help_of(("fleet", "logs"), capsys)


def test_demo_help_shows_the_demos_defaults_and_no_fleet_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(("demo",), capsys).split())
    assert "--fleet " not in text and "--provisioning-key" not in text  # the demo runs its own fleet
    assert "default /data" not in text
    assert "virtual boards (default demo-data)" in text
    assert "(default 4)" in text and "(default 127.0.0.1)" in text and "(default 8080)" in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_demo_whose_port_is_taken_says_so_in_one_line_before_anything_else(tmp_path: Path) -> None:
    fleet_port = free_port()
    with socket.socket() as taken:  # e.g. the gateway of a demo already running
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*DEMO, "--port", str(port), "--fleet-port", str(fleet_port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no banner, no commands to try
    assert done.stderr.splitlines() == [
        f"picofleet demo: the gateway: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another demo running? --port and --fleet-port choose others)"
    ]
    assert not (tmp_path / "demo-data").exists()  # nothing started, nothing written
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", fleet_port))  # no fleet service was left behind


def test_a_demo_with_the_same_port_twice_is_refused(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [*DEMO, "--port", str(port), "--fleet-port", str(port)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"picofleet demo: --port and --fleet-port must differ, not both {port}\n"
