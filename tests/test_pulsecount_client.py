"""PulseCountBoard against the pulse-count firmware running behind a real pty."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import threading
import time
import tty
from collections.abc import Iterator

import pytest
import serial

from picofleet.firmware.host.pulsecount import FirmwareError, NoAnswer, PortLost, PulseCountBoard
from picofleet.firmware.pico2_ice import frames, pulsecount
from picofleet.gateway import core_hooks
from picofleet.gateway.models import BoardIdentity, BoardRef
from tests.helpers.wait import wait_for
from tests.test_pulsecount_firmware import FakeFpga, bitstream, sha

TIMEOUT = 5.0


class MasterInput:
    """The firmware's input: the pty master (``read`` ends when the host side is gone)."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self.fd = fd
        self.stop = stop
        self.received = 0

    def wait(self, timeout_ms: int) -> bool:
        if self.stop.is_set():
            return True
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout_ms / 1000)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n and not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if ready:
                    chunk = os.read(self.fd, n - len(data))
                    if not chunk:
                        break
                    data += chunk
                    self.received += len(chunk)
            except OSError as error:
                if error.errno == errno.EIO:
                    break  # the host closed its side
                raise
        return data


class MasterOutput:
    """The firmware's output: the pty master."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class PtyBoard:
    """The firmware (fake FPGA) on a pty master; ``device`` is the slave a host opens."""

    def __init__(self, answer: bool = True) -> None:
        self.hw = FakeFpga()
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.device = os.ttyname(self.slave)
        self.stop_event = threading.Event()
        self.inp = MasterInput(self.master, self.stop_event)
        self.out = MasterOutput(self.master)
        self.app = pulsecount.App(self.hw, self.inp, self.out, version="2.0.0")
        self.thread = threading.Thread(target=self.app.run, daemon=True) if answer else None

    def boot(self) -> None:
        """Start the firmware (its boot log goes to a host that has the port open already)."""
        if self.thread and not self.thread.is_alive():
            self.thread.start()

    def unplug(self) -> None:
        """Stop the firmware and close the pty: the device is gone."""
        self.stop_event.set()
        if self.thread and self.thread.is_alive():
            self.thread.join(TIMEOUT)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def pty_board() -> Iterator[PtyBoard]:
    board = PtyBoard()
    yield board
    board.unplug()


def open_port(board: PtyBoard, boot: bool = True) -> serial.Serial:
    """Open the board's port as the gateway does, then let the board boot (pyserial flushes on open)."""
    port = serial.Serial(board.device, 115200, timeout=0.1, write_timeout=2, exclusive=True)
    if boot:
        board.boot()
    return port


def test_identify_status_and_boot_log(pty_board: PtyBoard) -> None:
    logs: list[tuple[str, str]] = []
    with open_port(pty_board, boot=False) as port:
        client = PulseCountBoard(port, on_log=lambda level, text: logs.append((level, text)))
        pty_board.boot()  # the boot log comes during the session
        answer = client.identify()
        assert (answer["proto"], answer["firmware"], answer["version"]) == (
            2,
            "picofleet-pulsecount",
            "2.0.0",
        )
        assert (answer["slots"], answer["max_bitstream"]) == (2, 135_100)
        assert logs == [("info", "booted picofleet-pulsecount 2.0.0")]
        status = client.status()
        assert (status["loaded"], status["programmed"], status["counting"]) == ([], None, False)
        assert port.timeout == 0.1  # the port's own timeout is left as it was


def test_load_and_evaluate(pty_board: PtyBoard) -> None:
    data = bitstream(16, 104_090)
    with open_port(pty_board) as port:
        client = PulseCountBoard(port)
        client.load(sha(data), data)
        assert client.evaluate(sha(data), 48_000_000, 1000) == 3_000_000
        assert client.status()["loaded"] == [sha(data)]
        received = pty_board.inp.received
        client.load(sha(data), data)  # held already: no chunks are sent
        assert pty_board.inp.received - received < 200  # the load request only
        with pytest.raises(
            FirmwareError, match=r"^board answered: sha256 mismatch: the data received hashes"
        ):
            client.load("ab" * 32, data[:5000])
        with pytest.raises(FirmwareError, match=r"^board answered: bitstream a{64} is not loaded$"):
            client.evaluate("a" * 64, 1000, 1)


def test_pipelined_evaluate_and_load(pty_board: PtyBoard) -> None:
    first, second = bitstream(16, 30_000, seed=1), bitstream(50, 20_000, seed=2)
    pty_board.hw.hold = True
    with open_port(pty_board) as port:
        client = PulseCountBoard(port)
        client.load(sha(first), first)
        evaluation = client.start_evaluate(sha(first), 10_000, 1000)
        client.load(sha(second), second)  # received while the first one counts
        status_id = client.send("status")
        status = client.wait(status_id, TIMEOUT)
        assert status["counting"] is True and sorted(status["loaded"]) == sorted([sha(first), sha(second)])
        with pytest.raises(NoAnswer, match=r"^no answer to 'evaluate' within 0\.2 s$"):
            client.wait(evaluation, 0.2)  # still counting; the answer is not lost by waiting
        pty_board.hw.finish()
        assert client.wait(evaluation, TIMEOUT) == {
            "id": evaluation,
            "ok": True,
            "pulses": 625,
            "sha256": sha(first),
        }
        pty_board.hw.hold = False
        assert client.evaluate(sha(second), 10_000, 1000) == 200


