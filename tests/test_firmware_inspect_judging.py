"""`picofleet firmware inspect` judges a binary file that is no bitstream as a `.bin` (issue #13, item 13).

Random bytes that happen to start with white space and a dot used to be read as IceStorm text:
``random.bin`` was refused with "byte 5 is not UTF-8 text", as if it were an ``.asc``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from picofleet.cli import main
from picofleet.firmware.formats import bitstream
from tests.helpers.fpga import FpgaBuild

# what a random file may start with: white space, a dot, then binary
RANDOM_BYTES = b"\n\n\t .\xff\x00\x9c" + bytes(range(256)) * 8
PREAMBLE_REASON = "not the header FF 00 or the preamble 7E AA 99 7E"


def inspect_failure(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """`picofleet firmware inspect PATH`: exit 1, nothing on stdout, one line on stderr."""
    status = main(["firmware", "inspect", str(path)])
    out, err = capsys.readouterr()
    assert (status, out) == (1, ""), err
    assert len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("name", ["random.bin", "random.BIN", "random", "random.dat"])
def test_binary_that_is_no_bitstream_is_refused_as_a_bin(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(RANDOM_BYTES)
    line = inspect_failure(capsys, path)
    assert line.startswith(f"picofleet firmware: {path}: not a valid iCE40 bitstream (.bin): "), line
    assert PREAMBLE_REASON in line and "UTF-8" not in line and ".asc" not in line, line


def test_a_file_named_bin_is_judged_as_a_bin_even_when_it_is_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.bin"
    path.write_text(".comment not a bitstream\n")
    assert PREAMBLE_REASON in inspect_failure(capsys, path)


def test_an_asc_with_a_bad_byte_is_still_judged_by_its_name(
    tmp_path: Path, counter: FpgaBuild, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.asc"
    path.write_bytes(counter.asc.read_bytes().replace(b".device 5k", b".device 5k\n\xff", 1))
    line = inspect_failure(capsys, path)
    assert "not a valid iCE40 bitstream (.asc text): line 3: byte" in line, line


def test_real_bitstreams_and_text_keep_their_kind(counter: FpgaBuild) -> None:
    assert bitstream.detect_kind(counter.asc.read_bytes()) == "ice40-asc"
    assert bitstream.detect_kind(counter.bin.read_bytes()) == "ice40-bin"
    assert bitstream.detect_kind(RANDOM_BYTES) is None
    # a character cut by the end of the 512 bytes looked at is still text
    assert bitstream.detect_kind(b" " * 10 + ".comment é\n".encode() * 200) == "ice40-asc"
