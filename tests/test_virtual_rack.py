"""The rack of virtual boards: real ptys, the reference firmware, the UF2 bootloader, hotplug, state."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import serial

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from picofleet.firmware.host.errors import FirmwareError
from picofleet.firmware.host.protocol import FirmwareClient
from picofleet.gateway.config import load_config, parse_simulate
from picofleet.gateway.models import DeviceEvent
from picofleet.plugins import virtual
from picofleet.plugins.virtual import rack as rack_module
from picofleet.plugins.virtual.board import VirtualBoard
from picofleet.plugins.virtual.bootrom import ImageAssembler
from picofleet.plugins.virtual.bus import RackRefused, VirtualBus
from picofleet.plugins.virtual.control import connect, default_socket_path, read_line, socket_address
from picofleet.plugins.virtual.identities import accepted_families, factory_family
from tests.helpers.rack import RackProcess
from tests.helpers.wait import until, wait_for

RP2040_INFO = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
RP2350_INFO = "UF2 Bootloader v1.0\nModel: Raspberry Pi RP2350\nBoard-ID: RP2350\n"


def app_uf2(version: str, board_type: str, family: int | None = None, name: str = "picofleet-app") -> bytes:
    """A UF2 of the reference firmware (or of firmware ``name``) built for ``board_type``."""
    image = make_app_image(name, version, board_type)
    return uf2.from_binary(image, FLASH_BASE, family if family is not None else factory_family(board_type))


def identify(port_path: str, timeout: float = 2.0) -> dict:
    """Open the board's port as the gateway does and ask it who it is."""
    with serial.Serial(port_path, 115200, timeout=0.1, exclusive=True) as port:
        return FirmwareClient(port).identify(timeout=timeout)


def touch(port_path: str) -> None:
    """The 1200-baud touch."""
    serial.Serial(port_path, 1200).close()


def write_progressively(path: Path, data: bytes, chunk: int = 1000) -> None:
    """Write a file in pieces that do not line up with UF2 blocks, as a slow copy does."""
    with open(path, "wb") as handle:
        for start in range(0, len(data), chunk):
            handle.write(data[start : start + chunk])
            handle.flush()


@pytest.fixture
def rack_factory(tmp_path: Path):
    """Start racks in tmp_path/virtual; every one started is stopped at the end of the test."""
    started: list[RackProcess] = []

    def start(boards: str, state_dir: Path | None = None) -> RackProcess:
        rack = RackProcess(state_dir or tmp_path / "virtual", boards).start()
        started.append(rack)
        return rack

    yield start
    for rack in started:
        if rack.process is not None and rack.process.poll() is None:
            rack.stop()


def test_boards_enumerate_with_the_usb_identity_of_their_type(rack_factory) -> None:
    rack = rack_factory("1:pico2-ice,1:rp2040,1:rp2350")
    devices = rack.subscribe().initial()
    boards = {board["board_type"]: board for board in rack.boards()}
    assert len(devices) == 3 and all(device["subsystem"] == "tty" for device in devices)
    by_serial = {device["properties"]["ID_SERIAL_SHORT"]: device for device in devices}
    expected = {"pico2-ice": ("1209", "b1c0", "pico-ice"), "rp2040": ("2e8a", "0005", "Board in FS mode")}
    expected["rp2350"] = expected["rp2040"]
    for board_type, board in boards.items():
        device = by_serial[board["serial"]]
        props = device["properties"]
        assert (props["ID_VENDOR_ID"], props["ID_MODEL_ID"], props["ID_MODEL"]) == expected[board_type]
        assert device["devname"] == board["port"] and Path(board["port"]).exists()
        assert device["key"] == f"virtual/{board['serial']}/tty/1"
        assert props["ID_PATH"] == f"platform-picofleet-virtual-usb-0:1.{board['slot'] + 1}"
        assert props["ID_SERIAL"].endswith("_" + board["serial"])
        assert props["ID_USB_INTERFACE_NUM"] == "00" and props["PICOFLEET_VIRTUAL"] == "1"
        assert len(board["serial"]) == 16 and board["serial"] == board["serial"].upper()
        assert board["state"] == "application" and board["firmware"] == {
            "name": "picofleet-app",
            "version": "1.0.0",
        }


