"""`picofleet login URL` remembers the fleet service and its admin token; `picofleet logout`
forgets them (issue 15, item 7).

The real CLI runs as a subprocess against a real fleet service on loopback, with
``XDG_CONFIG_HOME`` (and ``HOME``) in the test's directory and no ``PICOFLEET_*`` variables, so
only the stored login can tell it where to go and with which token.
"""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "picofleet.cli"]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose config lives in tmp_path/config (no PICOFLEET_* variables)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PICOFLEET_")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path / "home"), **extra}


def run(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``picofleet ARGS`` with ``stdin``, run to its end (30 s at most)."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def stored(tmp_path: Path) -> Path:
    return tmp_path / "config" / "picofleet" / "login.json"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_login_stores_the_token_privately_and_fleet_commands_need_no_flags(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    fleet.create_fleet("lab")
    before = run(tmp_path, "fleet", "list")
    assert "picofleet login" in one_line_error(before)  # the way out is named

    login = run(tmp_path, "login", fleet.url + "/", "--token-stdin", stdin=fleet.token + "\n")
    assert login.returncode == 0, login.stderr
    path = stored(tmp_path)
    assert str(path) in login.stdout and fleet.url in login.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert fleet.token not in login.stdout + login.stderr

    listed = run(tmp_path, "fleet", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[0] == "FLEET"
    assert any(row.split()[0] == "lab" for row in listed.stdout.splitlines()[1:])

    # flags and the environment still win over the stored login
    wrong = run(tmp_path, "fleet", "list", PICOFLEET_ADMIN_TOKEN="not-the-token")
    assert "(HTTP 401)" in one_line_error(wrong)
    # the stored token goes to the stored URL only, never to another service
    elsewhere = run(tmp_path, "fleet", "list", "--url", "http://127.0.0.1:9")
    assert "no admin token" in one_line_error(elsewhere)

    logout = run(tmp_path, "logout")
    assert logout.returncode == 0, logout.stderr
    assert str(path) in logout.stdout
    assert not path.exists()
    assert "picofleet login" in one_line_error(run(tmp_path, "fleet", "list"))
    again = run(tmp_path, "logout")
    assert again.returncode == 0 and "not logged in" in again.stdout


def test_a_wrong_token_stores_nothing(fleet: FleetProcess, tmp_path: Path) -> None:
    result = run(tmp_path, "login", fleet.url, "--token-stdin", stdin="not-the-token\n")
    line = one_line_error(result)
    assert "wrong admin token" in line and "not-the-token" not in line
    assert result.stdout == ""
    assert not stored(tmp_path).exists()

    unreachable = run(tmp_path, "login", "http://127.0.0.1:9", "--token-stdin", stdin=fleet.token + "\n")
    assert "cannot reach" in one_line_error(unreachable)
    empty = run(tmp_path, "login", fleet.url, "--token-stdin", stdin="\n")
    assert "no token" in one_line_error(empty)
    assert not stored(tmp_path).exists()


def test_the_token_is_never_an_argument(fleet: FleetProcess, tmp_path: Path) -> None:
    refused = run(tmp_path, "login", fleet.url, "--token", fleet.token)
    assert refused.returncode == 2  # no such option: a token on the command line is in `ps`
    assert not stored(tmp_path).exists()

    process = subprocess.Popen(
        [*CLI, "login", fleet.url, "--token-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path),
        text=True,
    )
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        wait_for(lambda: b"--token-stdin" in cmdline.read_bytes(), 10, "the login process to start")
        assert fleet.token.encode() not in cmdline.read_bytes()  # what `ps` shows while it runs
        out, err = process.communicate(fleet.token + "\n", timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert stored(tmp_path).exists()
    assert fleet.token not in out + err


def test_a_login_file_others_can_read_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    login = run(tmp_path, "login", fleet.url, "--token-stdin", stdin=fleet.token + "\n")
    assert login.returncode == 0, login.stderr
    path = stored(tmp_path)
    path.chmod(0o644)
    line = one_line_error(run(tmp_path, "fleet", "list"))
    assert str(path) in line and f"chmod 600 {path}" in line
    path.chmod(0o600)
    assert run(tmp_path, "fleet", "list").returncode == 0
    # a new login replaces the file with a private one, whatever the old file's mode
    path.chmod(0o640)
    assert run(tmp_path, "login", fleet.url, "--token-stdin", stdin=fleet.token + "\n").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_relative_xdg_config_home_is_ignored(fleet: FleetProcess, tmp_path: Path) -> None:
    result = run(
        tmp_path, "login", fleet.url, "--token-stdin", stdin=fleet.token + "\n", XDG_CONFIG_HOME="relative"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / ".config" / "picofleet" / "login.json").exists()  # the XDG default


def read_until(fd: int, wanted: bytes, timeout: float = 20.0) -> bytes:
    """What the terminal ``fd`` shows until ``wanted`` appears (or its other side closes)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r} on the terminal; it showed {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_on_a_terminal_the_token_is_asked_for_without_echo(fleet: FleetProcess, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    terminal_name = os.ttyname(terminal)

    def own_terminal() -> None:  # the pty becomes the process's /dev/tty, which getpass reads
        os.setsid()
        os.close(os.open(terminal_name, os.O_RDWR))

    process = subprocess.Popen(
        [*CLI, "login", fleet.url],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli_env(tmp_path),
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        shown = read_until(controller, f"admin token for {fleet.url}: ".encode())  # echo is off by now
        os.write(controller, fleet.token.encode() + b"\n")
        shown += read_until(controller, b"(mode 0600)")
        assert process.wait(timeout=20) == 0, shown
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    assert fleet.token.encode() not in shown, shown  # not echoed
    assert stat.S_IMODE(stored(tmp_path).stat().st_mode) == 0o600
