"""The reference firmware's protocol handling (in-memory streams, fake hardware) and its host client."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from picofleet.firmware.app import main as app
from picofleet.firmware.host.errors import FirmwareError
from picofleet.firmware.host.protocol import FirmwareClient
from tests.helpers.fake_hardware import FakeHardware

APP_DIR = Path(app.__file__).parent


class Lines:
    """An input stream of given lines, then end of input."""

    def __init__(self, *lines: bytes) -> None:
        self.lines = list(lines)

    def readline(self) -> bytes:
        return self.lines.pop(0) if self.lines else b""


class Output:
    """An output stream that keeps what was written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def messages(self) -> list[dict]:
        assert self.data.endswith(b"\n")
        return [json.loads(line) for line in self.data.splitlines()]


def run_app(*lines: bytes, version: str = "1.2.3") -> tuple[object, list[dict], FakeHardware]:
    hw, out = FakeHardware(), Output()
    ended = app.run(hw, Lines(*lines), out, version=version)
    return ended, out.messages(), hw


def test_boot_log_then_identify_and_ping() -> None:
    ended, messages, _ = run_app(b'{"id": 1, "op": "identify"}\n', b'{"id": 2, "op": "ping"}\r\n')
    assert ended is None
    assert messages == [
        {"log": "booted picofleet-app 1.2.3", "level": "info"},
        {
            "id": 1,
            "ok": True,
            "proto": 1,
            "board": "rp2350",
            "serial": "E6614C311B7E3C2A",
            "firmware": "picofleet-app",
            "version": "1.2.3",
        },
        {"id": 2, "ok": True},
    ]


def test_blink() -> None:
    _, messages, hw = run_app(
        b'{"id": 1, "op": "blink", "seconds": 2.5}\n',
        b'{"id": 2, "op": "blink"}\n',
        b'{"id": 3, "op": "blink", "seconds": "ten"}\n',
        b'{"id": 4, "op": "blink", "seconds": -1}\n',
        b'{"id": 5, "op": "blink", "seconds": true}\n',
    )
    assert hw.calls == [("blink", 2.5), ("blink", 3)]
    assert messages[1:3] == [{"id": 1, "ok": True}, {"id": 2, "ok": True}]
    assert messages[3] == {"id": 3, "ok": False, "error": "seconds must be a number"}
    assert messages[4] == {"id": 4, "ok": False, "error": "seconds must be between 0 and 3600"}
    assert messages[5] == {"id": 5, "ok": False, "error": "seconds must be a number"}


@pytest.mark.parametrize("op", ["reboot", "bootloader"])
def test_reboot_and_bootloader_answer_first(op: str) -> None:
    request = json.dumps({"id": 9, "op": op}).encode() + b"\n"
    ended, messages, hw = run_app(request, b'{"id": 10, "op": "ping"}\n')
    assert ended == op
    assert messages[1:] == [{"id": 9, "ok": True}]  # the ping after it is never read
    assert hw.calls == [(op,)]


def test_malformed_and_unknown_requests() -> None:
    _, messages, hw = run_app(
        b"hello\n",
        b"[1, 2]\n",
        b"\xff\xfe\n",
        b"\n",  # a bare line end is ignored
        b'{"id": 3}\n',
        b'{"id": 4, "op": "dance"}\n',
        b'{"id": 5, "op": "ping", "pad": "' + b"x" * 4200 + b'"}\n',
        b'{"op": "ping"}\n',
    )
    assert messages[1:] == [
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": 3, "ok": False, "error": "missing op"},
        {"id": 4, "ok": False, "error": "unknown op 'dance'"},
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": None, "ok": True},
    ]
    assert hw.calls == []


def test_hardware_failure_is_an_error_answer() -> None:
    class Broken(FakeHardware):
        def blink(self, seconds: float) -> None:
            raise OSError("LED pin busy")

    out = Output()
    app.run(Broken(), Lines(b'{"id": 1, "op": "blink"}\n'), out)
    assert out.messages()[1] == {"id": 1, "ok": False, "error": "internal error: OSError('LED pin busy')"}


@pytest.mark.parametrize("name", ["main.py", "hw_rp2.py"])
def test_firmware_sources_stay_micropython_friendly(name: str) -> None:
    tree = ast.parse((APP_DIR / name).read_text())
    board_only = {"machine", "micropython", "os", "hw_pico2_ice"} if name == "hw_rp2.py" else {"hw_rp2"}
    allowed = {"binascii", "hashlib", "json", "sys", "time"} | board_only
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {alias.name for alias in node.names} <= allowed, ast.dump(node)
        assert not isinstance(node, ast.ImportFrom), f"{name}: from-import {ast.dump(node)}"
        assert not isinstance(node, ast.AnnAssign | ast.JoinedStr), f"{name}: line {node.lineno}"
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None and all(a.annotation is None for a in node.args.args), node.name


class FakeSerial:
    """Just enough of serial.Serial for FirmwareClient, with the firmware answering in-process."""

    port = "/dev/fake"

    def __init__(self, answer: bool = True, noise: bytes = b"") -> None:
        self.timeout: float | None = None
        self.written = b""
        self.incoming = bytearray(noise)
        out = Output()
        self.out = out
        self.app = app.App(FakeHardware(), None, out, version="4.5.6")
        self.answer = answer

    @property
    def in_waiting(self) -> int:
        return len(self.incoming)

    def write(self, data: bytes) -> int:
        self.written += data
        if self.answer:
            self.out.data = b""
            self.app.log("working", "debug")
            self.app.handle_line(data)
            self.incoming += b"garbage \x00\xff\n" + self.out.data
        return len(data)

    def flush(self) -> None:
        pass

    def read(self, size: int = 1) -> bytes:
        data = bytes(self.incoming[:size])
        del self.incoming[:size]
        return data


def test_client_identify_skips_noise_and_forwards_logs() -> None:
    logs: list[tuple[str, str]] = []
    port = FakeSerial(noise=b'\x00boot noise\n{"id": 0, "ok": true}\n')
    client = FirmwareClient(port, on_log=lambda level, text: logs.append((level, text)))
    answer = client.identify()
    assert (answer["version"], answer["serial"], answer["id"]) == ("4.5.6", "E6614C311B7E3C2A", 1)
    assert json.loads(port.written) == {"id": 1, "op": "identify"}
    assert logs == [("debug", "working")]
    assert port.timeout is None  # the port's own timeout is restored
    client.ping()
    assert json.loads(port.written.splitlines()[1])["id"] == 2


def test_client_errors() -> None:
    client = FirmwareClient(FakeSerial())
    with pytest.raises(FirmwareError, match=r"^board answered: unknown op 'fly'$"):
        client.request("fly")
    with pytest.raises(FirmwareError, match=r"^no answer to 'identify' within 0\.2 s$"):
        FirmwareClient(FakeSerial(answer=False)).identify(timeout=0.2)
