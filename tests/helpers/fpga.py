"""Build real iCE40UP5K bitstreams for the tests with yosys, nextpnr-ice40 and icepack.

The design is the pulse-count circuit of docs/hardware.md: a divide-by-N counter clocked by the
FPGA clock pin 35 (CLK) driving pin 27 (ICE_27), with the same constraint file as iCEFARM.
Builds are cached per process: each (directory, divider) is built once per test session.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("yosys", "nextpnr-ice40", "icepack")
PCF = "set_io -nowarn CLK 35\nset_io -nowarn ICE_27 27\n"
BUILD_TIMEOUT = 120.0

_built: dict[tuple[Path, int], FpgaBuild] = {}


@dataclass(frozen=True)
class FpgaBuild:
    """The files of one build: ``asc`` from nextpnr, ``bin`` from running icepack directly."""

    directory: Path
    verilog: Path
    pcf: Path
    asc: Path
    bin: Path


def missing_tools() -> list[str]:
    """The tools of :data:`TOOLS` not on PATH (Debian: yosys, nextpnr-ice40, fpga-icestorm)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def counter_verilog(divide_by: int = 16) -> str:
    """A counter whose top bit toggles every ``divide_by / 2`` clocks (``divide_by`` a power of 2)."""
    bits = divide_by.bit_length() - 1
    if bits < 1 or 1 << bits != divide_by:
        raise ValueError(f"divide_by {divide_by} is not a power of two >= 2")
    return (
        "module top(input CLK, output ICE_27);\n"
        f"  reg [{bits - 1}:0] counter = 0;\n"
        "  always @(posedge CLK) counter <= counter + 1;\n"
        f"  assign ICE_27 = counter[{bits - 1}];\n"
        "endmodule\n"
    )


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build_counter(directory: Path, divide_by: int = 16) -> FpgaBuild:
    """Synthesise, place and route and pack the counter in ``directory`` (once per process)."""
    key = (directory.resolve(), divide_by)
    if key in _built:
        return _built[key]
    directory.mkdir(parents=True, exist_ok=True)
    verilog, pcf = directory / "top.v", directory / "top.pcf"
    verilog.write_text(counter_verilog(divide_by))
    pcf.write_text(PCF)
    _run(["yosys", "-q", "-p", "synth_ice40 -top top -json top.json", "top.v"], directory)
    place_and_route = ["nextpnr-ice40", "-q", "--up5k", "--package", "sg48", "--pcf", "top.pcf"]
    _run([*place_and_route, "--json", "top.json", "--asc", "top.asc"], directory)
    _run(["icepack", "top.asc", "top.bin"], directory)
    build = FpgaBuild(directory, verilog, pcf, directory / "top.asc", directory / "top.bin")
    _built[key] = build
    return build


def loop_verilog() -> str:
    """A circuit that never settles once clocked: a LUT inverting its own output (a ring of one).

    A register switches the loop on at the first clock edge, so the netlist starts from a known
    level (an inverter of ``x`` is ``x``: a ring running from time 0 would just stay unknown).
    """
    return (
        "module top(input CLK, output ICE_27);\n"
        "  reg enable = 0;\n"
        "  always @(posedge CLK) enable <= 1;\n"
        "  wire ring;\n"
        "  SB_LUT4 #(.LUT_INIT(16'h4444))\n"
        "    inverter (.O(ring), .I0(ring), .I1(enable), .I2(1'b0), .I3(1'b0));\n"
        "  assign ICE_27 = ring;\n"
        "endmodule\n"
    )


def build_loop(directory: Path) -> FpgaBuild:
    """Build :func:`loop_verilog` in ``directory`` (nextpnr told to ignore the loop in its timing)."""
    key = (directory.resolve(), 0)
    if key in _built:
        return _built[key]
    directory.mkdir(parents=True, exist_ok=True)
    verilog, pcf = directory / "top.v", directory / "top.pcf"
    verilog.write_text(loop_verilog())
    pcf.write_text(PCF)
    _run(["yosys", "-q", "-p", "synth_ice40 -top top -json top.json", "top.v"], directory)
    place_and_route = ["nextpnr-ice40", "-q", "--up5k", "--package", "sg48", "--pcf", "top.pcf"]
    _run([*place_and_route, "--ignore-loops", "--json", "top.json", "--asc", "top.asc"], directory)
    _run(["icepack", "top.asc", "top.bin"], directory)
    build = FpgaBuild(directory, verilog, pcf, directory / "top.asc", directory / "top.bin")
    _built[key] = build
    return build


def session_loop(tmp_path_factory: pytest.TempPathFactory) -> FpgaBuild:
    """The never-settling loop circuit, built once per test session (skips without the tools)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (./dev setup installs them)")
    return build_loop(tmp_path_factory.getbasetemp() / "fpga-loop")


def icepack(asc: bytes, directory: Path) -> bytes:
    """Run ``icepack IN OUT`` directly on files (the reference the tests compare against)."""
    source, target = directory / "reference.asc", directory / "reference.bin"
    source.write_bytes(asc)
    target.unlink(missing_ok=True)
    _run(["icepack", str(source), str(target)], directory)
    return target.read_bytes()


def session_counter(tmp_path_factory: pytest.TempPathFactory, divide_by: int = 16) -> FpgaBuild:
    """The counter built once per test session (under the session's base temporary directory).

    Skips the calling test, saying which tools are missing, when yosys, nextpnr-ice40 or icepack
    is not installed (``./dev setup`` installs them).
    """
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (Debian packages yosys, nextpnr-ice40, fpga-icestorm; "
            "./dev setup installs them)"
        )
    return build_counter(tmp_path_factory.getbasetemp() / f"fpga-counter-{divide_by}", divide_by)
