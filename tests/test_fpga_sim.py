"""The simulated FPGA of virtual boards (plugins/virtual/fpga.py) with real iCE40 bitstreams."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest

from picofleet.plugins.virtual import fpga
from picofleet.plugins.virtual.fpga import CircuitCache, FpgaError, FpgaSimulator, configure_seconds
from tests.helpers.fpga import session_counter, session_loop
from tests.helpers.wait import wait_for

SIM_TOOLS = ("iceunpack", "icebox_vlog", "iverilog", "vvp")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> CircuitCache:
    """One circuit cache for the module's tests (each circuit is compiled once)."""
    missing = [tool for tool in SIM_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages fpga-icestorm and iverilog)")
    return CircuitCache(tmp_path_factory.mktemp("fpga-cache"))


def result(simulator: FpgaSimulator, timeout: float = 30.0) -> int:
    """Poll the running count as the firmware does until it answers (its errors propagate)."""

    def answer() -> tuple[int] | None:
        pulses = simulator.count_result()
        return None if pulses is None else (pulses,)  # a count of 0 is an answer too

    return wait_for(answer, timeout, "a count", 0.005, fail_on=Exception)[0]


def count(simulator: FpgaSimulator, clock_hz: int, window_ms: int) -> int:
    """Start a count and wait for its result."""
    simulator.count_start(clock_hz, window_ms)
    return result(simulator)


def vvp_processes() -> list[psutil.Process]:
    """The vvp processes this test process started (directly or under timeout)."""
    return [child for child in psutil.Process().children(recursive=True) if child.name() == "vvp"]


@pytest.mark.parametrize(
    ("divide_by", "pulses"),
    [(16, 625), (4, 2500)],
)
def test_a_divider_gives_the_exact_pulse_count(tmp_path_factory, cache, divide_by: int, pulses: int) -> None:
    build = session_counter(tmp_path_factory, divide_by)
    simulator = FpgaSimulator(cache, mode="netlist")
    simulator.program(build.bin.read_bytes())
    assert count(simulator, 1_000_000, 10) == pulses


@pytest.mark.parametrize(
    ("clock_hz", "window_ms"),
    [
        (3_000_000, 7),  # a period of 333,333.3 ps: not a whole number of picoseconds
        (999_999, 3),  # 2,999.997 cycles in the window: 2,999 whole ones are simulated
        (48_000_000, 1),
    ],
)
def test_counts_are_exact_for_any_clock_and_window(tmp_path_factory, cache, clock_hz, window_ms) -> None:
    build = session_counter(tmp_path_factory, 16)
    simulator = FpgaSimulator(cache, mode="netlist")
    simulator.program(build.bin.read_bytes())
    cycles = clock_hz * window_ms // 1000
    assert count(simulator, clock_hz, window_ms) == (cycles + 8) // 16  # rises after clock 8, 24, ...


def test_the_answer_comes_no_earlier_than_the_window_ends(tmp_path_factory, cache) -> None:
    build = session_counter(tmp_path_factory, 16)
    simulator = FpgaSimulator(cache, mode="netlist")
    simulator.program(build.bin.read_bytes())
    started = time.monotonic()
    simulator.count_start(1_000, 400)
    assert simulator.count_result() is None
    assert result(simulator) == 25
    assert time.monotonic() - started >= 0.4


def test_a_cached_circuit_is_not_built_again(tmp_path_factory, tmp_path: Path, cache) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    first = CircuitCache(tmp_path / "cache")
    FpgaSimulator(first, mode="netlist").program(bitstream)
    assert first.builds == 1
    entry = tmp_path / "cache" / hashlib.sha256(bitstream).hexdigest()
    assert (entry / "circuit.vvp").is_file() and (entry / "chip.v").is_file()

    again = CircuitCache(tmp_path / "cache")  # as after a rack restart
    simulator = FpgaSimulator(again, mode="netlist")
    started = time.monotonic()
    simulator.program(bitstream)
    assert again.builds == 0
    assert time.monotonic() - started < 1.0  # the configure time (~85 ms), no conversion
    assert count(simulator, 1_000_000, 10) == 625
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [entry.name]  # no build left behind


