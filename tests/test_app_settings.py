"""The reference firmware's settings and FPGA image ops on virtual boards (issue 14, items 1 and 2).

A rack of real virtual boards, their ptys opened with pyserial, the host client of
firmware/host/protocol.py: what a board stores lives in its simulated flash (``storage/<serial>/``
of the rack's state) and survives a reboot, an unplug/replug and a rack restart; what it refuses
is an ``ok: false`` with the reason and changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from picofleet.firmware.host.errors import FirmwareError
from picofleet.firmware.host.protocol import FirmwareClient
from tests.helpers.fpga import FpgaBuild, session_counter
from tests.helpers.rack import RackProcess, Subscription

pytestmark = pytest.mark.timeout(120)

ENVIRONMENT = {"MODE": "lab", "GREETING": "grüß dich"}
CONFIG = {"RATE": "5"}


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> FpgaBuild:
    return session_counter(tmp_path_factory)


def start(state_dir: Path) -> tuple[RackProcess, Subscription, dict[str, dict]]:
    """A rack with a pico2-ice and an rp2040 running picofleet-app: (rack, events, tty device by type)."""
    rack = RackProcess(state_dir, "1:pico2-ice,1:rp2040", env={"PICOFLEET_SIM_BOOT_DELAY": "0.05"}).start()
    events = rack.subscribe()
    devices = events.initial()
    types = {board["serial"]: board["board_type"] for board in rack.boards()}
    return rack, events, {types[d["key"].split("/")[1]]: d for d in devices if d["subsystem"] == "tty"}


@pytest.fixture
def rack(tmp_path: Path) -> Iterator[tuple[RackProcess, Subscription, dict[str, dict]]]:
    started = start(tmp_path / "virtual")
    with started[0]:
        yield started


def identify(device: dict) -> dict:
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        return FirmwareClient(port).identify()


def test_settings_are_stored_and_survive_reboot_replug_and_a_rack_restart(rack, tmp_path: Path) -> None:
    rack_process, events, devices = rack
    ice = devices["pico2-ice"]
    serial_number = ice["key"].split("/")[1]
    before = identify(ice)
    assert (before["environment"], before["config"], before["fpga"]) == ({}, {}, None)

    with serial.Serial(ice["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        assert client.apply_settings(ENVIRONMENT, CONFIG) == {"environment": ENVIRONMENT, "config": CONFIG}
        client.reboot()
    events.expect("remove", "tty", serial_number)
    ice = events.expect("add", "tty", serial_number)
    assert (identify(ice)["environment"], identify(ice)["config"]) == (ENVIRONMENT, CONFIG)

    rack_process.request("unplug", serial=serial_number)
    events.expect("remove", "tty", serial_number)
    rack_process.request("plug", serial=serial_number)
    ice = events.expect("add", "tty", serial_number)
    assert identify(ice)["environment"] == ENVIRONMENT

    rack_process.stop()
    again, _, devices = start(tmp_path / "virtual")
    with again:
        answer = identify(devices["pico2-ice"])
        assert (answer["environment"], answer["config"]) == (ENVIRONMENT, CONFIG)
        assert identify(devices["rp2040"])["environment"] == {}  # every board has its own


@pytest.mark.parametrize(
    ("environment", "config", "reason"),
    [
        ({"MODE": 5}, {}, "environment.MODE must be a string"),
        ([], {}, "environment must be an object of string values"),
        ({}, {"": "x"}, "config names must be 1 to 128 characters"),
        ({f"K{i}": "v" for i in range(65)}, {}, "environment has 65 entries: at most 64"),
        ({"BIG": "x" * 1500}, {"ALSO": "y" * 600}, "environment and config hold 2107 bytes: at most 2048"),
    ],
)
def test_refused_settings_say_why_and_change_nothing(rack, environment, config, reason: str) -> None:
    _, _, devices = rack
    device = devices["rp2040"]
    with serial.Serial(device["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        client.apply_settings({"KEEP": "me"}, {})
        with pytest.raises(FirmwareError, match=f"^board answered: {reason}"):
            client.request("settings", environment=environment, config=config)
        answer = client.identify()
    assert (answer["environment"], answer["config"]) == ({"KEEP": "me"}, {})


def test_a_request_over_the_line_limit_is_refused_before_it_is_sent(rack) -> None:
    _, _, devices = rack
    with (
        serial.Serial(devices["rp2040"]["devname"], 115200, timeout=0.1, exclusive=True) as port,
        pytest.raises(FirmwareError, match="over the protocol's 4096-byte line limit"),
    ):
        FirmwareClient(port).apply_settings({"X": "\u00e9" * 1000}, {})  # 6 bytes each as JSON


def test_an_fpga_image_is_stored_configured_and_configured_again_at_every_boot(rack, counter) -> None:
    rack_process, events, devices = rack
    ice = devices["pico2-ice"]
    serial_number = ice["key"].split("/")[1]
    bitstream = counter.bin.read_bytes()
    sha256 = hashlib.sha256(bitstream).hexdigest()
    progress: list[tuple[int, int]] = []
    with serial.Serial(ice["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        answer = client.write_fpga_image(bitstream, lambda done, total: progress.append((done, total)))
        assert answer == {"sha256": sha256, "configured": True}
        assert progress[-1] == (len(bitstream), len(bitstream)) and len(progress) > 10
        assert client.identify()["fpga"] == {"sha256": sha256, "configured": True}
        client.reboot()
    events.expect("remove", "tty", serial_number)
    ice = events.expect("add", "tty", serial_number)
    with serial.Serial(ice["devname"], 115200, timeout=0.1, exclusive=True) as port:
        logs: list[str] = []
        client = FirmwareClient(port, on_log=lambda level, text: logs.append(text))
        assert client.identify()["fpga"] == {"sha256": sha256, "configured": True}
    assert any(f"FPGA configured from fpga.bin (sha256 {sha256})" in line for line in logs), logs
    stored = rack_process.state_dir / "storage" / serial_number / "fpga.bin"
    assert stored.read_bytes() == bitstream

    with serial.Serial(ice["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        client.clear_fpga_image()
        assert client.identify()["fpga"] is None
    assert not stored.exists()


def test_an_image_the_fpga_rejects_is_kept_and_reported_not_configured(rack, counter) -> None:
    _, _, devices = rack
    garbage = bytearray(counter.bin.read_bytes())
    garbage[len(garbage) // 2 :] = bytes(len(garbage) - len(garbage) // 2)  # the second half zeroed
    with serial.Serial(devices["pico2-ice"]["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        answer = client.write_fpga_image(bytes(garbage))
        assert answer["configured"] is False
        assert answer["error"].startswith("FPGA did not configure"), answer
        assert client.identify()["fpga"]["configured"] is False


def test_fpga_transfers_are_checked(rack, counter) -> None:
    _, _, devices = rack
    bitstream = counter.bin.read_bytes()
    with serial.Serial(devices["pico2-ice"]["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        client.request("fpga_begin", sha256="0" * 64, size=4)
        client.request("fpga_chunk", offset=0, data="AAECAw==")
        with pytest.raises(FirmwareError, match="sha256 mismatch: the data received hashes to 054edec1"):
            client.request("fpga_end")
        with pytest.raises(FirmwareError, match="no FPGA image transfer in progress"):
            client.request("fpga_chunk", offset=0, data="AAECAw==")
        client.request("fpga_begin", sha256="0" * 64, size=2)
        with pytest.raises(FirmwareError, match="offset must be 0"):
            client.request("fpga_chunk", offset=5, data="AAE=")
        with pytest.raises(FirmwareError, match="chunk goes past the announced size of 2 bytes"):
            client.request("fpga_chunk", offset=0, data="AAECAw==")
        with pytest.raises(FirmwareError, match="size must be an integer between 1 and 135100"):
            client.request("fpga_begin", sha256="0" * 64, size=len(bitstream) * 2)
        assert client.identify()["fpga"] is None  # nothing was stored
    with serial.Serial(devices["rp2040"]["devname"], 115200, timeout=0.1, exclusive=True) as port:
        client = FirmwareClient(port)
        with pytest.raises(FirmwareError, match=r"^board answered: this board has no FPGA$"):
            client.write_fpga_image(bitstream)
        assert "fpga" not in client.identify()
