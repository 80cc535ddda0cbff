"""`picofleet flash` against a real gateway with one virtual pico2-ice board."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from picofleet.commands.flash import ProgressView
from picofleet.firmware.formats import image, uf2
from tests.helpers.boards import app_uf2
from tests.helpers.gateway import GatewayProcess, idle_boards, running_gateway, wait_for

CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens, a request would fail loudly


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with one virtual pico2-ice board for the whole module."""
    with running_gateway(tmp_path_factory.mktemp("flash-cli") / "data", 1) as process:
        yield process


@pytest.fixture
def serial(gateway: GatewayProcess) -> str:
    return gateway.devices()[0]["LocalUUID"]


def flash_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `picofleet flash ARGS` as a user would (stdout is a pipe: plain lines)."""
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "flash", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("picofleet flash: ")
    return lines[0]


def test_flash_sets_commit_and_firmware_version(gateway: GatewayProcess, serial: str, tmp_path: Path) -> None:
    path = tmp_path / "app-2.0.0.uf2"
    path.write_bytes(app_uf2("2.0.0", size=64 * 1024))
    done = flash_cli("--gateway", gateway.url, "--device", serial, str(path), "--commit", "abc")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"flashing {path.stat().st_size} bytes onto ")
    assert ": Idle, running picofleet-app 2.0.0, Commit abc (" in lines[-1]
    assert "\r" not in done.stdout  # not a terminal: plain lines
    device = gateway.get(f"/v1/devices/{serial}").json()
    assert (device["Status"], device["Commit"], device["FirmwareVersion"]) == (
        "Idle",
        "abc",
        "picofleet-app 2.0.0",
    )


def test_wrong_family_exits_1_with_the_gateways_reason(
    gateway: GatewayProcess, serial: str, tmp_path: Path
) -> None:
    path = tmp_path / "rp2040.uf2"
    path.write_bytes(app_uf2("2.0.0", board="rp2040", family=uf2.RP2040))
    line = one_line_error(flash_cli("--gateway", gateway.url, "--device", serial, str(path)))
    assert "the gateway refused the image (422): UF2 family rp2040 cannot run on a pico2-ice" in line


def test_garbage_file_exits_1_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "garbage.uf2"
    path.write_bytes(b"this is not firmware" * 40)
    line = one_line_error(flash_cli("--gateway", CLOSED_PORT_URL, "--device", "X", str(path)))
    assert line == (
        f"picofleet flash: {path} is not a valid UF2 file: file size 800 is not a multiple of 512 "
        "(last block, index 1, has 288 bytes)"
    )
    line = one_line_error(flash_cli("--gateway", CLOSED_PORT_URL, "--device", "X", str(tmp_path / "nope")))
    assert "No such file or directory" in line


def test_unknown_device_exits_1_with_the_404_reason(gateway: GatewayProcess, tmp_path: Path) -> None:
    path = tmp_path / "app.uf2"
    path.write_bytes(app_uf2("2.0.1"))
    line = one_line_error(flash_cli("--gateway", gateway.url, "--device", "nope", str(path)))
    assert line == "picofleet flash: no device with LocalUUID or ResinUUID 'nope'"


def test_unreachable_gateway_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "app.uf2"
    path.write_bytes(app_uf2("2.0.1"))
    line = one_line_error(flash_cli("--gateway", CLOSED_PORT_URL, "--device", "X", str(path)))
    assert line.startswith(f"picofleet flash: cannot talk to the gateway at {CLOSED_PORT_URL}: ")


def test_time_limit_while_the_gateway_is_paused(gateway: GatewayProcess, serial: str, tmp_path: Path) -> None:
    """Last in the module: it leaves a flash queued on a paused gateway."""
    assert gateway.put("/v1/enm/status", json={"targetStatus": "Paused"}).status_code == 200
    wait_for(
        lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 10, "the gateway to pause"
    )
    path = tmp_path / "app.uf2"
    path.write_bytes(app_uf2("3.0.0"))
    line = one_line_error(
        flash_cli("--gateway", gateway.url, "--device", serial, str(path), "--timeout", "1")
    )
    assert line.startswith("picofleet flash: timed out after 1 s; the device is ")


def test_broken_board_exits_1_with_the_status_reason(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Firmware that is not picofleet-app: the board never reports the promised version: Broken."""
    gateway = gateway_factory("--simulate", "1", env={"ENM_UPDATE_RETRIES": "0"})
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    path = tmp_path / "other.uf2"
    other = image.make_app_image("other-firmware", "9.9.9", "pico2-ice")
    path.write_bytes(uf2.from_binary(other, image.FLASH_BASE, uf2.RP2350_ARM_S))
    done = flash_cli("--gateway", gateway.url, "--device", serial, str(path), "--commit", "bad")
    line = one_line_error(done)
    assert line.startswith("picofleet flash: the flash failed: flash failed after 1 attempt(s): "), line
    device = gateway.get(f"/v1/devices/{serial}").json()
    assert device["Status"] == "Broken" and device["StatusReason"] in line
    assert device["Commit"] is None


def test_progress_bar_on_a_terminal() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.update({"Status": "Installing", "Progress": None})
    view.update({"Status": "Flashing", "Progress": {"done": 512, "total": 2048}})
    view.update({"Status": "Flashing", "Progress": {"done": 2048, "total": 2048}})
    view.update({"Status": "Starting", "Progress": None})
    view.update({"Status": "Idle", "Progress": None})
    view.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[0].startswith("Installing [------------------------------]")
    assert frames[1] == "Flashing   [#######-----------------------]  25%  512/2048 bytes"
    assert frames[2] == "Flashing   [##############################] 100%  2048/2048 bytes"
    assert frames[3].startswith("Starting   [######") and frames[-1].startswith("Idle ")


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    for done in (0, 256, 1024, 2048):
        view.update({"Status": "Flashing", "Progress": {"done": done, "total": 2048}})
    view.update({"Status": "Idle", "Progress": None, "StatusReason": None})
    assert out.getvalue().splitlines() == [
        "Flashing",
        "  0/2048 bytes (0%)",
        "  1024/2048 bytes (50%)",
        "  2048/2048 bytes (100%)",
        "Idle",
    ]