def test_a_circuit_that_never_settles_is_killed_at_the_deadline(tmp_path_factory, cache) -> None:
    build = session_loop(tmp_path_factory)
    simulator = FpgaSimulator(cache, mode="netlist", deadline=2.0)
    simulator.program(build.bin.read_bytes())
    started = time.monotonic()
    simulator.count_start(1_000_000, 10)
    with pytest.raises(FpgaError, match=r"^circuit did not settle within 2 s$"):
        result(simulator)
    assert 2.0 <= time.monotonic() - started < 4.0
    wait_for(lambda: not vvp_processes(), 5, "vvp to be gone")


def test_a_simulation_too_slow_for_the_deadline_says_how_far_it_got(tmp_path_factory, cache) -> None:
    build = session_counter(tmp_path_factory, 16)
    simulator = FpgaSimulator(cache, mode="netlist", deadline=1.0)
    simulator.program(build.bin.read_bytes())
    simulator.count_start(48_000_000, 40)  # 1.92 million cycles: possible in 1 s at the fastest rate
    with pytest.raises(FpgaError, match=r"^the simulation did not finish within 1 s: \d+ of 1920000 clock"):
        result(simulator)


def test_a_count_that_cannot_finish_before_the_deadline_is_refused_at_once(tmp_path_factory, cache) -> None:
    build = session_counter(tmp_path_factory, 16)
    simulator = FpgaSimulator(cache, mode="netlist", deadline=20.0)
    simulator.program(build.bin.read_bytes())
    started = time.monotonic()
    with pytest.raises(FpgaError) as refused:
        simulator.count_start(48_000_000, 1000)  # the gateway's defaults: 48 million cycles
    assert time.monotonic() - started < 1.0  # not after the 20 s deadline
    assert str(refused.value) == (
        "the simulation would need ~24 s (48000000 clock cycles at most 2,000,000 cycles/s), more than "
        "the 20 s deadline: use a lower clock_hz or a shorter window_ms, or PICOFLEET_SIM_FPGA=timing"
    )
    assert not vvp_processes()
    assert count(simulator, 1_000_000, 10) == 625  # the board counts on


def test_stopping_a_count_kills_its_simulation(tmp_path_factory, cache) -> None:
    build = session_loop(tmp_path_factory)
    simulator = FpgaSimulator(cache, mode="netlist", deadline=60.0)
    simulator.program(build.bin.read_bytes())
    simulator.count_start(1_000_000, 10)
    wait_for(vvp_processes, 5, "vvp to run")
    simulator.stop()  # the board rebooted
    wait_for(lambda: not vvp_processes(), 5, "vvp to be gone")


def test_a_truncated_or_garbage_bitstream_does_not_configure(tmp_path_factory, cache) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    simulator = FpgaSimulator(cache, mode="netlist")
    with pytest.raises(FpgaError, match=r"^FPGA did not configure: the bitstream is truncated") as raised:
        simulator.program(bitstream[:50_000])
    assert "\n" not in str(raised.value)
    with pytest.raises(FpgaError, match=r"^FPGA did not configure: no iCE40 sync word"):
        simulator.program(b"\x00" * 1000)
    assert count(simulator, 1_000_000, 10) == 0  # an unconfigured FPGA drives nothing
    with pytest.raises(FpgaError, match=r"^FPGA did not configure: the bitstream is truncated"):
        simulator.program(bitstream[:50_000])  # the refusal is cached: the same answer again


