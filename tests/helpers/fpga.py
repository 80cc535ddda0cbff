"""Real iCE40UP5K bitstreams for the tests and benchmarks, built by the product's
:mod:`picofleet.firmware.circuits` (yosys, nextpnr-ice40, icepack): the one way a circuit is built.

The counter is the pulse-count circuit of docs/hardware.md: a divide-by-N counter clocked by the
FPGA clock pin 35 (CLK) driving pin 27 (ICE_27), with the same constraint file as iCEFARM.
Builds are cached per process: each directory is built once per test session.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from picofleet.firmware.circuits import PCF, TOOLS, Circuit, build, counter_verilog, missing_tools

__all__ = [
    "PCF",
    "TOOLS",
    "FpgaBuild",
    "build_counter",
    "counter_verilog",
    "icepack",
    "missing_tools",
    "session_counter",
    "session_loop",
]

BUILD_TIMEOUT = 120.0

FpgaBuild = Circuit
"""The files of one build (the product's :class:`~picofleet.firmware.circuits.Circuit`)."""

_built: dict[Path, FpgaBuild] = {}


def _build_once(directory: Path, verilog: str, *, ignore_loops: bool = False) -> FpgaBuild:
    """:func:`~picofleet.firmware.circuits.build` in ``directory``, once per process."""
    key = directory.resolve()
    if key not in _built:
        _built[key] = build(directory, verilog, ignore_loops=ignore_loops)
    return _built[key]


def _skip_without_tools() -> None:
    """Skip the calling test, naming the missing tools (``./dev setup`` installs them)."""
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (Debian packages yosys, nextpnr-ice40, fpga-icestorm; "
            "./dev setup installs them)"
        )


def build_counter(directory: Path, divide_by: int = 16) -> FpgaBuild:
    """Synthesise, place and route and pack the counter in ``directory`` (once per process)."""
    return _build_once(directory, counter_verilog(divide_by))


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


def session_counter(tmp_path_factory: pytest.TempPathFactory, divide_by: int = 16) -> FpgaBuild:
    """The counter built once per test session (under the session's base temporary directory).

    Skips the calling test, saying which tools are missing, when yosys, nextpnr-ice40 or icepack
    is not installed (``./dev setup`` installs them).
    """
    _skip_without_tools()
    return build_counter(tmp_path_factory.getbasetemp() / f"fpga-counter-{divide_by}", divide_by)


def session_loop(tmp_path_factory: pytest.TempPathFactory) -> FpgaBuild:
    """The never-settling loop circuit, built once per test session (skips without the tools;
    nextpnr is told to ignore the loop in its timing)."""
    _skip_without_tools()
    return _build_once(tmp_path_factory.getbasetemp() / "fpga-loop", loop_verilog(), ignore_loops=True)


def icepack(asc: bytes, directory: Path) -> bytes:
    """Run ``icepack IN OUT`` directly on files (the reference the tests compare against)."""
    source, target = directory / "reference.asc", directory / "reference.bin"
    source.write_bytes(asc)
    target.unlink(missing_ok=True)
    done = subprocess.run(
        ["icepack", str(source), str(target)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"icepack failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return target.read_bytes()
