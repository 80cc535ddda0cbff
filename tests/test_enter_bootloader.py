"""The built-in picofleet_enter_bootloader against fake boards on ptys, for every kind of firmware.

Rule under test (gateway/core_hooks.py): picofleet's ``bootloader`` command; else, for a USB
identity that may be MicroPython, ``machine.bootloader()`` through the raw REPL (mpremote);
else, or when no raw REPL answers, the 1200-baud touch.
"""

from __future__ import annotations

import termios
import time

import pytest
import serial

from picofleet.gateway import core_hooks
from picofleet.gateway.models import APPLICATION, BoardError, BoardRef
from tests.helpers.fake_micropython import FakeMicroPythonBoard
from tests.helpers.wait import wait_for

CONTRACT_SECONDS = 5.0
"""picofleet_enter_bootloader must return within this (gateway/hookspecs.py)."""


def ref(board: FakeMicroPythonBoard, firmware: str) -> BoardRef:
    """What the gateway tells the hook about a board whose USB identity names ``firmware``."""
    return BoardRef(
        serial=board.serial,
        board_type=board.board,
        mode=APPLICATION,
        firmware=firmware,
        port=board.device,
        drive=None,
        usb_path="platform-xhci-hcd.0-usb-0:1.1:1.0",
    )


def enter_bootloader(board: FakeMicroPythonBoard, firmware: str) -> tuple[bool | None, float, serial.Serial]:
    """Open the port as the gateway does, call the hook, close the port as the gateway does."""
    board_ref = ref(board, firmware)
    port = core_hooks.picofleet_open_port(board_ref)
    assert port is not None
    started = time.monotonic()
    try:
        result = core_hooks.picofleet_enter_bootloader(board_ref, port)
    finally:
        elapsed = time.monotonic() - started
        assert core_hooks.picofleet_close_port(board_ref, port) is True  # closed or not, no error
    return result, elapsed, port


def wait_for_touch(board: FakeMicroPythonBoard, timeout: float = 2.0) -> None:
    """Wait until the pty's line speed is 1200 baud (the touch), as the board would see it."""
    wait_for(lambda: board.speeds and board.speeds[-1] == termios.B1200, timeout, "a 1200-baud touch", 0.005)


@pytest.mark.parametrize("firmware", ["micropython", "pico-ice"])
@pytest.mark.parametrize("raw_paste", [True, False], ids=["raw-paste", "raw-repl-before-1.14"])
def test_micropython_runs_machine_bootloader_through_the_raw_repl(firmware: str, raw_paste: bool) -> None:
    with FakeMicroPythonBoard("repl", raw_paste=raw_paste) as board:
        result, elapsed, port = enter_bootloader(board, firmware)
        assert result is True
        assert board.executed == ["import machine; machine.bootloader()"]
        assert board.reset_to == "bootloader"
        assert board.gone.is_set()  # the board reset under mpremote: that is success
        assert termios.B1200 not in board.speeds  # no touch after the raw REPL worked
        assert b'"op":"bootloader"' in bytes(board.received)  # picofleet's command was tried first
        assert b"\r\x03" in bytes(board.received) and b"\r\x01" in bytes(board.received)
        assert not port.is_open
        assert elapsed < CONTRACT_SECONDS


def test_picofleet_firmware_gets_its_bootloader_command_only() -> None:
    with FakeMicroPythonBoard("app") as board:
        result, elapsed, _ = enter_bootloader(board, "micropython")  # picofleet-app runs on MicroPython
        assert result is True
        assert board.gone.wait(5), "the board did not reset after answering"
        assert board.reset_to == "bootloader"
        assert board.executed == []
        assert b"\x01" not in bytes(board.received)  # no raw REPL
        assert termios.B1200 not in board.speeds
        assert elapsed < CONTRACT_SECONDS


def test_a_silent_firmware_that_is_not_micropython_gets_the_1200_baud_touch() -> None:
    with FakeMicroPythonBoard("silent") as board:
        result, elapsed, _ = enter_bootloader(board, "pico-sdk")
        assert result is True
        wait_for_touch(board)
        assert termios.tcgetattr(board._master)[4:6] == [termios.B1200, termios.B1200]
        received = bytes(board.received)
        assert b"\x01" not in received and b"\x03" not in received  # no raw REPL for pico-sdk firmware
        assert elapsed < CONTRACT_SECONDS  # about 1.2 s: 1 s for a picofleet answer, then the touch


@pytest.mark.parametrize("firmware", ["micropython", "pico-ice"])
def test_no_raw_repl_answering_falls_back_to_the_touch(firmware: str) -> None:
    """pico-ice-sdk firmware shares its USB identity with tinyVision's MicroPython."""
    with FakeMicroPythonBoard("silent") as board:
        result, elapsed, _ = enter_bootloader(board, firmware)
        assert result is True
        assert b"\r\x01" in bytes(board.received)  # the raw REPL was tried
        wait_for_touch(board)
        assert elapsed < CONTRACT_SECONDS


def test_an_error_from_machine_bootloader_is_reported() -> None:
    with FakeMicroPythonBoard(
        "repl", bootloader_error="AttributeError: 'module' object has no attribute"
    ) as board:
        with pytest.raises(BoardError, match=r"machine\.bootloader\(\) failed on the board: AttributeError"):
            enter_bootloader(board, "micropython")
        assert board.executed == ["import machine; machine.bootloader()"]


@pytest.mark.parametrize("raw_paste", [True, False], ids=["raw-paste", "raw-repl-before-1.14"])
def test_a_board_that_resets_before_its_ok_arrives_is_taken_as_rebooting(raw_paste: bool) -> None:
    with FakeMicroPythonBoard("repl", raw_paste=raw_paste, ok_before_reset=False) as board:
        result, elapsed, _ = enter_bootloader(board, "micropython")
        assert result is True  # its port is gone: the gateway waits for the bootloader drive
        assert board.executed == ["import machine; machine.bootloader()"]
        assert board.reset_to == "bootloader"
        assert termios.B1200 not in board.speeds
        assert elapsed < CONTRACT_SECONDS
