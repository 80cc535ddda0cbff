"""The pulse-count firmware (protocol version 2) driven in-process: fake FPGA, in-memory streams."""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import random
import runpy
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from picofleet.firmware.host.protocol import FirmwareClient
from picofleet.firmware.pico2_ice import frames, pulsecount
from tests.helpers.fake_hardware import FakeHardware
from tests.helpers.wait import wait_for

FIRMWARE_DIR = Path(pulsecount.__file__).parent
TIMEOUT = 5.0


def bitstream(divider: int, size: int, seed: int = 0) -> bytes:
    """A fake bitstream: its first byte is the divider the fake FPGA counts with."""
    return bytes([divider]) + random.Random(seed).randbytes(size - 1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeFpga(FakeHardware):
    """The ``hw`` object: an FPGA that divides its clock by the bitstream's first byte.

    A count started with ``hold=True`` completes only when the test calls :meth:`finish`.
    """

    BOARD = "pico2-ice"

    def __init__(self, slots: int = 2, max_bitstream: int = 135_100) -> None:
        super().__init__()
        self._slots = slots
        self._max = max_bitstream
        self.configured: bytes | None = None
        self.hold = False
        self.count_error: str | None = None
        self._released = threading.Event()
        self._window: tuple[int, int] | None = None

    def slots(self) -> int:
        return self._slots

    def max_bitstream(self) -> int:
        return self._max

    def fpga_program(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.calls.append(("program", sha(data)))
        self.configured = None
        if data[0] == 0:
            raise Exception("FPGA did not configure: CDONE stayed low")
        self.configured = data

    def count_start(self, clock_hz: int, window_ms: int) -> None:
        assert self.configured is not None
        self.calls.append(("count", clock_hz, window_ms))
        self._released.clear()
        self._window = (clock_hz, window_ms)

    def count_result(self) -> int | None:
        if self.hold and not self._released.is_set():
            return None
        if self.count_error:
            raise Exception(self.count_error)
        assert self._window is not None and self.configured is not None
        clock_hz, window_ms = self._window
        return clock_hz * window_ms // 1000 // self.configured[0]

    def finish(self) -> None:
        """Let a held count end."""
        self._released.set()


class Pipe:
    """The firmware's input stream: bytes the test feeds, then (``close``) the end of input."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False
        self._cond = threading.Condition()

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._data += data
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def unread(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def wait(self, timeout_ms: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._data or self._closed, timeout_ms / 1000)

    def read(self, n: int) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: len(self._data) >= n or self._closed)
            data = bytes(self._data[:n])
            del self._data[:n]
            return data


class Output:
    """The firmware's output stream, decoded as it arrives: (framed, message) pairs."""

    def __init__(self) -> None:
        self.messages: list[tuple[bool, dict]] = []
        self.raw = bytearray()
        self._decoder = frames.Decoder(max_line=1 << 20)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.raw += data
            for event in self._decoder.feed(data):
                assert event[0] in ("frame", "line"), event
                if event[0] == "line" and event[1] == b"":
                    continue  # the line end the board sends after each frame
                payload = event[2] if event[0] == "frame" else event[1]
                self.messages.append((event[0] == "frame", json.loads(bytes(payload))))

    def snapshot(self) -> list[tuple[bool, dict]]:
        with self._lock:
            return list(self.messages)


class Board:
    """The firmware running in a thread, with helpers to talk to it."""

    def __init__(self, hw: FakeFpga | None = None, interrupt: bool = False) -> None:
        self.hw = hw or FakeFpga()
        self.inp = Pipe()
        self.out = Output()
        self.app = pulsecount.App(self.hw, self.inp, self.out, version="1.2.3", interrupt=interrupt)
        self.ended: object = "running"
        self._next_id = 100
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.ended = self.app.run()

    def stop(self) -> object:
        self.inp.close()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        return self.ended

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def request(self, op: str, **args: object) -> int:
        request_id = self.new_id()
        self.inp.feed(frames.encode_json({"id": request_id, "op": op, **args}))
        return request_id

    def chunk(self, data: bytes) -> int:
        request_id = self.new_id()
        self.inp.feed(frames.encode_data(request_id, data))
        return request_id

    def answer(self, request_id: int | None, timeout: float = TIMEOUT) -> dict:
        def find() -> dict | None:
            for framed, message in self.out.snapshot():
                if message.get("id") == request_id and "ok" in message:
                    assert framed, message
                    return message
            return None

        return wait_for(find, timeout, f"the answer to request {request_id}")

    def call(self, op: str, **args: object) -> dict:
        return self.answer(self.request(op, **args))

    def load(self, data: bytes, chunk_size: int = frames.MAX_DATA, digest: str | None = None) -> list[dict]:
        """Send ``load`` and all chunks at once (no window); the answers of the chunks."""
        answer = self.call("load", sha256=digest or sha(data), size=len(data))
        assert answer["ok"], answer
        ids = [self.chunk(data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]
        return [self.answer(request_id) for request_id in ids]

    def index(self, request_id: int) -> int:
        """Where the answer to ``request_id`` is in the output."""
        return [message.get("id") for _, message in self.out.snapshot()].index(request_id)


@pytest.fixture
def board() -> Iterator[Board]:
    running = Board()
    yield running
    running.stop()


def test_boot_log_identify_and_logs_framed_once_framing_started(board: Board) -> None:
    identify = board.call("identify")
    assert identify == {
        "id": identify["id"],
        "ok": True,
        "proto": 2,
        "board": "pico2-ice",
        "serial": "E6614C311B7E3C2A",
        "firmware": "picofleet-pulsecount",
        "version": "1.2.3",
        "slots": 2,
        "max_bitstream": 135_100,
    }
    assert board.out.messages[0] == (False, {"log": "booted picofleet-pulsecount 1.2.3", "level": "info"})
    # a frame cut short (at a read segment's end): once the input stays quiet the board drops it,
    # says so (framed now), and answers what comes next
    board.inp.feed(frames.encode_data(1, bytes(4096))[: frames.HEADER_SIZE + 2 * pulsecount.SEGMENT])
    warning = {
        "log": "dropped an incomplete frame (the sender stopped in the middle of it)",
        "level": "warning",
    }
    wait_for(lambda: (True, warning) in board.out.snapshot(), TIMEOUT, "the warning about the dropped frame")
    board.inp.feed(b'{"id": 9, "op": "ping"}\n')
    wait_for(
        lambda: (False, {"id": 9, "ok": True}) in board.out.snapshot(), TIMEOUT, "the ping line answered"
    )


def test_version_1_lines_are_still_answered() -> None:
    board = Board()
    board.inp.feed(b'{"id": 1, "op": "identify"}\r\n{"id": 2, "op": "blink", "seconds": 2}\n')
    board.inp.feed(b'{"id": 3, "op": "count", "clock_hz": 1, "window_ms": 1}\n{"id": 4, "op": "fly"}\n')
    board.inp.feed(b"not json\n" + b'{"id": 5, "op": "bootloader"}\n' + b'{"id": 6, "op": "ping"}\n')
    assert board.stop() == "bootloader"
    messages = board.out.snapshot()
    assert all(not framed for framed, _ in messages)  # v1 requests get v1 lines
    answers = [message for _, message in messages[1:]]
    assert answers[0]["proto"] == 2 and answers[0]["firmware"] == "picofleet-pulsecount"
    assert answers[1:] == [
        {"id": 2, "ok": True},
        {"id": 3, "ok": False, "error": "op 'count' needs a framed request (protocol version 2)"},
        {"id": 4, "ok": False, "error": "unknown op 'fly'"},
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": 5, "ok": True},
    ]  # the ping after the bootloader request is never read
    assert board.hw.calls == [("blink", 2), ("bootloader",)]


class RecordedPort:
    """A serial port a host reads the board's recorded output from (what it writes is dropped)."""

    port = "recorded"
    timeout = 0.1

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def write(self, data: bytes) -> int:
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.data)

    def read(self, n: int = 1) -> bytes:
        chunk = bytes(self.data[:n])
        del self.data[:n]
        return chunk


def test_a_version_1_host_gets_its_answer_after_a_framed_session() -> None:
    """The gateway's hooks (version 1 lines) ask a board whose evaluation session used frames."""
    board = Board()
    board.call("ping")  # a version 2 session: the board answers in frames, logs in frames
    board.inp.feed(b'{"id": 1, "op": "identify"}\n')  # then the gateway's identify
    board.stop()
    assert frames.MAGIC in board.out.raw  # the ping's answer was a frame
    answer = FirmwareClient(RecordedPort(bytes(board.out.raw))).identify(timeout=0.5)
    assert (answer["id"], answer["firmware"], answer["proto"]) == (1, "picofleet-pulsecount", 2)


def test_the_hardware_hears_of_a_bitstream_as_soon_as_it_is_complete(board: Board) -> None:
    prepared: list[str] = []
    board.hw.fpga_prepare = lambda data: prepared.append(sha(data))  # type: ignore[attr-defined]
    data = bitstream(16, 10_000)
    board.load(data, digest="ab" * 32)  # a transfer that does not check out: nothing to prepare
    assert prepared == []
    answers = board.load(data)
    assert answers[-1]["complete"] is True and prepared == [sha(data)]
    assert board.hw.calls == []  # prepared, not programmed: the host has not asked for that yet


def test_reboot_answers_first_then_reboots(board: Board) -> None:
    assert board.call("reboot") == {"id": board._next_id, "ok": True}
    wait_for(lambda: board.ended == "reboot", TIMEOUT, "run() to return")
    assert board.hw.calls == [("reboot",)]


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(1, 4096), (4095, 4096), (4096, 4096), (4097, 4096), (10_000, 999), (135_100, 4096)],
)
def test_any_bitstream_length_is_received_and_acknowledged_per_chunk(
    board: Board, size: int, chunk_size: int
) -> None:
    data = bitstream(16, size)
    answers = board.load(data, chunk_size=chunk_size)
    expected = [min(size, end) for end in range(chunk_size, size + chunk_size, chunk_size)]
    assert [answer["received"] for answer in answers] == expected
    assert all(answer["ok"] for answer in answers)
    assert [answer.get("complete") for answer in answers] == [None] * (len(answers) - 1) + [True]
    status = board.call("status")
    assert (status["loaded"], status["programmed"], status["counting"]) == ([sha(data)], None, False)
    assert board.call("load", sha256=sha(data).upper(), size=size)["complete"] is True  # held already