def test_boards_asking_for_the_same_circuit_at_once_build_it_once(tmp_path_factory, tmp_path: Path) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    boards = [CircuitCache(tmp_path / "cache") for _ in range(4)]  # each board of a rack has its own
    circuits: list[fpga.Circuit] = []
    threads = [threading.Thread(target=lambda c=c: circuits.append(c.get(bitstream))) for c in boards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(circuits) == 4 and len(set(circuits)) == 1
    assert sum(board.builds for board in boards) == 1
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [circuits[0].sha256]  # no lock left


def test_at_most_two_circuits_are_built_at_once(tmp_path: Path, monkeypatch) -> None:
    running, most = 0, 0
    guard = threading.Lock()

    def slow_build(bitstream: bytes, directory: Path) -> fpga.Circuit:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.2)  # a conversion keeps a core busy for seconds
        with guard:
            running -= 1
        raise FpgaError("FPGA simulation failed: the test's stand-in builds nothing")

    monkeypatch.setattr(fpga, "build_circuit", slow_build)
    bitstreams = [fpga.SYNC_WORD + bytes([n]) for n in range(6)]  # six boards, six different circuits
    failures: list[str] = []

    def configure(bitstream: bytes) -> None:
        try:
            CircuitCache(tmp_path / "cache").get(bitstream)
        except FpgaError as error:
            failures.append(str(error))

    threads = [threading.Thread(target=configure, args=(bitstream,)) for bitstream in bitstreams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(failures) == 6
    assert most == fpga.BUILDS_AT_ONCE == 2


def test_a_prepared_bitstream_is_built_in_the_background(tmp_path_factory, tmp_path: Path) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    cache = CircuitCache(tmp_path / "cache")
    simulator = FpgaSimulator(cache, mode="netlist")
    started = time.monotonic()
    simulator.prepare(bitstream)  # the firmware received it: it may be programmed soon
    simulator.prepare(bitstream)  # (twice: still one build)
    assert time.monotonic() - started < 0.5  # the firmware is not held up
    entry = tmp_path / "cache" / hashlib.sha256(bitstream).hexdigest()
    wait_for(lambda: (entry / "circuit.json").is_file(), 60, "the circuit to be built")
    started = time.monotonic()
    simulator.program(bitstream)
    assert time.monotonic() - started < 1.0  # built already: the configure time only
    assert cache.builds == 1
    assert count(simulator, 1_000_000, 10) == 625


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("kill -9 $$", r"^FPGA simulation failed: iverilog was killed by signal 9$"),  # out of memory
        ("echo 'iverilog: No space left on device' >&2; exit 1", r"iverilog cannot compile the netlist"),
    ],
)
def test_a_tool_failing_for_its_own_reasons_is_not_cached(
    tmp_path_factory, tmp_path: Path, monkeypatch, script: str, reason: str
) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    if shutil.which("iverilog") is None:
        pytest.skip("iverilog not installed")
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "iverilog").write_text(f"#!/bin/sh\n{script}\n")
    (broken / "iverilog").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(FpgaError, match=reason):
        FpgaSimulator(CircuitCache(tmp_path / "cache"), mode="netlist").program(bitstream)
    monkeypatch.undo()  # iverilog works again

    again = CircuitCache(tmp_path / "cache")  # as after a rack restart
    simulator = FpgaSimulator(again, mode="netlist")
    simulator.program(bitstream)
    assert again.builds == 1
    assert count(simulator, 1_000_000, 10) == 625


def test_the_timing_model_sleeps_and_reports_a_fixed_number(tmp_path_factory, tmp_path: Path) -> None:
    bitstream = session_counter(tmp_path_factory, 16).bin.read_bytes()
    simulator = FpgaSimulator(CircuitCache(tmp_path / "cache"), mode="timing")
    started = time.monotonic()
    simulator.program(bitstream)
    configured = time.monotonic() - started
    assert configure_seconds(len(bitstream)) == pytest.approx(0.0846, abs=0.001)
    assert configure_seconds(len(bitstream)) <= configured < 1.0
    started = time.monotonic()
    pulses = count(simulator, 48_000_000, 300)
    assert time.monotonic() - started >= 0.3
    assert pulses == int(hashlib.sha256(bitstream).hexdigest()[:6], 16) % 1000
    assert not (tmp_path / "cache").exists()  # no netlist was built


def test_the_mode_and_deadline_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PICOFLEET_SIM_FPGA", "timing")
    monkeypatch.setenv("PICOFLEET_SIM_FPGA_DEADLINE", "7.5")
    simulator = FpgaSimulator(CircuitCache(tmp_path))
    assert (simulator.mode, simulator.deadline) == ("timing", 7.5)
    monkeypatch.setenv("PICOFLEET_SIM_FPGA", "")
    monkeypatch.setenv("PICOFLEET_SIM_FPGA_DEADLINE", "soon")
    simulator = FpgaSimulator(CircuitCache(tmp_path))
    assert (simulator.mode, simulator.deadline) == ("netlist", 20.0)
