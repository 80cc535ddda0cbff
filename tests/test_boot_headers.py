"""Boot headers: virtual bootroms boot only what real RP2040/RP2350 bootroms boot (issue 14 item 6).

The RP2040 boots a flash whose boot2 (first 256 bytes) carries the right CRC-32; the RP2350 one
with a valid IMAGE_DEF block (PICOBIN, first 4 KiB). Anything else brings the board back in
BOOTSEL. ``picofleet sim image`` writes bootable (or, with ``--broken``, non-booting) images.
"""

from __future__ import annotations

import argparse
import binascii
import io
import random
import struct
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import pytest
import serial

from picofleet.commands import sim
from picofleet.firmware.formats import boot_header, image, uf2
from picofleet.firmware.host.protocol import FirmwareClient
from picofleet.gateway import plugin_manager
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.models import APPLICATION, BoardType, UsbRule
from picofleet.plugins.virtual.control import connect
from tests.helpers.gateway import idle_boards
from tests.helpers.rack import RackProcess, Subscription
from tests.helpers.wait import wait_for

OCTETS = {"Content-Type": "application/octet-stream"}


def pad_checksum(stage: bytes, seed: int = 0xFFFFFFFF) -> int:
    """pico-sdk's ``pad_checksum`` formula (src/rp2040/boot_stage2), with the seed its CMake passes."""

    def bitrev(value: int, width: int) -> int:
        return int(f"{value:0{width}b}"[::-1], 2)

    reflected = binascii.crc32(bytes(bitrev(b, 8) for b in stage), seed ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
    return bitrev(reflected & 0xFFFFFFFF, 32)


def word(value: int) -> bytes:
    return struct.pack("<I", value)


def sdk_rp2350_binary(cpu: int = boot_header.CPU_ARM, version: tuple[int, int] | None = None) -> bytes:
    """A flash image laid out as pico-sdk's default (flash) binaries are: vector table, the
    IMAGE_DEF block of ``embedded_start_block.inc.S`` linking to the end block of
    ``embedded_end_block.inc.S`` at the end of the binary, which links back (a loop of two)."""
    vectors = word(boot_header.SRAM_END_RP2350) + word(0x100001F7) + bytes(0x110 - 8)
    items = [boot_header.image_type_item(boot_header.image_type_flags(cpu=cpu))]
    if version is not None:  # PICO_CRT0_VERSION_MAJOR/MINOR: a VERSION item of 2 words
        items.append(struct.pack("<BBHHH", boot_header.ITEM_1BS_VERSION, 2, 0, version[1], version[0]))
    start_size = len(boot_header.make_block(items))
    code = bytes(random.Random(2350).randbytes(0x2000))
    end_at = len(vectors) + start_size + len(code)
    start = boot_header.make_block(items, link=end_at - len(vectors))
    end_block = boot_header.make_block(
        [struct.pack("<BBH", boot_header.ITEM_2BS_IGNORED, 1, 0)], link=len(vectors) - end_at
    )
    return vectors + start + code + end_block


# --- building and checking ----------------------------------------------------------------------


def test_boot2_crc_is_pico_sdk_pad_checksum() -> None:
    assert boot_header.boot2_crc(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value
    generator = random.Random(14)
    for _ in range(20):
        stage = generator.randbytes(252)
        assert boot_header.boot2_crc(stage) == pad_checksum(stage)
    boot2 = boot_header.make_boot2(b"\x00\xb5\x32\x4b")
    assert len(boot2) == 256 and boot2[4:252] == bytes(248)
    assert struct.unpack("<I", boot2[252:])[0] == pad_checksum(boot2[:252])
    with pytest.raises(ValueError, match="at most 252 bytes"):
        boot_header.make_boot2(bytes(253))


@pytest.mark.parametrize("board,chip", [("rp2040", "rp2040"), ("rp2350", "rp2350"), ("pico2-ice", "rp2350")])
def test_images_built_for_a_board_boot_on_its_chip_only(board: str, chip: str) -> None:
    flat = image.make_app_image("picofleet-app", "2.0.0", board)
    assert boot_header.check(flat, chip) is None
    other = "rp2350" if chip == "rp2040" else "rp2040"
    assert boot_header.check(flat, other) is not None
    assert image.find_descriptor(flat) == {"name": "picofleet-app", "version": "2.0.0", "board": board}
    assert len(flat) == 4096
    # a tiny size still gives header and descriptor
    small = image.make_app_image("x", "1", board, 16)
    assert boot_header.check(small, chip) is None and image.find_descriptor(small) is not None


def test_the_rp2350_header_is_pico_sdks_single_block() -> None:
    block = boot_header.make_image_def()
    # .word 0xffffded3; .byte 0x42, 1; .hword EXE|S|ARM|RP2350 (0x1021);
    # .byte 0xff; .hword 1; .byte 0; .word 0 (links to itself); .word 0xab123579
    assert block == bytes.fromhex("d3deffff42012110ff01000000000000793512ab")
    loop = boot_header.find_block_loop(boot_header.build("rp2350"))
    assert [block.offset for block in loop] == [8] and boot_header.image_def_flags(loop[0]) == 0x1021


@pytest.mark.parametrize("bit", [0, 7, 100 * 8 + 3, 251 * 8 + 7, 252 * 8, 255 * 8 + 7])
def test_one_bit_changed_in_boot2_breaks_the_crc(bit: int) -> None:
    flat = bytearray(image.make_app_image("picofleet-app", "1.0.0", "rp2040"))
    assert boot_header.check(bytes(flat), "rp2040") is None
    flat[bit // 8] ^= 1 << (bit % 8)
    reason = boot_header.check(bytes(flat), "rp2040")
    assert reason is not None and reason.startswith("image has no valid boot2: CRC 0x")


def test_rp2040_erased_or_short_flash_does_not_boot() -> None:
    assert boot_header.check(b"", "rp2040") is not None
    assert boot_header.check(b"\xff" * 4096, "rp2040") is not None
    assert boot_header.check(boot_header.make_boot2()[:200], "rp2040") is not None
    assert boot_header.check(boot_header.make_boot2(), "RP2040") is None  # plugins spell chips upper-case


def test_rp2350_without_image_def_or_with_an_rp2040_header_does_not_boot() -> None:
    body = image.make_descriptor("picofleet-app", "2.0.0", "rp2350") + bytes(4000)
    assert boot_header.check(body, "rp2350") == "image has no valid IMAGE_DEF block in the first 4 KiB"
    assert (
        boot_header.check(b"\xff" * 8192, "rp2350") == "image has no valid IMAGE_DEF block in the first 4 KiB"
    )
    assert boot_header.check(boot_header.make_boot2() + body, "rp2350") == (
        "image has no valid IMAGE_DEF block in the first 4 KiB"
    )
    # an IMAGE_DEF that names the RP2040 (what `--broken` writes), one past the first 4 KiB
    rp2040_def = boot_header.make_image_def(boot_header.image_type_flags("rp2040"))
    assert (
        boot_header.check(rp2040_def + body, "rp2350")
        == "image has an IMAGE_DEF for the RP2040, not the RP2350"
    )
    late = bytes(4096) + boot_header.make_image_def()
    assert boot_header.check(late, "rp2350") == "image has no valid IMAGE_DEF block in the first 4 KiB"
    assert boot_header.check(bytes(4092) + boot_header.make_image_def(), "rp2350") is None


def test_pico_sdk_default_binaries_boot() -> None:
    assert boot_header.check(sdk_rp2350_binary(), "rp2350") is None
    assert boot_header.check(sdk_rp2350_binary(version=(1, 2)), "rp2350") is None
    assert boot_header.check(sdk_rp2350_binary(cpu=boot_header.CPU_RISCV), "rp2350") is None  # arch switch
    loop = boot_header.find_block_loop(sdk_rp2350_binary())
    assert [block.offset for block in loop] == [0x110, 0x110 + 20 + 0x2000]


def block_with(flags: int) -> bytes:
    return boot_header.make_image_def(flags)


@pytest.mark.parametrize(
    "flash,reason",
    [
        (
            block_with(boot_header.image_type_flags(security=boot_header.SECURITY_NS)),
            "image has an IMAGE_DEF of an Arm non-secure image, which the bootrom does not boot",
        ),
        (
            block_with(boot_header.image_type_flags(image_type=boot_header.IMAGE_TYPE_DATA)),
            "image has no valid IMAGE_DEF block (none executable in its block loop)",
        ),
        (
            block_with(boot_header.image_type_flags(cpu=boot_header.CPU_VARMULET)),
            "image has an IMAGE_DEF for CPU 2 (Varmulet or unknown), not Arm or RISC-V",
        ),
        (
            boot_header.make_block([boot_header.image_type_item(0x1021)], link=64) + bytes(200),
            "image has an invalid block loop: the block at 0x0 links to 0x40: no block there",
        ),
        (
            # LAST says 2 words of items where there is 1
            word(boot_header.BLOCK_MARKER_START) + bytes.fromhex("42012110ff02000000000000793512ab"),
            "image has an invalid block loop: the block at 0x0 has a LAST item of size 2, not 1 (its items)",
        ),
        (
            word(boot_header.BLOCK_MARKER_START) + bytes.fromhex("42012110ff0100000000000000000000"),
            "image has an invalid block loop: the block at 0x0 has no end marker after its LAST item",
        ),
        (
            word(boot_header.BLOCK_MARKER_START) + bytes.fromhex("42002110"),
            "image has an invalid block loop: the block at 0x0 has a zero-sized item at 0x4",
        ),
    ],
)
def test_rp2350_refuses_bad_image_defs_and_broken_loops(flash: bytes, reason: str) -> None:
    assert boot_header.check(flash, "rp2350") == reason


def test_rp2350_block_loops_must_close_on_the_first_block() -> None:
    first = boot_header.make_block([boot_header.image_type_item(0x1021)], link=64)
    second_self = boot_header.make_block([struct.pack("<BBH", boot_header.ITEM_2BS_IGNORED, 1, 0)], link=0)
    flash = first + bytes(64 - len(first)) + second_self
    assert boot_header.check(flash, "rp2350") == (
        "image has an invalid block loop: the block at 0x40 links to itself, not to the first block"
    )
    second_back = boot_header.make_block([struct.pack("<BBH", boot_header.ITEM_2BS_IGNORED, 1, 0)], link=-64)
    assert boot_header.check(first + bytes(64 - len(first)) + second_back, "rp2350") is None
    # a start marker with no LAST item within reach is not a block: the search goes on
    junk = word(boot_header.BLOCK_MARKER_START) + struct.pack("<BBH", 0x03, 200, 0) + bytes(24)
    assert boot_header.check(junk + boot_header.make_image_def(), "rp2350") is None


def test_the_last_executable_image_def_of_a_loop_counts() -> None:
    good = boot_header.image_type_flags()
    bad = boot_header.image_type_flags("rp2040")
    for flags, expected in (((good, bad), False), ((bad, good), True)):
        first = boot_header.make_block([boot_header.image_type_item(flags[0])], link=64)
        second = boot_header.make_block([boot_header.image_type_item(flags[1])], link=-64)
        verdict = boot_header.check(first + bytes(64 - len(first)) + second, "rp2350")
        assert (verdict is None) is expected, verdict


@pytest.mark.parametrize("board,chip", [("rp2040", "rp2040"), ("pico2-ice", "rp2350")])
def test_broken_images_keep_descriptor_but_do_not_boot(board: str, chip: str) -> None:
    flat = image.make_app_image("picofleet-app", "2.0.0", board, broken=True)
    assert image.find_descriptor(flat) is not None
    assert boot_header.check(flat, chip) is not None


def test_unknown_board_types_need_their_chip() -> None:
    with pytest.raises(ValueError, match="unknown board type 'tiny2040'"):
        image.make_app_image("picofleet-app", "1.0.0", "tiny2040")
    flat = image.make_app_image("picofleet-app", "1.0.0", "tiny2040", chip="RP2040")
    assert boot_header.check(flat, "rp2040") is None
    with pytest.raises(ValueError, match="unknown chip"):
        boot_header.build("esp32")


# --- picofleet sim image ------------------------------------------------------------------------


def run_sim(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="picofleet")
    sim.add_parser(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        args = parser.parse_args(["sim", *argv])
        status = args.run(args)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "board,family,chip",
    [
        ("rp2040", uf2.RP2040, "rp2040"),
        ("rp2350", uf2.RP2350_ARM_S, "rp2350"),
        ("pico2-ice", uf2.RP2350_ARM_S, "rp2350"),
    ],
)
def test_sim_image_writes_a_bootable_uf2(tmp_path: Path, board: str, family: int, chip: str) -> None:
    out = tmp_path / "app.uf2"
    status, text, err = run_sim("image", "--board", board, "--version", "3.1.4", str(out))
    assert (status, err) == (0, ""), err
    assert text.startswith(f"{out}: picofleet-app 3.1.4 for {board}")
    parsed = uf2.read_uf2(out.read_bytes())
    base, flat = parsed.to_binary()
    assert base == image.FLASH_BASE and parsed.families == frozenset({family})
    assert boot_header.check(flat, chip) is None
    assert image.uf2_version(parsed) == "3.1.4"

    status, text, err = run_sim("image", "--board", board, "--version", "3.1.4", "--broken", str(out))
    assert status == 0 and "non-booting" in text
    parsed = uf2.read_uf2(out.read_bytes())
    assert image.uf2_version(parsed) == "3.1.4" and all(block.family_id == family for block in parsed.blocks)
    assert boot_header.check(parsed.to_binary()[1], chip) is not None


def test_sim_image_refuses_unknown_types_and_unwritable_paths(tmp_path: Path) -> None:
    out = tmp_path / "x.uf2"
    status, text, err = run_sim("image", "--board", "esp32-c3", "--version", "1.0.0", str(out))
    assert (status, text) == (1, "") and err.startswith(
        "picofleet sim: unknown board type 'esp32-c3' (known: "
    )
    assert err.count("\n") == 1 and not out.exists()
    status, _, err = run_sim(
        "image", "--board", "rp2040", "--version", "1.0.0", str(tmp_path / "no" / "x.uf2")
    )
    assert status == 1 and err.startswith("picofleet sim: cannot write ") and err.count("\n") == 1
    status, _, err = run_sim("image", "--board", "rp2040", "--version", "", str(out))
    assert status == 1 and err == "picofleet sim: --version must be a non-empty printable string\n"
    assert not out.exists()


class ThirdPartyBoards:
    """A plugin declaring an RP2040 board of its own and a board with a chip no virtual rack boots."""

    @hookimpl
    def picofleet_board_types(self) -> list[BoardType]:
        rule = (UsbRule("1209", "0001", APPLICATION, "custom"),)
        return [
            BoardType("tiny2040", "RP2040", "an RP2040 board", rule, (uf2.RP2040,), "RPI-RP2"),
            BoardType("esp-s3", "ESP32-S3", "not an RP2", rule, (0xC47E5767,), "ESP32S3"),
        ]


def test_sim_image_takes_a_plugins_board_type_with_an_rp2_chip(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = plugin_manager.load_plugins
    monkeypatch.setattr(
        plugin_manager, "load_plugins", lambda: real(extra=[("third-party", ThirdPartyBoards())])
    )
    out = tmp_path / "tiny.uf2"
    status, text, err = run_sim("image", "--board", "tiny2040", "--version", "1.2.3", str(out))
    assert (status, err) == (0, "") and "(rp2040," in text, err
    parsed = uf2.read_uf2(out.read_bytes())
    assert parsed.families == frozenset({uf2.RP2040})
    assert boot_header.check(parsed.to_binary()[1], "rp2040") is None
    status, _, err = run_sim("image", "--board", "esp-s3", "--version", "1.2.3", str(tmp_path / "esp.uf2"))
    assert (status, err) == (
        1,
        "picofleet sim: board type 'esp-s3' has chip ESP32-S3, which virtual boards cannot boot\n",
    )


# --- on the virtual rack ------------------------------------------------------------------------


@pytest.fixture
def rack_process(tmp_path: Path) -> Iterator[RackProcess]:
    """A rack with one pico2-ice and one rp2040 (stopped at the end)."""
    rack = RackProcess(tmp_path / "virtual", "1:pico2-ice,1:rp2040").start()
    yield rack
    rack.stop()


def identify(port_path: str) -> dict:
    with serial.Serial(port_path, 115200, timeout=0.1, exclusive=True) as port:
        return FirmwareClient(port).identify(timeout=2.0)


@pytest.mark.parametrize("board_type", ["pico2-ice", "rp2040"])
def test_a_board_given_a_non_booting_image_comes_back_in_bootsel(
    rack_process: RackProcess, tmp_path: Path, board_type: str
) -> None:
    rack = rack_process
    events = rack.subscribe()
    events.initial()
    board = next(b for b in rack.boards() if b["board_type"] == board_type)
    number = board["serial"]
    rack.request("bootsel", serial=number)
    events.expect("remove", "tty", number)
    drive = Path(events.expect("add", "block", number)["devname"])

    bad = tmp_path / "bad.uf2"
    assert run_sim("image", "--board", board_type, "--version", "6.6.6", "--broken", str(bad))[0] == 0
    (drive / "BAD.UF2").write_bytes(bad.read_bytes())
    events.expect("remove", "block", number)  # flashed: the bootrom resets...
    drive = Path(events.expect("add", "block", number)["devname"])  # ...and refuses the image
    shown = rack.board(number)
    assert shown["state"] == "bootloader" and shown["flashes"] == 1 and shown["firmware"] is None
    reason = (
        "image has an IMAGE_DEF for the RP2040, not the RP2350"
        if board_type == "pico2-ice"
        else "image has no valid boot2: CRC 0x"
    )
    assert shown["boot_error"].startswith(reason)
    line = f"board {number}: {shown['boot_error']}: stays in BOOTSEL"
    wait_for(lambda: line in rack.log(), 5, "the rack to log why")
    status, listing, _ = run_sim("list", "--data", str(tmp_path))
    assert status == 0 and "bootloader (no boot)" in listing and shown["boot_error"] in listing

    # a reset (unplug, plug) tries the flash again: still BOOTSEL
    rack.request("unplug", serial=number)
    events.expect("remove", "block", number)
    rack.request("plug", serial=number)
    drive = Path(events.expect("add", "block", number)["devname"])

    good = tmp_path / "good.uf2"
    assert run_sim("image", "--board", board_type, "--version", "6.7.0", str(good))[0] == 0
    (drive / "GOOD.UF2").write_bytes(good.read_bytes())
    events.expect("remove", "block", number)
    port = events.expect("add", "tty", number)["devname"]
    assert identify(port)["version"] == "6.7.0"
    shown = rack.board(number)
    assert shown["boot_error"] is None and shown["firmware"] == {"name": "picofleet-app", "version": "6.7.0"}


def test_flashing_over_the_gateway(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A good image from `picofleet sim image` boots and identifies with its version; a bad one
    flashed over POST /v1/devices/{uuid}/flash brings the board back in its bootloader drive."""
    gateway = gateway_factory("--simulate", "1", env={"ENM_UPDATE_RETRIES": "0"})
    number = idle_boards(gateway, 1)[0]["LocalUUID"]
    url = f"{gateway.url}/v1/devices/{number}/flash"

    good = tmp_path / "good.uf2"
    assert run_sim("image", "--board", "pico2-ice", "--version", "3.1.4", str(good))[0] == 0
    response = httpx.post(f"{url}?commit=good", content=good.read_bytes(), headers=OCTETS, timeout=30)
    assert response.status_code == 202, response.text
    device = wait_for(
        lambda: (
            (d := gateway.get(f"/v1/devices/{number}").json())["Status"] == "Idle"
            and d["Commit"] == "good"
            and d
        ),
        30,
        "the good image to run",
    )
    assert device["FirmwareVersion"] == "picofleet-app 3.1.4"

    sock = connect(gateway.data / "virtual")
    sock.sendall(b'{"op": "subscribe"}\n')
    events = Subscription(sock)
    try:
        events.initial()
        bad = tmp_path / "bad.uf2"
        assert run_sim("image", "--board", "pico2-ice", "--version", "3.2.0", "--broken", str(bad))[0] == 0
        response = httpx.post(f"{url}?commit=bad", content=bad.read_bytes(), headers=OCTETS, timeout=30)
        assert response.status_code == 202, response.text
        events.expect("remove", "tty", number)  # the gateway sends it to its bootloader
        events.expect("add", "block", number)
        events.expect("remove", "block", number, timeout=20)  # the image is written, the board resets
        events.expect("add", "block", number)  # and comes back in BOOTSEL: the image does not boot
    finally:
        sock.close()
    line = f"board {number}: image has an IMAGE_DEF for the RP2040, not the RP2350: stays in BOOTSEL"
    log = gateway.data / "virtual" / "rack.log"
    wait_for(lambda: line in log.read_text(errors="replace"), 5, "the rack to log why")