def test_sha256_mismatch_drops_the_bitstream(board: Board) -> None:
    data = bitstream(16, 5000)
    answers = board.load(data, digest="ab" * 32)
    assert answers[-1] == {
        "id": answers[-1]["id"],
        "ok": False,
        "error": "sha256 mismatch: the data received hashes to " + sha(data),
    }
    assert board.call("status")["loaded"] == []
    assert board.answer(board.chunk(b"x"))["error"] == "no bitstream transfer in progress"


def test_chunks_past_the_announced_size_are_refused(board: Board) -> None:
    assert board.call("load", sha256=sha(b"abc"), size=3)["ok"]
    answer = board.answer(board.chunk(b"abcd"))
    assert answer["error"] == "chunk goes past the announced size of 3 bytes"
    assert board.call("status")["loaded"] == []


def test_bad_crc_and_oversize_frames_are_answered_and_the_board_resynchronises(board: Board) -> None:
    good = frames.encode_json({"id": 1, "op": "ping"})
    corrupt = bytearray(frames.encode_json({"id": 2, "op": "ping"}))
    corrupt[-1] ^= 0xFF
    too_long = frames.MAGIC + struct.pack("<BI", frames.KIND_JSON, 5000) + b"{junk\n\x03" * 100
    board.inp.feed(
        bytes(corrupt) + b"noise\n" + good + too_long + frames.encode_json({"id": 3, "op": "ping"})
    )
    board.answer(3)
    answers = [message for _, message in board.out.snapshot()[1:]]
    assert answers == [
        {"id": None, "ok": False, "error": "frame CRC mismatch"},
        {"id": 1, "ok": True},  # the noise after the bad frame was skipped, not answered
        {"id": None, "ok": False, "error": "frame too long"},
        {"id": 3, "ok": True},
    ]
    # D frames may be longer than J frames, but not longer than the id and 4096 bytes of data
    board.inp.feed(
        frames.encode_data(9, bytes(frames.MAX_DATA + 1)) + frames.encode_json({"id": 4, "op": "ping"})
    )
    board.answer(4)
    assert board.out.snapshot()[-2][1] == {"id": None, "ok": False, "error": "frame too long"}


