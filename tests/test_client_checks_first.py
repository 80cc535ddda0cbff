"""A bad file stops the Python client's programs before any board is reserved (issue #13, item 14).

examples/evaluate_bitstreams.py reserved and prepared two boards (the pulse-count firmware flashed
onto them), and only then found that a file was missing or no bitstream. Now the files are read
and checked first (``load_bitstreams``, as ``picofleet evaluate`` does): the gateway never hears
of the program, its boards keep their firmware.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from picofleet.client import BitstreamFileError, load_bitstreams
from tests.helpers.fpga import FpgaBuild
from tests.helpers.gateway import GatewayProcess, running_gateway

EXAMPLE = Path(__file__).parent.parent / "examples" / "evaluate_bitstreams.py"
NAME = "checks-first"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the two virtual pico2-ice boards the example reserves."""
    with running_gateway(tmp_path_factory.mktemp("checks-first") / "data", 2) as process:
        yield process


def name_was_never_used(gateway: GatewayProcess) -> bool:
    """Whether no reservation was ever made under NAME: a request naming a board that does not
    exist is then refused for the board (404), not for the name (403); it changes nothing."""
    answer = httpx.post(
        f"{gateway.url}/v1/reservations", json={"name": NAME, "serials": ["NO-SUCH-BOARD"]}, timeout=10
    )
    assert answer.status_code in (403, 404), answer.text
    return answer.status_code == 404


def run_example(gateway: GatewayProcess, tmp_path: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--gateway", gateway.url, "--name", NAME, *files],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PICOFLEET_TOKENS": str(tmp_path / "tokens.json")},
    )


@pytest.mark.timeout(240)
def test_the_example_refuses_bad_files_before_reserving(
    gateway: GatewayProcess, counter: FpgaBuild, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bitstream\n")
    firmware = {device["LocalUUID"]: device["FirmwareVersion"] for device in gateway.devices()}
    for bad, reason in (
        (str(tmp_path / "missing.asc"), f"{tmp_path / 'missing.asc'}: No such file or directory"),
        (str(notes), f"{notes} is not a valid iCE40 bitstream: not an iCE40 .bin or .asc bitstream"),
    ):
        done = run_example(gateway, tmp_path, str(counter.bin), bad)
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr.splitlines() == [f"evaluate_bitstreams: {reason}"]
    assert not (tmp_path / "tokens.json").exists()
    assert {device["LocalUUID"]: device["FirmwareVersion"] for device in gateway.devices()} == firmware
    assert name_was_never_used(gateway)


def test_load_bitstreams_checks_every_file_without_a_gateway(counter: FpgaBuild, tmp_path: Path) -> None:
    uf2_file = tmp_path / "app.uf2"
    uf2_file.write_bytes(b"UF2\n\x57\x51\x5d\x9e" + bytes(504))
    assert [label for _, label in load_bitstreams([counter.asc, counter.bin.read_bytes()])] == [
        str(counter.asc),
        "bytes #1",
    ]
    with pytest.raises(BitstreamFileError, match=r"app\.uf2 is a UF2 firmware image, not an iCE40 bitstream"):
        load_bitstreams([counter.asc, uf2_file])
    with pytest.raises(BitstreamFileError, match=r"bytes #0 is not a valid iCE40 bitstream: .*file ends"):
        load_bitstreams([counter.bin.read_bytes()[:1000]])