def test_the_firmware_answers_over_the_pty(rack_factory) -> None:
    rack = rack_factory("1:pico2-ice")
    (board,) = rack.boards()
    logs: list[tuple[str, str]] = []
    with serial.Serial(board["port"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port, on_log=lambda level, text: logs.append((level, text)))
        answer = client.identify()
        assert answer["proto"] == 1
        assert (answer["board"], answer["serial"]) == ("pico2-ice", board["serial"])
        assert (answer["firmware"], answer["version"]) == ("picofleet-app", "1.0.0")
        client.ping()
        client.blink(5)
        assert rack.board(board["serial"])["led_blinking"] is True
        with pytest.raises(FirmwareError, match="board answered: unknown op 'dance'"):
            client.request("dance")
        port.write(b"not json\n")
        with pytest.raises(FirmwareError, match="board answered: seconds must be a number"):
            client.request("blink", seconds="long")
        client.ping()
    assert rack.board(board["serial"])["boots"] == 1


def test_touch_drive_and_flash(rack_factory, tmp_path: Path) -> None:
    rack = rack_factory("1:pico2-ice,1:rp2040")
    events = rack.subscribe()
    events.initial()
    boards = {board["board_type"]: board for board in rack.boards()}
    ice = boards["pico2-ice"]

    touch(ice["port"])
    gone = events.expect("remove", "tty", ice["serial"])
    drive_node = events.expect("add", "block", ice["serial"])
    props = drive_node["properties"]
    assert props["ID_PATH"] == gone["properties"]["ID_PATH"]
    assert (props["ID_VENDOR_ID"], props["ID_MODEL_ID"], props["ID_MODEL"]) == ("2e8a", "000f", "RP2350 Boot")
    assert props["ID_FS_LABEL"] == "RP2350"
    drive = Path(drive_node["devname"])
    assert (drive / "INFO_UF2.TXT").read_text() == RP2350_INFO
    assert "raspberrypi.com/device/RP2?version=" in (drive / "INDEX.HTM").read_text()
    assert rack.board(ice["serial"])["state"] == "bootloader"

    # Blocks of a family the RP2350 does not take are ignored: nothing changes.
    wrong = app_uf2("3.0.0", "rp2040", family=uf2.RP2040)
    (drive / "WRONG.UF2").write_bytes(wrong)
    blocks = len(wrong) // 512
    wait_for(
        lambda: rack.board(ice["serial"])["blocks_ignored"] == blocks, 5, "the bootrom to read the blocks"
    )
    board = rack.board(ice["serial"])
    assert (board["state"], board["flashes"], board["blocks_accepted"]) == ("bootloader", 0, 0)

    # A good image, written in pieces: the board reboots into it.
    good = app_uf2("2.0.0", "pico2-ice")
    write_progressively(drive / "NEW.UF2", good)
    events.expect("remove", "block", ice["serial"])
    port_node = events.expect("add", "tty", ice["serial"])
    assert not drive.exists()
    assert port_node["properties"]["ID_PATH"] == props["ID_PATH"]
    assert identify(port_node["devname"])["version"] == "2.0.0"
    assert (tmp_path / "virtual" / "flash" / f"{ice['serial']}.uf2").read_bytes() == good

    # The protocol's bootloader request, then the rp2040's drive.
    with serial.Serial(port_node["devname"], 115200, timeout=0.1) as port:
        FirmwareClient(port).request("bootloader")
    events.expect("remove", "tty", ice["serial"])
    assert events.expect("add", "block", ice["serial"])["properties"]["ID_FS_LABEL"] == "RP2350"
    touch(boards["rp2040"]["port"])
    events.expect("remove", "tty", boards["rp2040"]["serial"])
    rp2040_drive = events.expect("add", "block", boards["rp2040"]["serial"])
    props = rp2040_drive["properties"]
    assert (props["ID_VENDOR_ID"], props["ID_MODEL_ID"], props["ID_MODEL"]) == ("2e8a", "0003", "RP2 Boot")
    assert props["ID_FS_LABEL"] == "RPI-RP2"
    assert props["ID_SERIAL_SHORT"] == "E0C9125B0D9B"  # like a real RP2040 bootrom: not the chip's id
    assert (Path(rp2040_drive["devname"]) / "INFO_UF2.TXT").read_text() == RP2040_INFO


def test_unknown_firmware_ignores_requests_but_honours_the_touch(rack_factory) -> None:
    rack = rack_factory("1:rp2040")
    events = rack.subscribe()
    (device,) = events.initial()
    serial_number = device["properties"]["ID_SERIAL_SHORT"]
    rack.request("bootsel", serial=serial_number)
    events.expect("remove", "tty")
    drive = Path(events.expect("add", "block")["devname"])
    (drive / "other.uf2").write_bytes(app_uf2("9.9", "rp2040", name="blinky"))
    events.expect("remove", "block")
    node = events.expect("add", "tty", serial_number)
    props = node["properties"]
    assert (props["ID_VENDOR_ID"], props["ID_MODEL_ID"], props["ID_MODEL"]) == ("2e8a", "000a", "Pico")
    with pytest.raises(FirmwareError, match=r"no answer to 'identify' within 0\.5 s"):
        identify(node["devname"], timeout=0.5)
    touch(node["devname"])
    events.expect("remove", "tty")
    events.expect("add", "block", serial_number)


def is_board_at(devname: str, serial_number: str) -> bool:
    """Whether the board with ``serial_number`` answers on ``devname`` (pty numbers get reused)."""
    try:
        port = serial.Serial(devname, 115200, timeout=0.1)
    except serial.SerialException:
        return False
    with port:
        try:
            return FirmwareClient(port).identify(timeout=0.5)["serial"] == serial_number
        except FirmwareError:
            return False


def test_unplug_and_plug(rack_factory) -> None:
    rack = rack_factory("2:rp2350")
    events = rack.subscribe()
    first, _ = events.initial()
    serial_number = first["properties"]["ID_SERIAL_SHORT"]
    answer = rack.request("unplug", serial=serial_number.lower())
    assert answer["ok"] and answer["board"]["state"] == "unplugged"
    assert events.expect("remove", "tty", serial_number)["key"] == first["key"]
    assert rack.board(serial_number)["state"] == "unplugged"
    assert rack.board(serial_number)["port"] is None
    assert not is_board_at(first["devname"], serial_number)  # the node is gone, or another pty's now
    assert rack.request("plug", serial=serial_number)["board"]["state"] == "application"
    back = events.expect("add", "tty", serial_number)
    assert back["properties"]["ID_PATH"] == first["properties"]["ID_PATH"] and back["key"] != first["key"]
    assert identify(back["devname"])["serial"] == serial_number
    stored = json.loads((rack.state_dir / "rack.json").read_text())
    assert all(record["plugged"] for record in stored)


def test_state_survives_a_restart_and_stdin_eof_stops_the_rack(rack_factory, tmp_path: Path) -> None:
    rack = rack_factory("2:rp2040")
    serials = [board["serial"] for board in rack.boards()]
    events = rack.subscribe()
    events.initial()
    rack.request("bootsel", serial=serials[1])
    events.expect("remove", "tty")
    drive = Path(events.expect("add", "block", serials[1])["devname"])
    (drive / "fw.uf2").write_bytes(app_uf2("2.0.0", "rp2040"))
    events.expect("remove", "block")
    events.expect("add", "tty", serials[1])

    rack.close_stdin()
    assert rack.wait(10) == 0
    assert not (rack.state_dir / "rack.sock").exists()
    assert list((rack.state_dir / "drives").iterdir()) == []

    (rack.state_dir / "flash" / f"{serials[0]}.uf2").unlink()  # a blank board boots its bootloader
    again = rack_factory("2:rp2040")
    boards = again.boards()
    assert [board["serial"] for board in boards] == serials
    assert boards[0]["state"] == "bootloader"
    assert boards[1]["firmware"] == {"name": "picofleet-app", "version": "2.0.0"}
    assert identify(boards[1]["port"])["version"] == "2.0.0"


def test_board_counts_pick_stored_boards_by_slot(rack_factory) -> None:
    rack = rack_factory("2:rp2040")
    serials = [board["serial"] for board in rack.boards()]
    rack.stop()
    again = rack_factory("1:rp2040,1:rp2350")
    boards = again.boards()
    assert [(b["serial"], b["state"]) for b in boards[:2]] == [
        (serials[0], "application"),
        (serials[1], "unplugged"),
    ]
    assert (boards[2]["slot"], boards[2]["board_type"], boards[2]["state"]) == (2, "rp2350", "application")
    stored = json.loads((again.state_dir / "rack.json").read_text())
    assert [(r["slot"], r["serial"], r["plugged"]) for r in stored] == [
        (0, serials[0], True),
        (1, serials[1], False),
        (2, boards[2]["serial"], True),
    ]
    assert again.request("plug", serial=serials[1])["board"]["state"] == "application"


def test_kill_9_leaves_a_consistent_state(rack_factory) -> None:
    rack = rack_factory("3:pico2-ice")
    serials = {board["serial"] for board in rack.boards()}
    stop = threading.Event()

    def churn() -> None:  # every plug/unplug rewrites rack.json
        while not stop.is_set():
            for serial_number in serials:
                try:
                    rack.request("unplug", serial=serial_number)
                    rack.request("plug", serial=serial_number)
                except Exception:
                    return

    worker = threading.Thread(target=churn)
    worker.start()
    wait_for(lambda: any(board["boots"] > 1 for board in rack.boards()), 10, "some churn")
    rack.kill()
    stop.set()
    worker.join(10)

    again = rack_factory("3:pico2-ice")
    stored = json.loads((again.state_dir / "rack.json").read_text())
    assert {record["serial"] for record in stored} == serials
    assert all(board["state"] == "application" for board in again.boards())
    assert not [p for p in again.state_dir.rglob("*.tmp")]


def test_control_errors_and_add(rack_factory) -> None:
    rack = rack_factory("1:rp2040")
    assert rack.request("unplug", serial="0123") == {
        "ok": False,
        "error": "no virtual board with serial '0123'",
    }
    assert "unknown op 'explode'" in rack.request("explode")["error"]
    assert "unknown board type 'esp32'" in rack.request("add", board_type="esp32")["error"]
    assert "needs a serial" in rack.request("plug")["error"]
    sock = connect(rack.state_dir)
    sock.sendall(b"{oops\n[1]\n")
    buffer = bytearray()
    deadline = time.monotonic() + 5
    assert json.loads(read_line(sock, buffer, deadline)) == {"ok": False, "error": "malformed JSON request"}
    assert json.loads(read_line(sock, buffer, deadline))["ok"] is False
    sock.close()

    events = rack.subscribe()
    events.initial()
    added = rack.request("add", board_type="rp2350")
    assert added["ok"] and added["board"]["slot"] == 1
    device = events.expect("add", "tty", added["serial"])
    assert identify(device["devname"])["board"] == "rp2350"


def test_sim_command(rack_factory, tmp_path: Path) -> None:
    import argparse

    from picofleet.commands import sim

    parser = argparse.ArgumentParser(prog="picofleet")
    sim.add_parser(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            args = parser.parse_args(["sim", *argv])
            status = args.run(args)
        return status, out.getvalue(), err.getvalue()

    status, _, err = run("list", "--data", str(tmp_path))
    assert status == 1 and err.startswith("picofleet sim: no virtual board rack is running in ")
    assert err.count("\n") == 1
    rack_factory("1:pico2-ice")
    status, out, _ = run("list", "--data", str(tmp_path), "--json")
    (board,) = json.loads(out)
    assert status == 0 and board["state"] == "application"
    status, out, _ = run("unplug", board["serial"], "--data", str(tmp_path))
    assert status == 0 and "unplugged" in out
    status, _, err = run("plug", "FFFF", "--data", str(tmp_path))
    assert (status, err) == (1, "picofleet sim: no virtual board with serial 'FFFF'\n")
    status, out, _ = run("bootsel", board["serial"], "--data", str(tmp_path))
    assert status == 0 and "bootloader" in out


def test_discovery_hook_and_virtual_bus(tmp_path: Path) -> None:
    assert virtual.picofleet_discovery_sources(load_config({"data": str(tmp_path)}, environ={})) == []
    assert virtual.picofleet_discovery_sources(load_config({"simulate": "0"}, environ={})) == []
    config = load_config({"data": str(tmp_path), "simulate": "2:rp2040"}, environ={})
    (bus,) = virtual.picofleet_discovery_sources(config)
    assert isinstance(bus, VirtualBus) and bus.name == "virtual"

    async def scenario() -> None:
        events: list[DeviceEvent] = []

        task = asyncio.create_task(bus.run(events.append))
        try:
            await until(lambda: len(events) >= 2, 20, "the boards' ports")
            assert [(e.action, e.device.subsystem, e.device.model_id) for e in events] == [
                ("add", "tty", "0005")
            ] * 2
            first = [e.device for e in events]
            os.kill(bus.process.pid, signal.SIGKILL)  # the bus removes the boards, restarts the rack
            await until(lambda: len(events) >= 6, 20, "the boards to come back")
            assert {e.device.key for e in events[2:4]} == {d.key for d in first}
            assert [e.action for e in events[2:]] == ["remove", "remove", "add", "add"]
            assert {e.device.serial for e in events[4:]} == {d.serial for d in first}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            process = bus.process
            await bus.close()
            assert process.returncode is not None

    asyncio.run(scenario())
    assert "rack ready" in (tmp_path / "virtual" / "rack.log").read_text()


def test_bootrom_complete_image_rule() -> None:
    image = app_uf2("2.0.0", "rp2350")
    blocks = [image[i : i + 512] for i in range(0, len(image), 512)]
    e10 = uf2.from_binary(b"\xef" * 256, 0x10FFFF00, uf2.RP2_ABSOLUTE)  # picotool's extra block
    not_main = bytearray(blocks[0])
    not_main[8] |= uf2.FLAG_NOT_MAIN_FLASH
    odd_payload = uf2.from_binary(b"\x01" * 128, FLASH_BASE, uf2.RP2350_ARM_S, payload_size=128)
    assembler = ImageAssembler(accepted_families("rp2350"))

    assert not assembler.feed(b"\x00" * 512, now=0.0)
    assert not assembler.feed(bytes(not_main), now=0.0)
    assert not assembler.feed(odd_payload, now=0.0)
    assert not assembler.feed(app_uf2("2.0.0", "rp2040", family=uf2.RP2040)[:512], now=0.0)
    assert assembler.feed(e10, now=0.0)
    assert assembler.ready(0.3, now=0.2) is None  # not idle yet
    for block in reversed(blocks):  # any order
        assert assembler.feed(block, now=0.1)
    assert assembler.ready(0.3, now=0.3) is None
    assert assembler.ready(0.3, now=0.5) == image  # the largest complete group, not the E10 block
    assert (assembler.accepted, assembler.ignored) == (len(blocks) + 1, 4)

    alone = ImageAssembler(accepted_families("rp2040"))
    assert not alone.feed(e10, now=0.0)  # the RP2040 takes only its own family
    assert alone.ready(0.3, now=9.0) is None
    for block in blocks[:-1]:
        alone.feed(block, now=0.0)
    assert alone.ready(0.3, now=9.0) is None


def test_long_state_paths_use_an_abstract_socket(rack_factory, tmp_path: Path) -> None:
    state_dir = tmp_path / ("x" * 60) / ("y" * 60) / "virtual"
    assert socket_address(default_socket_path(state_dir)).startswith("\0picofleet-rack-")
    rack = rack_factory("1:rp2350", state_dir=state_dir)
    assert rack.boards()[0]["state"] == "application"
    assert not (state_dir / "rack.sock").exists()


def test_concurrent_adds_get_a_slot_each_and_survive_a_restart(rack_factory) -> None:
    rack = rack_factory("1:rp2040")
    board_types = ("rp2040", "rp2350", "pico2-ice")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: rack.request("add", board_type=board_types[i % 3]), range(8)))
    assert all(answer["ok"] for answer in answers), answers
    assert sorted(answer["board"]["slot"] for answer in answers) == list(range(1, 9))
    serials = {answer["serial"] for answer in answers}
    assert len(serials) == 8
    stored = json.loads((rack.state_dir / "rack.json").read_text())
    assert [record["slot"] for record in stored] == list(range(9))
    assert all(record["plugged"] for record in stored)  # saved after the boards were plugged

    rack.stop()
    again = rack_factory("1:rp2040")
    boards = again.boards()
    assert [board["slot"] for board in boards] == list(range(9))
    assert serials <= {board["serial"] for board in boards}
    assert "invalid board record" not in again.log()


