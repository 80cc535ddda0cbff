"""install_files: copying files onto a (fake) MicroPython board over its raw REPL, on an open port."""

from __future__ import annotations

import ast
import re
import threading
import time
from collections.abc import Iterator

import pytest
import serial

from picofleet.firmware.host.errors import FirmwareError, PortLost
from picofleet.firmware.host.mpremote_install import install_files
from tests.helpers.fake_micropython import FakeMicroPythonBoard
from tests.helpers.wait import wait_for

FILES = {
    "main.py": b"import pulsecount\npulsecount.main()\n",
    "pulsecount.py": ("# pulse count \u00b5s\n" + "x = 1\n" * 400).encode(),
    "lib/frames.bin": bytes(range(256)) * 9,
}


def written_files(board: FakeMicroPythonBoard) -> dict[str, bytes]:
    """Replay what the board executed: the files mpremote's fs_writefile wrote."""
    files: dict[str, bytes] = {}
    current: str | None = None
    for code in board.executed:
        opened = re.fullmatch(r"f=open\((.+),'wb'\)\nw=f.write", code)
        if opened:
            current = ast.literal_eval(opened.group(1))
            files[current] = b""
        elif code.startswith("w(") and current is not None:
            files[current] += ast.literal_eval(code[2:-1])
        elif code == "f.close()":
            current = None
    return files


@pytest.fixture
def repl() -> Iterator[FakeMicroPythonBoard]:
    with FakeMicroPythonBoard("repl") as board:
        yield board


def open_port(board: FakeMicroPythonBoard) -> serial.Serial:
    return serial.Serial(board.device, 115200, timeout=0.1, write_timeout=2)


def test_files_are_written_then_the_board_soft_reboots(repl: FakeMicroPythonBoard) -> None:
    with open_port(repl) as port:
        install_files(port, FILES)
        assert port.is_open and port.timeout == 0.1  # the gateway's port, as it was
    assert written_files(repl) == FILES
    assert any("os.mkdir(p)" in code and "['lib']" in code for code in repl.executed)
    assert repl.soft_reboots == 1
    assert repl.received.endswith(b"\r\x02\x04")  # left the raw REPL, then Ctrl-D at the friendly REPL


def test_a_micropython_without_raw_paste_mode() -> None:
    with FakeMicroPythonBoard("repl", raw_paste=False) as board, open_port(board) as port:
        install_files(port, {"main.py": b"print('hello')\n" * 100})
        assert written_files(board) == {"main.py": b"print('hello')\n" * 100}
        assert board.soft_reboots == 1


@pytest.mark.parametrize(
    ("timeout", "within"),
    [
        pytest.param(10, 6, id="two handshakes of 2 s"),
        pytest.param(0.5, 2, id="the deadline holds"),
    ],
)
def test_no_raw_repl_answers(timeout: float, within: float) -> None:
    with FakeMicroPythonBoard("silent") as board, open_port(board) as port:
        started = time.monotonic()
        with pytest.raises(FirmwareError, match=rf"^no MicroPython raw REPL answered on {board.device} \("):
            install_files(port, FILES, timeout=timeout)
        assert time.monotonic() - started < within
        assert port.timeout == 0.1


def test_board_unplugged_during_the_copy(repl: FakeMicroPythonBoard) -> None:
    big = {"main.py": b"# padding\n" * 20_000}
    with open_port(repl) as port:
        unplug = threading.Thread(
            target=lambda: (wait_for(lambda: len(repl.executed) > 3, 10, "the copy to start"), repl.close())
        )
        unplug.start()
        with pytest.raises(PortLost, match=rf"^serial port {repl.device} failed while copying files"):
            install_files(port, big)
        unplug.join()