def test_malformed_frames(board: Board) -> None:
    board.inp.feed(frames.encode(frames.KIND_JSON, b"[1, 2]") + frames.encode(frames.KIND_DATA, b"\x01"))
    board.inp.feed(frames.encode(0x51, b"?") + frames.encode_json({"id": 7}))
    board.answer(7)
    assert [message for _, message in board.out.snapshot()[1:]] == [
        {"id": None, "ok": False, "error": "malformed request"},
        {"id": None, "ok": False, "error": "malformed data frame"},
        {"id": None, "ok": False, "error": "unknown frame kind 0x51"},
        {"id": 7, "ok": False, "error": "missing op"},
    ]


def test_evaluate_programs_then_counts(board: Board) -> None:
    data = bitstream(16, 3000)
    board.load(data)
    answer = board.call("evaluate", sha256=sha(data), clock_hz=48_000_000, window_ms=1000)
    assert answer == {"id": answer["id"], "ok": True, "pulses": 3_000_000, "sha256": sha(data)}
    assert board.call("evaluate", sha256=sha(data), clock_hz=1_000_000, window_ms=10)["pulses"] == 625
    assert [call[0] for call in board.hw.calls] == ["program", "count", "count"]  # programmed once
    assert board.call("status")["programmed"] == sha(data)
    assert board.call("count", clock_hz=1_600, window_ms=1000)["pulses"] == 100
    assert board.call("program", sha256=sha(data)) == {"id": board._next_id, "ok": True}
    assert [call[0] for call in board.hw.calls][-2:] == ["count", "program"]


