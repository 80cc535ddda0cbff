"""`picofleet firmware inspect` and `picofleet firmware pack` on UF2 files and real iCE40 bitstreams."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picofleet.cli import main
from picofleet.firmware.formats import ice40_asc, image, uf2
from picofleet.firmware.formats import inspect as firmware_inspect
from tests.helpers.fpga import FpgaBuild, icepack


def picofleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def inspect_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict:
    status, out, err = picofleet(capsys, "firmware", "inspect", str(path), "--json")
    assert (status, err) == (0, "")
    return json.loads(out)


def one_line_failure(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = picofleet(capsys, *argv)
    assert status == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("picofleet firmware: ")
    return lines[0]


def test_inspect_uf2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = uf2.from_binary(
        image.make_app_image("picofleet-app", "2.0.0", "pico2-ice"), 0x10000000, uf2.RP2350_ARM_S
    )
    path = tmp_path / "app.uf2"
    path.write_bytes(data)
    info = inspect_json(capsys, path)
    assert info["kind"] == "uf2"
    assert (info["chip"], info["family"], info["families"]) == ("RP2350", "rp2350-arm-s", ["rp2350-arm-s"])
    assert (info["size"], info["blocks"], info["payload_bytes"]) == (len(data), 16, 4096)
    assert info["address_range"] == [0x10000000, 0x10001000]
    assert info["sha256"] == hashlib.sha256(data).hexdigest()

    status, out, err = picofleet(capsys, "firmware", "inspect", str(path))
    assert (status, err) == (0, "")
    assert "UF2, RP2350 (family rp2350-arm-s)" in out
    assert "0x10000000..0x10001000" in out and info["sha256"] in out


def test_inspect_asc_and_bin(counter: FpgaBuild, capsys: pytest.CaptureFixture[str]) -> None:
    asc = inspect_json(capsys, counter.asc)
    raw = counter.asc.read_bytes()
    assert (asc["kind"], asc["family"], asc["chip"], asc["device"]) == (
        "ice40-asc",
        "ice40",
        "iCE40UP5K",
        "up5k",
    )
    assert (asc["size"], asc["sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert asc["comment"] == "from next-pnr"

    binary = inspect_json(capsys, counter.bin)
    packed = counter.bin.read_bytes()
    assert (binary["kind"], binary["family"], binary["device"]) == ("ice40-bin", "ice40", "up5k")
    assert (binary["size"], binary["sha256"]) == (104_090, hashlib.sha256(packed).hexdigest())
    assert [bank["rows"] for bank in binary["cram"]["banks"]] == [336, 176, 336, 176]
    assert binary["bram"]["initialized"] is True

    status, out, _ = picofleet(capsys, "firmware", "inspect", str(counter.bin))
    assert status == 0 and "iCE40 bitstream (.bin), iCE40UP5K (up5k)" in out


def test_invalid_files_exit_1_with_one_line(
    tmp_path: Path, counter: FpgaBuild, capsys: pytest.CaptureFixture[str]
) -> None:
    good = uf2.from_binary(bytes(range(256)) * 8, 0x10000000, uf2.RP2040)
    bad_block = bytearray(good)
    bad_block[3 * 512 + 508] ^= 0xFF  # block 3's end magic
    cases = {
        "cut.uf2": (good[:-100], "not a valid UF2 file: file size 3996 is not a multiple of 512"),
        "magic.uf2": (bytes(bad_block), "not a valid UF2 file: block 3: bad magic end"),
        "cut.bin": (
            counter.bin.read_bytes()[:50_000],
            "offset 50000 (0xc350): the file ends inside the CRAM",
        ),
        "other.asc": (counter.asc.read_bytes().replace(b".device 5k", b".device 1k"), "line 2: device '1k'"),
        "garbage": (b"hello world", "not a UF2 file, an iCE40 .asc or an iCE40 .bin"),
        "empty": (b"", "empty file"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for extra in ((), ("--json",)):
            line = one_line_failure(capsys, "firmware", "inspect", str(path), *extra)
            assert line.startswith(f"picofleet firmware: {path}: ") and reason in line, line
    line = one_line_failure(capsys, "firmware", "inspect", str(tmp_path / "missing.uf2"))
    assert "No such file or directory" in line


def test_pack_round_trip_equals_icepack(tmp_path: Path, counter: FpgaBuild, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out" / "top.bin"
    out.parent.mkdir()
    status, stdout, err = picofleet(capsys, "firmware", "pack", str(counter.asc), str(out))
    assert (status, err) == (0, "")
    assert out.read_bytes() == icepack(counter.asc.read_bytes(), tmp_path) == counter.bin.read_bytes()
    assert f"{out}: 104090 bytes" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["top.bin"]  # no temporary file left


def test_pack_refuses_invalid_input_with_one_line(
    tmp_path: Path, counter: FpgaBuild, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.bin"
    other = tmp_path / "other.asc"
    other.write_bytes(counter.asc.read_bytes().replace(b".device 5k", b".device 1k"))
    line = one_line_failure(capsys, "firmware", "pack", str(other), str(out))
    assert "not a valid iCE40 .asc: line 2: device '1k' is not up5k" in line
    line = one_line_failure(capsys, "firmware", "pack", str(counter.bin), str(out))
    assert "is already an iCE40 .bin, not an .asc to pack" in line
    assert not out.exists()

    monkeypatch.setenv("PATH", str(tmp_path))  # no icepack
    line = one_line_failure(capsys, "firmware", "pack", str(counter.asc), str(out))
    assert "icepack is not installed" in line
    assert not out.exists()


def test_console_script_exit_status_and_stderr(tmp_path: Path) -> None:
    """The real entry point: exit 1 and exactly one line on stderr."""
    path = tmp_path / "garbage.uf2"
    path.write_bytes(b"\x55\x46\x32\x0a" + b"\x00" * 100)  # UF2 magic, then nonsense
    done = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "firmware", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"picofleet firmware: {path}: not a valid UF2 file: file size 104")


def test_inspect_refuses_a_file_over_the_bound_without_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.bin"
    with path.open("wb") as handle:
        handle.truncate(firmware_inspect.MAX_INSPECT_SIZE + 1)  # sparse: no disk space, nothing to read
    started = time.monotonic()
    for extra in ((), ("--json",)):
        line = one_line_failure(capsys, "firmware", "inspect", str(path), *extra)
        assert line == (
            f"picofleet firmware: {path}: the file is more than {firmware_inspect.MAX_INSPECT_SIZE} bytes"
            " (no firmware is)"
        )
    assert time.monotonic() - started < 2


def test_inspect_reads_a_device_only_up_to_the_bound(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/zero has no size to stat and no end: read the bound + 1 byte, then refuse it."""
    monkeypatch.setattr(firmware_inspect, "MAX_INSPECT_SIZE", 1 << 20)  # keep the test light
    line = one_line_failure(capsys, "firmware", "inspect", "/dev/zero")
    assert line == f"picofleet firmware: /dev/zero: the file is more than {1 << 20} bytes (no firmware is)"