def test_answers_are_kept_whatever_order_they_are_collected_in(pty_board: PtyBoard) -> None:
    with open_port(pty_board) as port:
        client = PulseCountBoard(port)
        ids = [client.send("ping"), client.send("status"), client.send("identify")]
        assert client.wait(ids[2], TIMEOUT)["firmware"] == "picofleet-pulsecount"
        assert client.wait(ids[0], TIMEOUT) == {"id": ids[0], "ok": True}
        assert "loaded" in client.wait(ids[1], TIMEOUT)
        with pytest.raises(ValueError, match="was not sent, or its answer was collected"):
            client.wait(ids[1], TIMEOUT)


def test_no_answer_from_a_silent_board() -> None:
    board = PtyBoard(answer=False)
    try:
        with open_port(board) as port:
            client = PulseCountBoard(port)
            started = time.monotonic()
            with pytest.raises(NoAnswer, match=r"^no answer to 'identify' within 0\.3 s$"):
                client.identify(timeout=0.3)
            assert time.monotonic() - started < 2
            with pytest.raises(NoAnswer, match=r"^no answer to 'load' within 0\.2 s$"):
                client.load("a" * 64, b"data", timeout=0.2)
    finally:
        board.unplug()


def test_port_lost_when_the_board_goes_away(pty_board: PtyBoard) -> None:
    with open_port(pty_board) as port:
        client = PulseCountBoard(port)
        client.identify()
        pty_board.hw.hold = True
        data = bitstream(16, 1000)
        client.load(sha(data), data)
        evaluation = client.start_evaluate(sha(data), 1000, 1)
        wait_for(lambda: pty_board.app.counting is not None, TIMEOUT, "the count to start")
        pty_board.unplug()
        with pytest.raises(PortLost, match=rf"^serial port {pty_board.device} failed"):
            client.wait(evaluation, TIMEOUT)


def test_chunks_stay_within_the_window(pty_board: PtyBoard) -> None:
    """The client never has more than four chunks unacknowledged."""
    data = bitstream(16, 20 * frames.MAX_DATA)
    received: list[int] = []
    real_chunk = pty_board.app.handle_chunk

    def spy(payload: bytearray) -> None:
        received.append(len(payload))
        real_chunk(payload)

    pty_board.app.handle_chunk = spy  # type: ignore[method-assign]
    with open_port(pty_board) as port:
        client = PulseCountBoard(port)
        sent: list[int] = []
        real_send_chunk = client.send_chunk

        def counting_send_chunk(chunk: bytes) -> int:
            sent.append(len(chunk))
            assert len(sent) - len(received) <= 4  # this one and at most three more unacknowledged
            return real_send_chunk(chunk)

        client.send_chunk = counting_send_chunk  # type: ignore[method-assign]
        client.load(sha(data), data)
    assert len(sent) == len(received) == 20


def test_a_new_session_never_takes_an_earlier_sessions_answer_for_its_own(pty_board: PtyBoard) -> None:
    with open_port(pty_board, boot=False) as port:
        # the answer to a request an earlier session gave up on, still unread on the port
        stale = frames.encode_json({"id": 1, "ok": True}) + b"\n"
        os.write(pty_board.master, stale)
        wait_for(lambda: port.in_waiting >= len(stale), TIMEOUT, "the stale answer to reach the port")
        client = PulseCountBoard(port)
        with pytest.raises(NoAnswer):  # the board is not running yet: nothing answers this identify
            client.identify(timeout=0.3)
        pty_board.boot()
        assert client.identify()["firmware"] == "picofleet-pulsecount"


def test_a_version_1_answer_is_never_taken_for_a_framed_answer(pty_board: PtyBoard) -> None:
    with open_port(pty_board, boot=False) as port:
        client = PulseCountBoard(port)
        ping = client.send("ping")  # ids are consecutive within a session: identify's is ping + 1
        # the gateway's version 1 hook (FirmwareClient) got no answer in time; it comes now
        os.write(pty_board.master, json.dumps({"id": ping + 1, "ok": True}).encode() + b"\n")
        with pytest.raises(NoAnswer):  # the board is not running yet: nothing answers this identify
            client.identify(timeout=0.3)
        pty_board.boot()
        assert client.identify()["firmware"] == "picofleet-pulsecount"
        assert client.wait(ping, TIMEOUT) == {"id": ping, "ok": True}


def test_a_load_given_up_on_keeps_nothing_when_its_answer_comes_late(pty_board: PtyBoard) -> None:
    data = bitstream(16, 1000)
    with open_port(pty_board, boot=False) as port:
        client = PulseCountBoard(port)
        with pytest.raises(NoAnswer, match=r"^no answer to 'load' within 0\.2 s$"):
            client.load(sha(data), data, timeout=0.2)
        pty_board.boot()  # the board answers the load now, too late
        assert client.identify()["firmware"] == "picofleet-pulsecount"  # the late answer was read meanwhile
        assert client._responses == {} and client._ops == {}  # nothing kept for a request given up on


def test_the_gateways_identify_skips_a_late_answer_to_its_previous_call(pty_board: PtyBoard) -> None:
    """The gateway makes a FirmwareClient per hook call: the last call's late answer is not this one's."""
    board = BoardRef(
        serial="E6614C311B7E3C2A",
        board_type="pico2-ice",
        mode="application",
        firmware="picofleet-app",
        port=pty_board.device,
        drive=None,
        usb_path="platform-xhci-hcd.0-usb-0:1.1:1.0",
    )
    with open_port(pty_board, boot=False) as port:
        os.write(pty_board.master, b'{"id": 1, "ok": true}\n')  # the blink the previous call gave up on
        pty_board.boot()
        identity = core_hooks.picofleet_identify(board=board, port=port)
    assert identity == BoardIdentity("pico2-ice", "E6614C311B7E3C2A", "picofleet-pulsecount", "2.0.0")