def test_the_next_bitstream_is_received_while_counting(board: Board) -> None:
    first, second = bitstream(16, 9000, seed=1), bitstream(50, 7000, seed=2)
    board.load(first)
    board.hw.hold = True
    evaluation = board.request("evaluate", sha256=sha(first), clock_hz=10_000, window_ms=1000)
    wait_for(lambda: ("count", 10_000, 1000) in board.hw.calls, TIMEOUT, "the count to start")
    assert board.load(second)[-1]["complete"] is True
    status = board.call("status")
    assert status["counting"] is True and sorted(status["loaded"]) == sorted([sha(first), sha(second)])
    assert board.call("program", sha256=sha(second))["error"] == "already counting"
    busy = board.call("evaluate", sha256=sha(second), clock_hz=1, window_ms=1)
    assert busy["error"] == "already counting"
    assert board.call("count", clock_hz=1, window_ms=1)["error"] == "already counting"
    board.hw.finish()
    assert board.answer(evaluation)["pulses"] == 625
    assert board.index(evaluation) > board.index(busy["id"])  # answered out of order, at the window's end
    board.hw.hold = False
    assert board.call("evaluate", sha256=sha(second), clock_hz=10_000, window_ms=1000)["pulses"] == 200


def test_slot_eviction_spares_the_counting_bitstream(board: Board) -> None:
    a, b, c, d = (bitstream(10 + n, 100, seed=n) for n in range(4))
    board.load(a)
    board.hw.hold = True
    evaluation = board.request("evaluate", sha256=sha(a), clock_hz=100_000, window_ms=1)
    wait_for(lambda: board.call("status")["counting"], TIMEOUT, "the count to start")
    board.load(b)
    board.load(c)  # a is the least recently used, but it counts: b goes
    assert sorted(board.call("status")["loaded"]) == sorted([sha(a), sha(c)])
    board.hw.finish()
    assert board.answer(evaluation)["pulses"] == 10
    board.load(d)  # nothing counts: the least recently used (a) goes
    assert sorted(board.call("status")["loaded"]) == sorted([sha(c), sha(d)])
    assert board.call("evaluate", sha256=sha(b), clock_hz=1, window_ms=1)["error"] == (
        f"bitstream {sha(b)} is not loaded"
    )