def test_pack_refuses_non_utf8_and_oversized_asc_with_one_line(
    tmp_path: Path, counter: FpgaBuild, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.bin"
    bad = tmp_path / "bad.asc"
    bad.write_bytes(counter.asc.read_bytes().replace(b".device 5k", b".device 5k\n\xff", 1))
    line = one_line_failure(capsys, "firmware", "pack", str(bad), str(out))
    assert "not a valid iCE40 .asc: line 3: byte" in line and "is not UTF-8 text" in line
    huge = tmp_path / "huge.asc"
    with huge.open("wb") as handle:
        handle.truncate(ice40_asc.MAX_ASC_SIZE + 1)
    line = one_line_failure(capsys, "firmware", "pack", str(huge), str(out))
    assert f"not a valid iCE40 .asc: the file is more than {ice40_asc.MAX_ASC_SIZE} bytes" in line
    assert not out.exists()


def test_find_descriptor_survives_deeply_nested_json() -> None:
    """A body of 60000 '[' makes json.loads recurse too deeply: no descriptor there, not a crash."""
    nested = b"[" * 60_000
    hostile = image.MAGIC + struct.pack("<H", len(nested)) + nested
    assert image.find_descriptor(hostile) is None
    assert image.find_descriptor(hostile + b"\0" * 16) is None
    good = image.make_descriptor("picofleet-app", "1.0.0", "pico2-ice")
    assert image.find_descriptor(hostile + good) == {
        "name": "picofleet-app",
        "version": "1.0.0",
        "board": "pico2-ice",
    }
