"""iCE40 bitstreams (picofleet.firmware.formats.bitstream) on real up5k builds from yosys + nextpnr-ice40.

The counter of docs/hardware.md is built once per session; its ``.bin`` from running icepack
directly is the reference for :func:`pack_asc` and the material for the corruption tests.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.bitstream import pack_asc
from picofleet.firmware.formats.ice40 import ICEPACK_UP5K_SIZE, BitstreamError
from picofleet.firmware.formats.ice40_asc import read_asc
from picofleet.firmware.formats.ice40_bin import PREAMBLE, read_bin
from picofleet.firmware.formats.inspect import inspect_bytes
from tests.helpers.fpga import FpgaBuild, icepack

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW_CALL = 5.0  # seconds; a reader taking longer on a ~100 KB input counts as a hang


@pytest.fixture(scope="session")
def real_bin(counter: FpgaBuild) -> bytes:
    return counter.bin.read_bytes()


@pytest.fixture(scope="session")
def real_asc(counter: FpgaBuild) -> str:
    return counter.asc.read_text()


def refused(data: bytes) -> BitstreamError:
    with pytest.raises(BitstreamError) as caught:
        read_bin(data)
    assert "\n" not in str(caught.value)
    return caught.value


# -- real builds ------------------------------------------------------------------------------


def test_pack_asc_is_byte_identical_to_icepack(real_asc: str, real_bin: bytes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    packed = pack_asc(real_asc)
    assert packed == real_bin
    assert packed == icepack(real_asc.encode(), tmp_path)


def test_pack_asc_keeps_the_comment_like_icepack(real_asc: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = real_asc.replace(".comment from next-pnr\n", ".comment from next-pnr\nhello\nworld 2\n", 1)
    packed = pack_asc(text)
    assert packed == icepack(text.encode(), tmp_path)
    assert packed.startswith(b"\xff\x00hello\x00world 2\x00\x00\xff" + PREAMBLE)
    parsed = read_bin(packed)
    assert parsed.comment == "hello\nworld 2"
    assert read_asc(text).comment == "from next-pnr\nhello\nworld 2"


def test_real_bin_is_a_valid_up5k_bitstream(real_bin: bytes) -> None:
    parsed = read_bin(real_bin)
    assert parsed.device == "up5k"
    assert parsed.size == len(real_bin) == ICEPACK_UP5K_SIZE == 104_090
    assert real_bin[:8] == b"\xff\x00\x00\xff" + PREAMBLE
    assert parsed.bank_rows("cram") == [336, 176, 336, 176]
    assert parsed.bank_rows("bram") == [256, 256, 256, 256]
    described = parsed.describe()
    assert described["cram"]["bytes"] == 4 * 692 * (336 + 176) // 8 // 2
    assert described["bram"]["bytes"] == 2 * (160 + 80) * 256 // 8
    assert parsed.crc_checks == 1
    assert (parsed.freqrange, parsed.warmboot, parsed.nosleep) == ("low", "enabled", "disabled")


def test_real_asc_is_a_valid_up5k_asc(real_asc: str) -> None:
    parsed = read_asc(real_asc)
    assert parsed.device == "up5k"
    assert sum(parsed.tiles.values()) == 828
    assert parsed.tiles["logic"] == 660 and parsed.tiles["io"] == 48
    assert read_asc(real_asc.encode()) == parsed
    info = inspect_bytes(real_asc.encode())
    assert (info["kind"], info["device"], info["chip"]) == ("ice40-asc", "up5k", "iCE40UP5K")


# -- truncated and corrupted .bin -------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [1, 2, 3, 4, 6, 8, 20, 5_000, 29_100, 60_000, 100_000, 104_000, 104_086, 104_087, 104_088, 104_089],
)
def test_truncated_bin_is_refused_at_its_end(real_bin: bytes, cut: int) -> None:
    error = refused(real_bin[:cut])
    assert error.offset == cut
    assert "truncated" in str(error)
    assert str(error).startswith(f"offset {cut} ")


def test_flipped_data_byte_fails_the_crc_check(real_bin: bytes) -> None:
    for at in (28, 50_000, 100_000):  # CRAM bank 0, CRAM bank 2, BRAM
        corrupted = bytearray(real_bin)
        corrupted[at] ^= 0x10
        error = refused(bytes(corrupted))
        assert "CRC check failed" in str(error)
        assert error.offset == len(real_bin) - 6  # the CRC check command


def test_flipped_command_bytes_are_refused_naming_the_offset(real_bin: bytes) -> None:
    # offsets 15..17 are "62 02 B3" (CRAM width 692), 26..27 "01 01" (CRAM data), the end "01 06 00"
    cases = {
        16: (26, "CRAM bank width 4788 is not the up5k's 692"),
        27: (26, "unknown command 0x01 with payload 0x0"),
        len(real_bin) - 2: (len(real_bin) - 3, "unknown command 0x01 with payload 0x16"),
        len(real_bin) - 4: (len(real_bin) - 6, "CRC check failed"),
    }
    for at, (offset, reason) in cases.items():
        corrupted = bytearray(real_bin)
        corrupted[at] ^= 0x10 if at != 27 else 0x01
        error = refused(bytes(corrupted))
        assert (error.offset, reason in str(error)) == (offset, True), str(error)


def test_bitstream_for_another_device_is_named(real_bin: bytes) -> None:
    corrupted = bytearray(real_bin)
    corrupted[16:18] = (332 - 1).to_bytes(2, "big")  # the iCE40 1k's CRAM width
    error = refused(bytes(corrupted))
    assert "CRAM bank width 332 is an iCE40 1k's, not the up5k's 692" in str(error)
    assert error.offset == 26


def test_wrong_preamble_is_refused(real_bin: bytes) -> None:
    error = refused(real_bin[:7] + b"\x7f" + real_bin[8:])
    assert error.offset == 4
    assert "expected the preamble 7E AA 99 7E after the header, got 7E AA 99 7F" in str(error)
    error = refused(b"\x12\x34" + real_bin[2:])
    assert error.offset == 0 and "not an iCE40 bitstream" in str(error)


def test_bin_without_header_and_with_zero_padding_is_valid(real_bin: bytes) -> None:
    assert read_bin(real_bin[4:]).header == b""
    assert read_bin(real_bin + b"\x00" * 16).size == len(real_bin) + 16
    error = refused(real_bin + b"\x00\x01")
    assert error.offset == len(real_bin) + 1 and "after the wakeup command" in str(error)


def test_empty_files_are_refused() -> None:
    for reader in (read_bin, read_asc):
        with pytest.raises(BitstreamError, match=r"^empty file$"):
            reader(b"")
    with pytest.raises(BitstreamError, match=r"^empty file$"):
        read_asc("")
    with pytest.raises(BitstreamError, match=r"^empty file$"):
        inspect_bytes(b"")


# -- .asc problems ----------------------------------------------------------------------------


def test_asc_for_another_device_is_refused(real_asc: str) -> None:
    text = real_asc.replace(".device 5k", ".device 1k", 1)
    for attempt in (lambda: read_asc(text), lambda: pack_asc(text)):
        with pytest.raises(BitstreamError) as caught:
            attempt()
        assert str(caught.value) == (
            "line 2: device '1k' is not up5k: the pico2-ice's FPGA is an iCE40UP5K (.device 5k)"
        )


def test_truncated_and_edited_asc_are_refused(real_asc: str) -> None:
    lines = real_asc.splitlines(keepends=True)
    cut_at_tile = next(i for i, line in enumerate(lines) if line.startswith(".logic_tile 12 17"))
    cases = {
        "".join(lines[:cut_at_tile]): "is missing (truncated?)",
        real_asc[: len(real_asc) // 2]: "row",
        real_asc.replace("\n.device 5k\n", "\n", 1): ".io_tile before the .device statement",
        real_asc.replace(".io_tile 1 0\n", ".logic_tile 1 0\n", 1): "but the up5k's tile there is io",
        real_asc.replace(".sym ", ".nonsense ", 1): "unknown statement '.nonsense'",
        real_asc + ".logic_tile 1 1\n": "a second .logic_tile 1 1",
        real_asc + ".extra_bit 1 0 176\n": "outside the up5k's CRAM banks",
    }
    for text, reason in cases.items():
        with pytest.raises(BitstreamError) as caught:
            read_asc(text)
        assert reason in str(caught.value) and str(caught.value).startswith("line ")


def test_pack_asc_without_icepack_says_so(real_asc: str, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BitstreamError, match="icepack is not installed"):
        pack_asc(real_asc)
    broken = tmp_path / "icepack"
    broken.write_text("#!/bin/sh\necho 'Error: something went wrong' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(BitstreamError, match=r"^icepack failed \(exit 3\): Error: something went wrong$"):
        pack_asc(real_asc, icepack=str(broken))


# -- properties: any input parses or raises BitstreamError, quickly ---------------------------


def only_bitstream_errors(data: bytes) -> None:
    for reader in (read_bin, read_asc):
        started = time.monotonic()
        try:
            reader(data)
        except BitstreamError as error:
            assert str(error) and "\n" not in str(error)
        assert time.monotonic() - started < SLOW_CALL
    try:
        inspect_bytes(data)
    except (BitstreamError, uf2.UF2Error) as error:
        assert str(error) and "\n" not in str(error)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_parse_or_raise_bitstream_error(data: bytes) -> None:
    only_bitstream_errors(data)


@FUZZ
@given(st.binary(max_size=64).map(lambda tail: b"\xff\x00\x00\xff" + PREAMBLE + tail))
def test_arbitrary_command_streams_parse_or_raise(data: bytes) -> None:
    only_bitstream_errors(data)


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """The real .bin flipped, truncated, or with a slice of itself spliced in elsewhere."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "byte"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        else:
            start = draw(st.integers(0, len(data) - 1))
            length = draw(st.integers(1, 64))
            data[at:at] = data[start : start + length]
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_mutated_real_bin_parses_or_raises(real_bin: bytes, data: st.DataObject) -> None:
    only_bitstream_errors(data.draw(mutations(real_bin)))


@FUZZ
@given(data=st.data())
def test_any_bit_flip_after_the_crc_reset_is_refused(real_bin: bytes, data: st.DataObject) -> None:
    """The CRC runs from the reset command (offset 10, 11) to the check: every later flip is caught."""
    at = data.draw(st.integers(12, len(real_bin) - 1))
    corrupted = bytearray(real_bin)
    corrupted[at] ^= 1 << data.draw(st.integers(0, 7))
    refused(bytes(corrupted))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_asc_read_asc_accepts_is_packed_by_icepack(real_asc: str, data: st.DataObject) -> None:
    """read_asc is no looser than icepack: an edited .asc it accepts packs (and reads back)."""
    text = real_asc
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text) - 1))
        text = text[:at] + data.draw(st.sampled_from("01.\n x5a")) + text[at + 1 :]
    try:
        read_asc(text)
    except BitstreamError:
        return
    read_bin(pack_asc(text))