def test_no_free_slot_while_the_only_slot_counts() -> None:
    board = Board(FakeFpga(slots=1))
    a, b = bitstream(16, 100, seed=1), bitstream(16, 100, seed=2)
    board.load(a)
    board.hw.hold = True
    board.request("evaluate", sha256=sha(a), clock_hz=1000, window_ms=1)
    wait_for(lambda: board.call("status")["counting"], TIMEOUT, "the count to start")
    answer = board.call("load", sha256=sha(b), size=100)
    assert answer["error"] == "no free slot: every bitstream slot is in use"
    board.hw.finish()
    board.stop()


def test_a_new_load_replaces_an_unfinished_one(board: Board) -> None:
    a, b = bitstream(16, 5000, seed=1), bitstream(16, 100, seed=2)
    board.call("load", sha256=sha(a), size=len(a))
    board.answer(board.chunk(a[:4096]))
    assert board.call("status")["loading"] == {"sha256": sha(a), "received": 4096, "size": 5000}
    board.load(b)
    status = board.call("status")
    assert (status["loaded"], status["loading"]) == ([sha(b)], None)


def test_configure_and_count_failures_are_error_answers(board: Board) -> None:
    broken, good = bitstream(0, 100, seed=1), bitstream(16, 100, seed=2)
    board.load(broken)
    board.load(good)
    answer = board.call("evaluate", sha256=sha(broken), clock_hz=1000, window_ms=1)
    assert answer["error"] == "FPGA did not configure: CDONE stayed low"
    assert board.call("status")["programmed"] is None
    assert board.call("count", clock_hz=1000, window_ms=1)["error"] == "no bitstream is programmed"
    board.hw.count_error = "circuit did not settle within 20 s"
    answer = board.call("evaluate", sha256=sha(good), clock_hz=1000, window_ms=1)
    assert answer["error"] == "circuit did not settle within 20 s"
    assert board.call("status")["counting"] is False


@pytest.mark.parametrize(
    ("op", "args", "error"),
    [
        ("load", {"sha256": "xyz", "size": 1}, "sha256 must be 64 hexadecimal digits"),
        ("load", {"sha256": "g" * 64, "size": 1}, "sha256 must be 64 hexadecimal digits"),
        ("load", {"sha256": "a" * 64, "size": 135_101}, "size must be an integer between 1 and 135100"),
        ("load", {"sha256": "a" * 64, "size": 0}, "size must be an integer between 1 and 135100"),
        ("program", {}, "sha256 must be 64 hexadecimal digits"),
        ("count", {"clock_hz": 0, "window_ms": 1}, "clock_hz must be an integer between 1 and 50000000"),
        (
            "count",
            {"clock_hz": 50_000_001, "window_ms": 1},
            "clock_hz must be an integer between 1 and 50000000",
        ),
        ("count", {"clock_hz": 1, "window_ms": 60_001}, "window_ms must be an integer between 1 and 60000"),
        ("count", {"clock_hz": True, "window_ms": 1}, "clock_hz must be an integer between 1 and 50000000"),
        (
            "evaluate",
            {"sha256": "a" * 64, "clock_hz": 1, "window_ms": 1.5},
            "window_ms must be an integer between 1 and 60000",
        ),
        (
            "evaluate",
            {"sha256": "a" * 64, "clock_hz": 1, "window_ms": 1},
            f"bitstream {'a' * 64} is not loaded",
        ),
        ("blink", {"seconds": "ten"}, "seconds must be a number"),
        ("dance", {}, "unknown op 'dance'"),
    ],
)
def test_bad_arguments(board: Board, op: str, args: dict, error: str) -> None:
    assert board.call(op, **args) == {"id": board._next_id, "ok": False, "error": error}