def test_requests_fail_when_the_board_does_not_get_there(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(rack_module, "TRANSITION_WAIT", 0.1)
    monkeypatch.setattr(
        VirtualBoard, "start", lambda self, plugged: setattr(self, "_plugged", plugged)
    )  # never boots
    rack = rack_module.Rack(tmp_path / "virtual", {"rp2040": 1})
    (board,) = rack.setup()

    async def scenario() -> list[dict]:
        requests = [
            {"op": "unplug", "serial": board.serial},
            {"op": "plug", "serial": board.serial},
            {"op": "bootsel", "serial": board.serial},
            {"op": "add", "board_type": "rp2350"},
        ]
        return [await rack._dispatch(request) for request in requests]

    try:
        unplugged, plugged, bootsel, added = asyncio.run(scenario())
        stored = json.loads((rack.state_dir / "rack.json").read_text())
    finally:
        for each in rack.boards.values():
            each.join()
        os.close(rack._lock_fd)
    assert unplugged["ok"]
    assert plugged == {"ok": False, "error": f"timed out waiting for the board to boot ({board.serial})"}
    assert bootsel["error"] == f"timed out waiting for the board to enter its bootloader ({board.serial})"
    assert not added["ok"] and added["error"].startswith("timed out waiting for the board to boot (")
    assert [(record["board_type"], record["plugged"]) for record in stored] == [
        ("rp2040", True),
        ("rp2350", True),
    ]


def test_a_stopped_board_never_writes_to_its_closed_wake_pipe(tmp_path: Path) -> None:
    boards = [VirtualBoard(f"{n:016X}", "rp2040", n, tmp_path, lambda action, device: None) for n in range(2)]
    boards[0].start(plugged=False)
    for board in boards:
        board.stop()
        board.join(5)  # the first board's thread closed its pipe; the second, never started, here
    read_end, write_end = os.pipe()  # most likely the numbers the boards' pipes had
    try:
        os.set_blocking(read_end, False)
        for board in boards:
            board.plug()
            board.bootsel()
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_rack_arguments_and_exit_statuses(rack_factory, tmp_path: Path) -> None:
    assert rack_module.parse_boards("2:rp2040, 1,,3:rp2040") == {"rp2040": 5, "pico2-ice": 1}
    for bad in ("x", "300:rp2040"):
        with pytest.raises(ValueError) as expected:
            parse_simulate(bad)
        with pytest.raises(rack_module.RackError, match=re.escape(str(expected.value))):
            rack_module.parse_boards(bad)

    def rack_command(boards: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "picofleet.plugins.virtual.rack"]
        command += ["--state", str(tmp_path / "virtual"), "--boards", boards, "--ignore-stdin"]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    refused = rack_command("1:acme-relay")
    assert refused.returncode == 2 and "rack: unknown board type 'acme-relay'" in refused.stderr
    rack_factory("1:rp2040")
    busy = rack_command("1:rp2040")  # the state directory is in use: not an argument error
    assert busy.returncode == 1 and "another rack is running" in busy.stderr


def test_the_discovery_hook_leaves_out_board_types_it_cannot_simulate(tmp_path: Path, caplog) -> None:
    def sources(simulate: str) -> list:
        caplog.clear()
        config = load_config({"data": str(tmp_path), "simulate": simulate}, environ={})
        with caplog.at_level(logging.ERROR, logger="picofleet.plugins.virtual"):
            return virtual.picofleet_discovery_sources(config)

    (bus,) = sources("1:acme-relay,2:rp2040,1:acme-relay,1:zeta")
    assert bus.spec == "2:rp2040"
    (error,) = caplog.records
    assert error.levelno == logging.ERROR
    assert "acme-relay, zeta" in error.getMessage() and "rp2040, rp2350, pico2-ice" in error.getMessage()
    assert sources("3:acme-relay") == []
    assert "acme-relay" in caplog.records[0].getMessage() and len(caplog.records) == 1


def test_the_bus_does_not_restart_a_rack_that_refuses_its_arguments(tmp_path: Path, caplog) -> None:
    bus = VirtualBus(load_config({"data": str(tmp_path), "simulate": "1:acme-relay"}, environ={}))

    async def scenario() -> None:
        with pytest.raises(RackRefused, match="unknown board type 'acme-relay'"):
            await asyncio.wait_for(bus.run(lambda event: None), 30)
        process = bus.process
        assert process is not None and process.returncode == 2
        with pytest.raises(RackRefused, match="not restarting it"):
            await asyncio.wait_for(bus.run(lambda event: None), 5)
        assert bus.process is process
        await bus.close()

    with caplog.at_level(logging.INFO, logger="picofleet.plugins.virtual.bus"):
        asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert sum("started the rack" in message for message in messages) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and "unknown board type 'acme-relay'" in errors[0]
