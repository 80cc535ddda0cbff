"""A virtual pico2-ice flashed with picofleet-pulsecount: the firmware's own code, a simulated FPGA."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import psutil
import pytest
import serial

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from picofleet.firmware.host.protocol import FirmwareClient
from picofleet.firmware.host.pulsecount import FirmwareError, NoAnswer, PulseCountBoard
from tests.helpers.fpga import session_counter, session_loop
from tests.helpers.rack import RackProcess, Subscription
from tests.helpers.wait import wait_for


def pulsecount_uf2(board_type: str = "pico2-ice") -> bytes:
    """The evaluation firmware's image as a UF2 for the board."""
    image = make_app_image("picofleet-pulsecount", "1.0.0", board_type)
    return uf2.from_binary(image, FLASH_BASE, uf2.RP2350_ARM_S)


def flash_pulsecount(events: Subscription, board: dict) -> dict:
    """Touch the board into its bootloader, copy the pulsecount UF2 there; the new tty's device."""
    serial.Serial(board["port"], 1200).close()
    events.expect("remove", "tty", board["serial"])
    drive = events.expect("add", "block", board["serial"])
    (Path(drive["devname"]) / "PULSE.UF2").write_bytes(pulsecount_uf2())
    events.expect("remove", "block", board["serial"])
    return events.expect("add", "tty", board["serial"], timeout=10.0)


def start_pulsecount(state_dir: Path, deadline: float) -> tuple[RackProcess, Subscription, str, dict]:
    """A rack with one pico2-ice flashed with picofleet-pulsecount: (rack, its events, serial, tty)."""
    rack = RackProcess(state_dir, "1:pico2-ice", env={"PICOFLEET_SIM_FPGA_DEADLINE": str(deadline)})
    rack.start()
    try:
        events = rack.subscribe()
        events.initial()
        (board,) = rack.boards()
        return rack, events, board["serial"], flash_pulsecount(events, board)
    except BaseException:
        rack.stop()
        raise


@pytest.fixture
def pulsecount_board(tmp_path: Path):
    """A pico2-ice running picofleet-pulsecount with a 2 s FPGA deadline: (rack, serial, tty device)."""
    rack, _, serial_number, device = start_pulsecount(tmp_path / "virtual", deadline=2)
    with rack:
        yield rack, serial_number, device


def vvp_processes(rack: RackProcess) -> list[psutil.Process]:
    """The simulations the rack runs."""
    children = psutil.Process(rack.process.pid).children(recursive=True)
    return [child for child in children if child.name() == "vvp"]


def test_the_board_enumerates_and_answers_version_1_identify(pulsecount_board) -> None:
    rack, serial_number, device = pulsecount_board
    properties = device["properties"]
    assert (properties["ID_VENDOR_ID"], properties["ID_MODEL_ID"]) == ("1209", "b1c0")  # as the app firmware
    assert rack.board(serial_number)["firmware"] == {"name": "picofleet-pulsecount", "version": "1.0.0"}
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        answer = FirmwareClient(port).identify()
    assert (answer["firmware"], answer["version"]) == ("picofleet-pulsecount", "1.0.0")
    assert (answer["board"], answer["serial"]) == ("pico2-ice", serial_number)


def test_a_real_bitstream_counts_exactly_over_the_pty(pulsecount_board, tmp_path_factory) -> None:
    rack, serial_number, device = pulsecount_board
    boots = rack.board(serial_number)["boots"]
    divide_by_16 = session_counter(tmp_path_factory, 16).bin.read_bytes()
    divide_by_4 = session_counter(tmp_path_factory, 4).bin.read_bytes()
    sha16, sha4 = hashlib.sha256(divide_by_16).hexdigest(), hashlib.sha256(divide_by_4).hexdigest()
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        board = PulseCountBoard(port)
        identity = board.identify()
        assert (identity["proto"], identity["slots"], identity["max_bitstream"]) == (2, 2, 135_100)
        board.load(sha16, divide_by_16)
        assert board.evaluate(sha16, 1_000_000, 10, timeout=30) == 625
    # The host closed the port: the board keeps its boot and its bitstreams for the next host.
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        board = PulseCountBoard(port)
        assert board.status()["loaded"] == [sha16]
        request = board.start_evaluate(sha16, 1_000, 500)  # half a second of counting...
        board.load(sha4, divide_by_4)  # ... while the next bitstream arrives
        assert board.wait(request, timeout=30)["pulses"] == 31  # (500 + 8) // 16
        assert board.evaluate(sha4, 1_000_000, 10, timeout=30) == 2500
    assert rack.board(serial_number)["boots"] == boots
    assert (rack.state_dir / "fpga" / sha16 / "circuit.vvp").is_file()  # compiled once, cached