def test_ctrl_c_stops_the_board_firmware_and_leaves_the_rest_to_the_repl() -> None:
    board = Board(interrupt=True)
    board.inp.feed(b'{"id": 1, "op": "ping"}\n\r\x03\r\x01')
    wait_for(lambda: board.ended == "interrupt", TIMEOUT, "run() to return")
    assert board.inp.unread() == b"\r\x01"  # mpremote's Ctrl-A reaches the REPL
    assert board.out.snapshot()[1] == (False, {"id": 1, "ok": True})
    assert board.hw.calls == []
    plain = Board()  # without interrupt (the simulator), 0x03 is only a bad byte in a line
    plain.inp.feed(b"\x03\n")
    plain.stop()
    assert plain.out.snapshot()[1:] == [(False, {"id": None, "ok": False, "error": "malformed request"})]


def decode_all(data: bytes, pieces: Callable[[bytes], list[bytes]]) -> list[tuple]:
    decoder = frames.Decoder()
    events: list[tuple] = []
    for piece in pieces(data):
        events += decoder.feed(piece)
    return [tuple(bytes(part) if isinstance(part, bytearray) else part for part in event) for event in events]


def test_decoder_gives_the_same_events_however_the_stream_is_split() -> None:
    corrupt = bytearray(frames.encode_json({"id": 2}))
    corrupt[9] ^= 1
    stream = (
        b'{"log": "boot"}\r\n'
        + frames.encode_data(7, bytes(range(256)) * 3)
        + b"\xa5x\n"  # A5 not followed by 5A: a line
        + bytes(corrupt)
        + b"junk \xa5 more"
        + frames.encode_json({"id": 3, "op": "ping"})
        + frames.encode(frames.KIND_JSON, b"")
    )
    whole = decode_all(stream, lambda data: [data])
    assert whole == [
        ("line", b'{"log": "boot"}\r'),
        ("frame", frames.KIND_DATA, struct.pack("<I", 7) + bytes(range(256)) * 3),
        ("line", b"\xa5x"),
        ("error", "frame CRC mismatch"),
        ("frame", frames.KIND_JSON, b'{"id": 3, "op": "ping"}'),
        ("frame", frames.KIND_JSON, b""),
    ]
    assert decode_all(stream, lambda data: [data[i : i + 1] for i in range(len(data))]) == whole
    for cut in range(1, len(stream)):
        assert decode_all(stream, lambda data, cut=cut: [data[:cut], data[cut:]]) == whole


def test_crc32_fallback_matches_zlib() -> None:
    import zlib

    data = random.Random(5).randbytes(3000)
    assert frames._crc32_python(data) == zlib.crc32(data) == frames.crc32(data)
    assert frames._crc32_python(b"123456789") == 0xCBF43926


ALLOWED_IMPORTS = {
    "frames.py": {"json", "struct", "binascii"},
    "pulsecount.py": {"hashlib", "json", "sys", "time", "gc", "frames"},
    "main.py": {"sys", "micropython", "hw_pico2_ice", "pulsecount"},
    "hw_pico2_ice.py": {"io", "sys", "time", "select", "machine", "micropython", "rp2", "ice"},
}


