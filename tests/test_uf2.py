"""Tests of the UF2 reader, validator and writer (picofleet.firmware.formats.uf2)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.uf2 import (
    BLOCK_SIZE,
    DATA_AREA,
    FLAG_FAMILY_ID_PRESENT,
    FLAG_NOT_MAIN_FLASH,
    MAGIC_END,
    MAGIC_START0,
    MAGIC_START1,
    PICO_ICE,
    RP2_ABSOLUTE,
    RP2_DATA,
    RP2040,
    RP2350_ARM_NS,
    RP2350_ARM_S,
    RP2350_RISCV,
    Block,
    UF2Error,
    UF2Image,
    accepted_by,
    family_name,
    from_binary,
    parse_block,
    read_uf2,
)

FLASH = 0x10000000

# Offsets of the header words, for mutating one field of a block.
MAGIC0_AT, MAGIC1_AT, FLAGS_AT, ADDR_AT, SIZE_AT, BLOCK_NO_AT, NUM_BLOCKS_AT, FAMILY_AT = range(0, 32, 4)
MAGIC_END_AT = 508


def make_block(
    *,
    addr: int,
    block_no: int = 0,
    num_blocks: int = 1,
    family: int | None = RP2040,
    payload: bytes | None = None,
    payload_size: int = 256,
    flags: int = 0,
    file_size: int = 0,
    magic0: int = MAGIC_START0,
    magic1: int = MAGIC_START1,
    magic_end: int = MAGIC_END,
) -> bytes:
    """Return one raw 512-byte block with exactly the given fields (no validation)."""
    if payload is None:
        payload = bytes((addr + i) & 0xFF for i in range(min(payload_size, DATA_AREA)))
    if family is not None:
        flags |= FLAG_FAMILY_ID_PRESENT
    word28 = family if family is not None else file_size
    header = struct.pack("<8I", magic0, magic1, flags, addr, payload_size, block_no, num_blocks, word28)
    data = payload.ljust(DATA_AREA, b"\x00")
    assert len(data) == DATA_AREA
    return header + data + struct.pack("<I", magic_end)


def make_image(
    count: int, *, family: int | None = RP2040, base: int = FLASH, payload_size: int = 256
) -> list[bytes]:
    """Return the blocks of a valid ``count``-block image at ``base`` (one group)."""
    return [
        make_block(
            addr=base + i * payload_size,
            block_no=i,
            num_blocks=count,
            family=family,
            payload_size=payload_size,
        )
        for i in range(count)
    ]


def set_word(blocks: list[bytes], index: int, offset: int, value: int) -> None:
    """Overwrite the u32 at ``offset`` of block ``index`` in place."""
    raw = bytearray(blocks[index])
    struct.pack_into("<I", raw, offset, value)
    blocks[index] = bytes(raw)


def expect_error(data: bytes, block: int | None, *fragments: str) -> UF2Error:
    """Assert that ``read_uf2(data)`` raises a UF2Error naming ``block`` and all ``fragments``."""
    with pytest.raises(UF2Error) as caught:
        read_uf2(data)
    error = caught.value
    message = str(error)
    assert error.block == block, message
    assert "\n" not in message
    if block is not None:
        assert message.startswith(f"block {block}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return error


def e10_file() -> bytes:
    """An RP2350 file as picotool writes it with the E10 workaround: ABSOLUTE 0-of-1, then ARM_S."""
    absolute = make_block(
        addr=0x10FFFF00, block_no=0, num_blocks=1, family=RP2_ABSOLUTE, payload=b"\xef" * 256
    )
    return absolute + b"".join(make_image(4, family=RP2350_ARM_S))


# --- constants and names ---------------------------------------------------------------------------


def test_constants_match_the_uf2_specification() -> None:
    assert (MAGIC_START0, MAGIC_START1, MAGIC_END) == (0x0A324655, 0x9E5D5157, 0x0AB16F30)
    assert (BLOCK_SIZE, DATA_AREA) == (512, 476)
    assert struct.pack("<I", MAGIC_START0) == b"UF2\n"
    assert (RP2040, RP2_ABSOLUTE, RP2_DATA) == (0xE48BFF56, 0xE48BFF57, 0xE48BFF58)
    assert (RP2350_ARM_S, RP2350_RISCV, RP2350_ARM_NS, PICO_ICE) == (
        0xE48BFF59,
        0xE48BFF5A,
        0xE48BFF5B,
        0x792E7263,
    )


def test_family_names() -> None:
    assert family_name(RP2040) == "rp2040"
    assert family_name(RP2_ABSOLUTE) == "absolute"
    assert family_name(RP2_DATA) == "data"
    assert family_name(RP2350_ARM_S) == "rp2350-arm-s"
    assert family_name(RP2350_RISCV) == "rp2350-riscv"
    assert family_name(RP2350_ARM_NS) == "rp2350-arm-ns"
    assert family_name(PICO_ICE) == "pico-ice"
    assert family_name(0x12345678) == "0x12345678"
    assert family_name(0xAB) == "0x000000ab"
    assert family_name(None) == "none"


# --- writing and round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 255, 256, 257, 4099, 1024 * 1024])
def test_round_trip_binary_uf2_binary(size: int) -> None:
    data = random.Random(size).randbytes(size)
    blob = from_binary(data, FLASH, RP2350_ARM_S)
    blocks = -(-size // 256)
    assert len(blob) == blocks * BLOCK_SIZE
    image = read_uf2(blob)
    assert len(image.blocks) == blocks
    assert image.families == frozenset({RP2350_ARM_S})
    assert image.payload_bytes == blocks * 256
    assert image.address_range == (FLASH, FLASH + blocks * 256)
    assert image.all_payloads_256
    padded = data + bytes(blocks * 256 - size)
    assert image.to_binary() == (FLASH, padded)
    assert image.to_binary(fill=0x00) == (FLASH, padded)
    assert image.segments() == [(FLASH, padded)]


@pytest.mark.parametrize("payload_size", [1, 4, 100, 476])
def test_round_trip_with_other_payload_sizes_pads_to_a_multiple_of_it(payload_size: int) -> None:
    data = random.Random(payload_size).randbytes(1000)
    base = 0x2000 * payload_size  # a multiple of every payload size
    image = read_uf2(from_binary(data, base, PICO_ICE, payload_size=payload_size))
    blocks = -(-1000 // payload_size)
    assert len(image.blocks) == blocks
    assert {b.payload_size for b in image.blocks} == {payload_size}
    assert image.to_binary() == (base, data + bytes(blocks * payload_size - 1000))
    assert image.all_payloads_256 is False


def test_from_binary_writes_the_uf2conv_layout() -> None:
    blob = from_binary(b"\x01\x02\x03" * 100, 0x10000100, RP2040)  # 300 bytes -> 2 blocks
    assert len(blob) == 2 * BLOCK_SIZE
    for n in range(2):
        raw = blob[n * BLOCK_SIZE : (n + 1) * BLOCK_SIZE]
        header = struct.unpack_from("<8I", raw)
        assert header == (
            MAGIC_START0,
            MAGIC_START1,
            FLAG_FAMILY_ID_PRESENT,
            0x10000100 + n * 256,
            256,
            n,
            2,
            RP2040,
        )
        assert struct.unpack_from("<I", raw, 508) == (MAGIC_END,)
        assert raw[32 + 256 : 508] == bytes(DATA_AREA - 256)
    second_payload = blob[BLOCK_SIZE + 32 : BLOCK_SIZE + 32 + 256]
    assert second_payload == (b"\x01\x02\x03" * 100)[256:] + bytes(212)  # tail padded with zeros


@pytest.mark.parametrize(
    ("data", "base", "payload_size", "fragment"),
    [
        (b"", FLASH, 256, "no data"),
        (b"x", FLASH + 1, 256, "base"),
        (b"x", FLASH + 128, 256, "base"),
        (b"x", -256, 256, "base"),
        (b"x", FLASH, 0, "payload size 0"),
        (b"x", FLASH, 477, "payload size 477"),
        (b"x" * 512, 0xFFFFFF00, 256, "address space"),
    ],
)
def test_from_binary_rejects_bad_arguments(data: bytes, base: int, payload_size: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        from_binary(data, base, RP2040, payload_size=payload_size)


def test_from_binary_accepts_the_last_page_of_the_address_space() -> None:
    image = read_uf2(from_binary(b"z" * 256, 0xFFFFFF00, RP2040))
    assert image.address_range == (0xFFFFFF00, 1 << 32)


# --- blocks --------------------------------------------------------------------------------------


def test_parse_block_reads_every_field() -> None:
    payload = bytes(range(200))
    block = parse_block(
        make_block(
            addr=0x20001000, block_no=3, num_blocks=9, family=RP2350_RISCV, payload=payload, payload_size=200
        )
    )
    assert block == Block(
        flags=FLAG_FAMILY_ID_PRESENT,
        target_addr=0x20001000,
        payload_size=200,
        block_no=3,
        num_blocks=9,
        family_id=RP2350_RISCV,
        file_size=None,
        payload=payload,
    )
    assert block.skipped is False
    assert block.end_addr == 0x20001000 + 200


def test_parse_block_reports_file_size_without_family_flag() -> None:
    block = parse_block(make_block(addr=0, family=None, file_size=123456, flags=uf2.FLAG_FILE_CONTAINER))
    assert block.family_id is None
    assert block.file_size == 123456
    assert read_uf2(make_block(addr=0, family=None)).families == frozenset()


def test_parse_block_payload_is_only_payload_size_bytes() -> None:
    raw = make_block(addr=0, payload=b"A" * 10 + b"B" * 466, payload_size=10)
    assert parse_block(raw).payload == b"A" * 10


@pytest.mark.parametrize("length", [0, 511, 513, 1024])
def test_parse_block_requires_exactly_512_bytes(length: int) -> None:
    with pytest.raises(UF2Error, match=rf"^block 7: length {length}, expected 512$") as caught:
        parse_block(bytes(length), index=7)
    assert caught.value.block == 7


def test_skipped_flag() -> None:
    assert parse_block(make_block(addr=0, flags=FLAG_NOT_MAIN_FLASH)).skipped is True


# --- bad input -----------------------------------------------------------------------------------


def test_empty_file() -> None:
    expect_error(b"", None, "empty")


@pytest.mark.parametrize("cut", [1, 24, 511])
def test_truncated_file(cut: int) -> None:
    data = b"".join(make_image(3))[:-cut]
    expect_error(
        data, None, f"file size {len(data)} is not a multiple of 512", "index 2", f"{512 - cut} bytes"
    )


@pytest.mark.parametrize(
    ("offset", "what"),
    [(MAGIC0_AT, "bad magic0"), (MAGIC1_AT, "bad magic1"), (MAGIC_END_AT, "bad magic end")],
)
@pytest.mark.parametrize("k", [0, 2, 4])
def test_bad_magic_names_the_block(offset: int, what: str, k: int) -> None:
    blocks = make_image(5)
    set_word(blocks, k, offset, 0x12345678)
    expect_error(b"".join(blocks), k, f"{what} 0x12345678")


@pytest.mark.parametrize("size", [0, 477, 512, 0xFFFFFFFF])
def test_bad_payload_size(size: int) -> None:
    blocks = make_image(3)
    set_word(blocks, 1, SIZE_AT, size)
    expect_error(b"".join(blocks), 1, f"payload size {size} is not in 1..476")


def test_payload_sizes_other_than_256_are_valid_but_reported() -> None:
    blocks = [
        make_block(addr=FLASH, block_no=0, num_blocks=2, payload_size=476),
        make_block(addr=FLASH + 476, block_no=1, num_blocks=2, payload_size=1),
    ]
    image = read_uf2(b"".join(blocks))
    assert image.all_payloads_256 is False
    assert image.payload_bytes == 477
    assert image.address_range == (FLASH, FLASH + 477)


def test_only_flashed_blocks_count_for_payload_256() -> None:
    blocks = make_image(2)
    blocks.append(make_block(addr=0, family=RP2_DATA, payload_size=12, flags=FLAG_NOT_MAIN_FLASH))
    assert read_uf2(b"".join(blocks)).all_payloads_256 is True


@pytest.mark.parametrize("block_no", [4, 5, 0xFFFFFFFF])
def test_block_number_not_below_total(block_no: int) -> None:
    blocks = make_image(4)
    set_word(blocks, 3, BLOCK_NO_AT, block_no)
    expect_error(b"".join(blocks), 3, f"block number {block_no} is not below the total 4")


def test_zero_total_blocks() -> None:
    expect_error(make_block(addr=0, num_blocks=0), 0, "total number of blocks is 0")


def test_payload_past_the_address_space() -> None:
    expect_error(make_block(addr=0xFFFFFF80), 0, "runs past the 32-bit address space")


def test_missing_block_in_the_middle_of_a_group() -> None:
    blocks = make_image(5)
    del blocks[2]
    expect_error(b"".join(blocks), 2, "block number 3, expected 2")


def test_missing_last_block_of_a_group() -> None:
    blocks = make_image(5)
    del blocks[4]
    expect_error(b"".join(blocks), 3, "ends after 4 blocks", "block 4 is missing")


def test_missing_last_block_of_a_group_followed_by_another_group() -> None:
    blocks = make_image(3)[:2] + make_image(2, family=RP2350_ARM_S)
    expect_error(b"".join(blocks), 1, "group of 3 blocks (family rp2040) starting at block 0 ends after 2")


def test_group_not_starting_at_zero() -> None:
    blocks = make_image(3)[1:]
    expect_error(b"".join(blocks), 0, "block number 1, expected 0")


def test_out_of_order_blocks() -> None:
    blocks = make_image(5)
    blocks[1], blocks[2] = blocks[2], blocks[1]
    expect_error(b"".join(blocks), 1, "block number 2, expected 1")


def test_duplicated_block() -> None:
    blocks = make_image(4)
    blocks.insert(2, blocks[1])
    expect_error(b"".join(blocks), 2, "block number 1, expected 2")


def test_a_run_of_same_family_and_total_is_one_group() -> None:
    # Two complete 2-block images of the same family back to back form one run of 4 blocks.
    blocks = make_image(2) + make_image(2, base=FLASH + 0x10000)
    expect_error(b"".join(blocks), 2, "block number 0, extra block in the group of 2 blocks")


def test_duplicated_address() -> None:
    blocks = make_image(5)
    set_word(blocks, 3, ADDR_AT, FLASH + 256)  # same address as block 1
    expect_error(b"".join(blocks), 3, "overlaps block 1", "0x10000100..0x10000200")


def test_partly_overlapping_address() -> None:
    blocks = make_image(5)
    set_word(blocks, 4, ADDR_AT, FLASH + 3 * 256 + 128)  # runs into block 3 and into block 4's own slot
    expect_error(b"".join(blocks), 4, "overlaps block 3")


def test_one_byte_overlap_is_an_error_but_touching_blocks_are_not() -> None:
    touching = [
        make_block(addr=0x1000, block_no=0, num_blocks=2, payload_size=100),
        make_block(addr=0x1000 + 100, block_no=1, num_blocks=2, payload_size=100),
    ]
    assert read_uf2(b"".join(touching)).segments() == [(0x1000, touching[0][32:132] + touching[1][32:132])]
    set_word(touching, 1, ADDR_AT, 0x1000 + 99)
    expect_error(b"".join(touching), 1, "overlaps block 0", "0x00001063..0x000010c7")


def test_overlap_error_on_a_large_file_is_quick() -> None:
    blocks = make_image(8192)
    set_word(blocks, 8000, ADDR_AT, FLASH + 7000 * 256)
    set_word(blocks, 8191, ADDR_AT, FLASH + 10 * 256)
    expect_error(b"".join(blocks), 8000, "overlaps block 7000")


def test_overlap_names_the_first_block_that_overlaps_an_earlier_one() -> None:
    # Block 0 spans everything of blocks 3 and 4; blocks 1 and 2 overlap each other.
    blocks = [
        make_block(addr=0x1000, block_no=0, num_blocks=5, payload_size=476),
        make_block(addr=0x2000, block_no=1, num_blocks=5, payload_size=200),
        make_block(addr=0x2010, block_no=2, num_blocks=5, payload_size=16),
        make_block(addr=0x1010, block_no=3, num_blocks=5, payload_size=16),
        make_block(addr=0x1020, block_no=4, num_blocks=5, payload_size=16),
    ]
    expect_error(b"".join(blocks), 2, "overlaps block 1")


def test_overlap_is_per_family_and_ignores_skipped_blocks() -> None:
    universal = make_image(3, family=RP2040) + make_image(3, family=RP2350_ARM_S)
    universal.append(make_block(addr=FLASH, family=RP2040, flags=FLAG_NOT_MAIN_FLASH))
    image = read_uf2(b"".join(universal))
    assert image.families == frozenset({RP2040, RP2350_ARM_S})
    with pytest.raises(UF2Error, match=r"^block 3: .*overlaps block 0; select one family"):
        image.segments()
    assert image.segments(families=[RP2350_ARM_S]) == [(FLASH, b"".join(b[32:288] for b in universal[3:6]))]
    assert image.to_binary(families={RP2040}) == (FLASH, b"".join(b[32:288] for b in universal[:3]))


def test_blocks_without_family_overlap_among_themselves() -> None:
    blocks = [
        make_block(addr=0, block_no=0, num_blocks=2, family=None),
        make_block(addr=0, block_no=1, num_blocks=2, family=None),
    ]
    expect_error(b"".join(blocks), 1, "overlaps block 0", "family none")


def test_the_lowest_bad_block_wins() -> None:
    blocks = make_image(6)
    set_word(blocks, 2, ADDR_AT, FLASH)  # overlap at block 2
    set_word(blocks, 4, MAGIC_END_AT, 0)  # bad block 4
    expect_error(b"".join(blocks), 2, "overlaps block 0")

    blocks = make_image(6)
    set_word(blocks, 4, ADDR_AT, FLASH)  # overlap at block 4
    set_word(blocks, 1, MAGIC1_AT, 0)  # bad block 1
    expect_error(b"".join(blocks), 1, "bad magic1 0x00000000")

    blocks = make_image(6)
    set_word(blocks, 5, ADDR_AT, FLASH)  # overlap at block 5
    blocks[2], blocks[3] = blocks[3], blocks[2]  # out of order at block 2
    expect_error(b"".join(blocks), 2, "block number 3, expected 2")


@pytest.mark.parametrize("value", ["not bytes", 12, None])
def test_non_bytes_input_is_a_uf2_error(value: object) -> None:
    with pytest.raises(UF2Error, match="not a bytes-like object"):
        read_uf2(value)  # type: ignore[arg-type]


def test_uf2_error_is_a_value_error_with_block_and_reason() -> None:
    error = UF2Error("bad magic end 0x00000000", 3)
    assert isinstance(error, ValueError)
    assert str(error) == "block 3: bad magic end 0x00000000"
    assert (error.block, error.reason) == (3, "bad magic end 0x00000000")
    assert str(UF2Error("empty file")) == "empty file"
    assert UF2Error("empty file").block is None


def test_bytearray_and_memoryview_input() -> None:
    blob = from_binary(b"abc", FLASH, RP2040)
    assert read_uf2(bytearray(blob)) == read_uf2(memoryview(blob)) == read_uf2(blob)


# --- RP2350-E10 and families ---------------------------------------------------------------------


def test_rp2350_e10_file_is_valid_and_kept_whole() -> None:
    image = read_uf2(e10_file())
    assert len(image.blocks) == 5
    assert image.blocks[0].family_id == RP2_ABSOLUTE
    assert (image.blocks[0].block_no, image.blocks[0].num_blocks) == (0, 1)
    assert image.families == frozenset({RP2_ABSOLUTE, RP2350_ARM_S})
    assert accepted_by(image, {RP2_ABSOLUTE, RP2_DATA, RP2350_ARM_S, RP2350_RISCV}) is True
    assert accepted_by(image, {RP2040}) is False
    assert accepted_by(image, {RP2350_ARM_S}) is False  # the ABSOLUTE block needs ABSOLUTE listed
    assert accepted_by(image, iter([RP2350_ARM_S, RP2_ABSOLUTE])) is True
    arm_image = b"".join(block.payload for block in image.blocks[1:])
    assert len(arm_image) == 4 * 256
    assert image.segments() == [(FLASH, arm_image), (0x10FFFF00, b"\xef" * 256)]
    assert image.address_range == (FLASH, 0x11000000)


def test_e10_block_with_wrong_numbering_is_rejected() -> None:
    data = bytearray(e10_file())
    struct.pack_into("<I", data, NUM_BLOCKS_AT, 2)  # "0 of 2" but the group has one block
    expect_error(bytes(data), 0, "group of 2 blocks (family absolute) starting at block 0 ends after 1")


def test_accepted_by_rp2040_image() -> None:
    image = read_uf2(from_binary(b"\x00" * 1000, FLASH, RP2040))
    assert accepted_by(image, [RP2040]) is True
    assert accepted_by(image, [RP2350_ARM_S, RP2350_RISCV, RP2_ABSOLUTE]) is False
    assert accepted_by(image, []) is False


def test_accepted_by_ignores_skipped_blocks_and_rejects_blocks_without_family() -> None:
    blocks = make_image(2, family=RP2040)
    blocks.append(make_block(addr=0, family=0xDEADBEEF, flags=FLAG_NOT_MAIN_FLASH))
    assert accepted_by(read_uf2(b"".join(blocks)), {RP2040}) is True
    assert accepted_by(read_uf2(make_block(addr=0, family=None)), {RP2040}) is False


# --- skipped blocks and flat images ---------------------------------------------------------------


def test_skipped_blocks_are_excluded() -> None:
    blocks = make_image(2, family=RP2350_RISCV)
    # A not-main-flash comment block of another family, overlapping the image and far away.
    blocks.append(make_block(addr=FLASH, family=PICO_ICE, flags=FLAG_NOT_MAIN_FLASH, payload=b"C" * 256))
    blocks.append(make_block(addr=0x20000000, family=RP2_DATA, flags=FLAG_NOT_MAIN_FLASH))
    image = read_uf2(b"".join(blocks))
    assert [b.skipped for b in image.blocks] == [False, False, True, True]
    assert image.families == frozenset({RP2350_RISCV})
    assert image.payload_bytes == 512
    assert image.address_range == (FLASH, FLASH + 512)
    expected = blocks[0][32:288] + blocks[1][32:288]
    assert image.segments() == [(FLASH, expected)]
    assert image.to_binary() == (FLASH, expected)


def test_image_of_skipped_blocks_only() -> None:
    image = read_uf2(make_block(addr=FLASH, flags=FLAG_NOT_MAIN_FLASH))
    assert len(image.blocks) == 1
    assert image.families == frozenset()
    assert image.payload_bytes == 0
    assert image.address_range == (0, 0)
    assert image.segments() == []
    assert image.to_binary() == (0, b"")
    assert accepted_by(image, {RP2040}) is False


def test_segments_merge_adjacent_runs_and_to_binary_fills_gaps() -> None:
    # Written out of address order, with a 0x100-byte gap and a run of two adjacent blocks.
    blocks = [
        make_block(addr=0x1300, block_no=0, num_blocks=3, payload=b"c" * 256),
        make_block(addr=0x1000, block_no=1, num_blocks=3, payload=b"a" * 256),
        make_block(addr=0x1100, block_no=2, num_blocks=3, payload=b"b" * 256),
    ]
    image = read_uf2(b"".join(blocks))
    assert image.segments() == [(0x1000, b"a" * 256 + b"b" * 256), (0x1300, b"c" * 256)]
    assert image.address_range == (0x1000, 0x1400)
    assert image.to_binary() == (0x1000, b"a" * 256 + b"b" * 256 + b"\xff" * 256 + b"c" * 256)
    assert image.to_binary(fill=0x00) == (0x1000, b"a" * 256 + b"b" * 256 + bytes(256) + b"c" * 256)


def test_to_binary_max_size() -> None:
    blocks = [
        make_block(addr=0, block_no=0, num_blocks=2),
        make_block(addr=0xFFFFFF00, block_no=1, num_blocks=2),
    ]
    image = read_uf2(b"".join(blocks))
    assert image.address_range == (0, 1 << 32)
    with pytest.raises(UF2Error, match="would be 4294967296 bytes, more than 16777216"):
        image.to_binary(max_size=16 * 1024 * 1024)
    small = read_uf2(from_binary(b"q" * 300, FLASH, RP2040))
    assert small.to_binary(max_size=512) == (FLASH, b"q" * 300 + bytes(212))


def test_uf2_image_built_directly() -> None:
    image = UF2Image((parse_block(make_block(addr=0x100, payload=b"x" * 256)),))
    assert image.to_binary() == (0x100, b"x" * 256)


# --- properties ----------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_or_uf2_error(data: bytes) -> UF2Image | None:
    """Call read_uf2, letting only UF2Error through; check the error's shape and the image's."""
    try:
        image = read_uf2(data)
    except UF2Error as error:
        message = str(error)
        assert message and "\n" not in message
        assert error.block is None or 0 <= error.block < len(data) // BLOCK_SIZE
        return None
    assert len(image.blocks) * BLOCK_SIZE == len(data)
    assert all(len(block.payload) == block.payload_size for block in image.blocks)
    low, high = image.address_range
    assert low <= high
    if len({block.family_id for block in image.blocks if not block.skipped}) <= 1:
        # One family: read_uf2 guarantees no overlap, so the runs hold every payload byte once.
        assert sum(len(run) for _, run in image.segments()) == image.payload_bytes <= high - low
    return image


@FAST
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_uf2_error(data: bytes) -> None:
    read_or_uf2_error(data)


@FAST
@given(st.integers(min_value=1, max_value=4).flatmap(lambda n: st.binary(min_size=512 * n, max_size=512 * n)))
def test_any_whole_blocks_parse_or_raise_uf2_error(data: bytes) -> None:
    assert read_or_uf2_error(data) is None  # random bytes never carry the three magics


VALID_FILES = [
    from_binary(random.Random(1).randbytes(1500), FLASH, RP2040),
    e10_file(),
    b"".join(make_image(3, family=RP2040) + make_image(3, family=RP2350_ARM_S)),
    b"".join(make_image(2, family=None, payload_size=476, base=0)),
]

INTERESTING = st.sampled_from(
    [0, 1, 2, 3, 255, 256, 476, 477, 0xFFFFFFFF, 0x80000000, FLASH, MAGIC_START0, MAGIC_END, RP2040]
)


@st.composite
def mutated_uf2(draw: st.DrawFn) -> bytes:
    """A valid file with a few random edits: byte flips, header words, truncation, splices."""
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "word", "truncate", "splice", "drop_block", "dup_block"]))
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "word":
            block = at // BLOCK_SIZE * BLOCK_SIZE
            offset = draw(st.sampled_from([0, 4, 8, 12, 16, 20, 24, 28, 508]))
            if block + offset + 4 <= len(data):
                struct.pack_into("<I", data, block + offset, draw(INTERESTING))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            start = draw(st.integers(min_value=0, max_value=len(data) - 1))
            piece = data[start : start + draw(st.integers(min_value=1, max_value=1024))]
            data[at:at] = piece
        elif kind == "drop_block":
            block = at // BLOCK_SIZE * BLOCK_SIZE
            del data[block : block + BLOCK_SIZE]
        else:
            block = at // BLOCK_SIZE * BLOCK_SIZE
            data[block:block] = data[block : block + BLOCK_SIZE]
    return bytes(data)


@FAST
@given(mutated_uf2())
def test_mutated_uf2_parses_or_raises_uf2_error(data: bytes) -> None:
    read_or_uf2_error(data)


@FAST
@given(
    data=st.binary(min_size=1, max_size=3000),
    payload_size=st.sampled_from([1, 16, 200, 256, 476]),
    page=st.integers(min_value=0, max_value=0x10000),
    family=st.sampled_from(sorted(uf2.FAMILY_NAMES)),
)
def test_round_trip_property(data: bytes, payload_size: int, page: int, family: int) -> None:
    base = page * payload_size
    image = read_uf2(from_binary(data, base, family, payload_size=payload_size))
    padding = -len(data) % payload_size
    assert image.to_binary() == (base, data + bytes(padding))
    assert image.families == frozenset({family})
    assert accepted_by(image, {family})
    assert image.all_payloads_256 == (payload_size == 256)


def test_valid_files_used_by_the_mutation_test_are_valid() -> None:
    for data in VALID_FILES:
        assert read_uf2(data).blocks