def test_a_received_bitstream_is_built_while_the_board_keeps_answering(
    pulsecount_board, tmp_path_factory
) -> None:
    rack, _, device = pulsecount_board
    divide_by_16 = session_counter(tmp_path_factory, 16).bin.read_bytes()
    sha16 = hashlib.sha256(divide_by_16).hexdigest()
    circuit = rack.state_dir / "fpga" / sha16 / "circuit.vvp"
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        board = PulseCountBoard(port)
        board.load(sha16, divide_by_16)
        answered_in: list[float] = []

        def built_while_answering() -> bool:
            started = time.monotonic()
            try:
                board.request("ping", timeout=5.0)
            except NoAnswer:
                answered_in.append(float("inf"))
                raise
            answered_in.append(time.monotonic() - started)
            return circuit.is_file()

        # built before the host asks for it (no evaluate yet), and meanwhile the board answers at once
        wait_for(built_while_answering, 60, "the circuit to be built with no evaluate asked", interval=0.05)
        assert max(answered_in) < 1.0, answered_in
        request = board.start_evaluate(sha16, 1_000_000, 10)
        board.request("ping", timeout=1.0)  # configuring a built circuit does not make the board deaf
        assert board.wait(request, timeout=30)["pulses"] == 625


def test_a_circuit_that_never_settles_fails_its_evaluation(pulsecount_board, tmp_path_factory) -> None:
    _, _, device = pulsecount_board
    loop = session_loop(tmp_path_factory).bin.read_bytes()
    sha = hashlib.sha256(loop).hexdigest()
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        board = PulseCountBoard(port)
        board.load(sha, loop)
        with pytest.raises(FirmwareError, match="board answered: circuit did not settle within 2 s"):
            board.evaluate(sha, 1_000_000, 10, timeout=30)
        truncated = loop[:50_000]
        board.load(hashlib.sha256(truncated).hexdigest(), truncated)
        with pytest.raises(FirmwareError, match="board answered: FPGA did not configure: the bitstream is"):
            board.evaluate(hashlib.sha256(truncated).hexdigest(), 1_000_000, 10, timeout=30)
        assert board.status()["counting"] is False  # the board serves on


def test_an_unplug_kills_the_running_simulation_and_the_touch_still_works(
    tmp_path: Path, tmp_path_factory
) -> None:
    loop = session_loop(tmp_path_factory).bin.read_bytes()
    sha = hashlib.sha256(loop).hexdigest()
    rack, events, serial_number, device = start_pulsecount(tmp_path / "virtual", deadline=120)
    with rack:
        with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
            board = PulseCountBoard(port)
            board.load(sha, loop)
            board.start_evaluate(sha, 1_000_000, 10)
            wait_for(lambda: vvp_processes(rack), 30, "the circuit to run")
            rack.request("unplug", serial=serial_number)
            wait_for(lambda: not vvp_processes(rack), 5, "the simulation to be killed")
        events.expect("remove", "tty", serial_number)
        rack.request("plug", serial=serial_number)
        device = events.expect("add", "tty", serial_number)
        serial.Serial(device["devname"], 1200).close()  # the 1200-baud touch reaches this firmware too
        events.expect("remove", "tty", serial_number)
        events.expect("add", "block", serial_number)