@pytest.mark.parametrize("name", sorted(ALLOWED_IMPORTS))
def test_firmware_sources_stay_micropython_friendly(name: str) -> None:
    tree = ast.parse((FIRMWARE_DIR / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {alias.name for alias in node.names} <= ALLOWED_IMPORTS[name], ast.dump(node)
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 and [alias.name for alias in node.names] == ["frames"], ast.dump(node)
        assert not isinstance(node, ast.AnnAssign | ast.JoinedStr), f"{name}: line {node.lineno}"
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None and all(a.annotation is None for a in node.args.args), node.name


def test_main_gives_ctrl_c_back_when_the_hardware_fails_to_start(monkeypatch, capsys) -> None:
    """main.py on a board whose FPGA does not start: the error is shown and Ctrl-C works again."""
    kbd_intr: list[int] = []
    micropython = type(sys)("micropython")
    micropython.kbd_intr = kbd_intr.append  # type: ignore[attr-defined]

    class Hardware:
        def __init__(self) -> None:
            micropython.kbd_intr(-1)  # as hw_pico2_ice.Hardware does first
            raise OSError("ice: the FPGA does not answer")

    hw_module = type(sys)("hw_pico2_ice")
    hw_module.Hardware = Hardware  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "micropython", micropython)
    monkeypatch.setitem(sys.modules, "hw_pico2_ice", hw_module)
    monkeypatch.setitem(sys.modules, "pulsecount", pulsecount)
    monkeypatch.setattr(sys, "print_exception", lambda error: print("Traceback:", repr(error)), raising=False)
    runpy.run_path(str(FIRMWARE_DIR / "main.py"))
    assert kbd_intr == [-1, 3]  # the REPL takes Ctrl-C again
    assert "OSError('ice: the FPGA does not answer')" in capsys.readouterr().out


class FakeMicroPython:
    """Stand-ins for MicroPython's ``machine``, ``micropython``, ``rp2`` and ``ice`` modules."""

    def __init__(self) -> None:
        self.cdone = 1
        self.timers: list[FakeMicroPython.Timer] = []
        self.machines: dict[int, FakeMicroPython.StateMachine] = {}
        self.pwm_freqs: list[int] = []
        self.fpgas: list[FakeMicroPython.Fpga] = []
        self.routed: dict[int, int] = {}
        fake = self

        class Pin:
            IN, OUT, ALT, PULL_DOWN = 0, 1, 3, 2
            ALT_GPCK = 9

            def __init__(
                self, pin: int, mode: int = 0, pull: int | None = None, value: int = 0, alt: int = 0
            ):
                self.pin = pin
                if mode == Pin.ALT:
                    fake.routed[pin] = alt

            def value(self, *set_to: int) -> int:
                return fake.cdone if self.pin == 40 and not set_to else 0

            def toggle(self) -> None:
                pass

        class Timer:
            ONE_SHOT, PERIODIC = 0, 1

            def __init__(self) -> None:
                self.callback = None
                self.kwargs: dict = {}
                fake.timers.append(self)

            def init(self, **kwargs: object) -> None:
                self.kwargs = kwargs
                self.callback = kwargs["callback"]

            def deinit(self) -> None:
                self.callback = None

        class PWM:
            def __init__(self, pin: Pin) -> None:
                self._freq = 0

            def freq(self, *value: int) -> int:
                if value:
                    if value[0] < 9:
                        raise ValueError("freq too small")
                    self._freq = value[0]
                    fake.pwm_freqs.append(value[0])
                return self._freq

            def duty_u16(self, value: int) -> None:
                pass

            def deinit(self) -> None:
                pass

        class StateMachine:
            def __init__(self, number: int) -> None:
                self.number, self.running, self.program, self.kwargs, self.x = number, False, None, {}, 0
                self.executed: list[int] = []
                fake.machines[number] = self

            def init(self, program: object, **kwargs: object) -> None:
                self.program, self.kwargs, self.x = program, kwargs, 0xFFFFFFFF

            def active(self, on: int) -> None:
                self.running = bool(on)

            def exec(self, instruction: int) -> None:
                self.executed.append(instruction)

            def get(self) -> int:
                return self.x

        class Fpga:
            def __init__(self, **kwargs: object) -> None:
                self.kwargs, self.started, self.crammed = kwargs, False, []
                self.error: str | None = None
                fake.fpgas.append(self)

            def start(self) -> bool:
                self.started = True
                return False

            def cram(self, reader: object) -> None:
                if self.error:
                    raise RuntimeError(self.error)
                self.crammed.append(reader.read())  # type: ignore[attr-defined]

        self.Timer, self.StateMachine, self.Fpga = Timer, StateMachine, Fpga
        self.Pin = Pin
        self.machine = type(sys)("machine")
        self.machine.__dict__.update(
            Pin=Pin, Timer=Timer, PWM=PWM, freq=lambda: 150_000_000, unique_id=lambda: b"\xe6\x61\x4c\x31"
        )
        self.micropython = type(sys)("micropython")
        self.micropython.kbd_intr = lambda char: None
        self.rp2 = type(sys)("rp2")
        self.rp2.__dict__.update(
            asm_pio=lambda **kwargs: lambda function: function,
            asm_pio_encode=lambda text, sideset: hash(text) & 0xFFFF,
            StateMachine=StateMachine,
            PIO=type("PIO", (), {"OUT_LOW": 0}),
        )
        self.ice = type(sys)("ice")
        self.ice.fpga = Fpga


@pytest.fixture
def real_hw(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, FakeMicroPython]]:
    fake = FakeMicroPython()
    for name in ("machine", "micropython", "rp2", "ice"):
        monkeypatch.setitem(sys.modules, name, getattr(fake, name))
    monkeypatch.setattr(time, "ticks_ms", lambda: int(time.monotonic() * 1000), raising=False)
    monkeypatch.setattr(time, "ticks_add", lambda ticks, delta: ticks + delta, raising=False)
    monkeypatch.setattr(time, "ticks_diff", lambda end, start: end - start, raising=False)
    module_name = "picofleet.firmware.pico2_ice.hw_pico2_ice"
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    module = importlib.import_module(module_name)
    yield module.Hardware(), fake
    sys.modules.pop(module_name, None)


