"""Example pulse-count circuits for the pico2-ice's iCE40UP5K, built with yosys, nextpnr-ice40 and icepack.

The circuits of docs/hardware.md: clocked by the FPGA clock pin 35 (CLK), their pulses on pin 27
(ICE_27), with iCEFARM's constraint file. A divide-by-N counter gives exactly
``clock_hz * window_ms / 1000 / N`` rising edges in a window, which is what makes it a good
first evaluation (the demo builds two; the tests check those counts through the whole path)::

    build(Path("circuits/div16"), counter_verilog(16))   # -> Circuit(asc=..., bin=...)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PCF", "TOOLS", "Circuit", "CircuitError", "build", "counter_verilog", "missing_tools"]

TOOLS = ("yosys", "nextpnr-ice40", "icepack")
"""The programs a build runs (Debian packages yosys, nextpnr-ice40, fpga-icestorm)."""
PCF = "set_io -nowarn CLK 35\nset_io -nowarn ICE_27 27\n"
"""The constraint file: the pins every pulse-count circuit uses."""
BUILD_TIMEOUT = 120.0
"""Seconds one tool may run."""


class CircuitError(Exception):
    """A build step failed (the message names the command and carries its output)."""


@dataclass(frozen=True)
class Circuit:
    """The files of one build: ``asc`` from nextpnr, ``bin`` packed by icepack."""

    directory: Path
    verilog: Path
    pcf: Path
    asc: Path
    bin: Path


def missing_tools() -> list[str]:
    """The tools of :data:`TOOLS` not on PATH."""
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
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CircuitError(f"{command[0]} could not run: {error}") from None
    if done.returncode != 0:
        raise CircuitError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build(directory: Path, verilog: str, *, ignore_loops: bool = False) -> Circuit:
    """Synthesise, place and route and pack the Verilog module ``top`` in ``directory``.

    ``ignore_loops`` lets nextpnr place a circuit with a combinational loop (one that never
    settles). Raises :class:`CircuitError` when a tool fails or is missing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    source, pcf = directory / "top.v", directory / "top.pcf"
    source.write_text(verilog)
    pcf.write_text(PCF)
    _run(["yosys", "-q", "-p", "synth_ice40 -top top -json top.json", "top.v"], directory)
    place_and_route = ["nextpnr-ice40", "-q", "--up5k", "--package", "sg48", "--pcf", "top.pcf"]
    if ignore_loops:
        place_and_route.append("--ignore-loops")
    _run([*place_and_route, "--json", "top.json", "--asc", "top.asc"], directory)
    _run(["icepack", "top.asc", "top.bin"], directory)
    return Circuit(directory, source, pcf, directory / "top.asc", directory / "top.bin")