def test_real_hardware_module_programs_and_counts(real_hw: tuple[object, FakeMicroPython]) -> None:
    """hw_pico2_ice.py against stand-ins: the calls it makes, not the board's behaviour."""
    hw, fake = real_hw
    fpga = fake.fpgas[0]
    assert fpga.started and fpga.kwargs["frequency"] == 48 and hw.serial() == "E6614C31"  # type: ignore[attr-defined]
    data = bitstream(16, 100)
    hw.fpga_program(data)  # type: ignore[attr-defined]
    assert fpga.crammed[-1] is data  # handed over without a copy
    fake.cdone = 0
    with pytest.raises(Exception, match=r"^FPGA did not configure: CDONE stayed low$"):
        hw.fpga_program(bytearray(data))  # type: ignore[attr-defined]
    fpga.error = "Couldn't write CRAM"
    with pytest.raises(Exception, match=r"^FPGA did not configure: Couldn't write CRAM$"):
        hw.fpga_program(data)  # type: ignore[attr-defined]

    counter, clock = fake.machines[8], fake.machines[9]
    hw.count_start(48_000_000, 100)  # type: ignore[attr-defined]
    window = next(timer for timer in fake.timers if timer.kwargs.get("period") == 100)
    assert window.kwargs["hard"] is True and counter.running and not clock.running
    assert hw.count_result() is None  # type: ignore[attr-defined]
    counter.x = 0xFFFFFFFF - 1234
    window.callback(window)
    assert not counter.running and hw.count_result() == 1234  # type: ignore[attr-defined]

    hw.count_start(12_000_000, 10)  # type: ignore[attr-defined]
    assert clock.running and clock.kwargs["freq"] == 24_000_000
    hw.count_start(37_000_000, 10)  # type: ignore[attr-defined] (150 MHz / 74 MHz: 0.2 % off at most)
    hw.count_start(100, 10)  # type: ignore[attr-defined]
    assert not clock.running and fake.pwm_freqs == [100]
    with pytest.raises(Exception, match=r"^cannot make a 7 Hz clock: freq too small$"):
        hw.count_start(7, 10)  # type: ignore[attr-defined]
    hw.count_start(48_000_000, 10)  # type: ignore[attr-defined]
    assert fake.routed[21] == 9  # back to GPOUT0
