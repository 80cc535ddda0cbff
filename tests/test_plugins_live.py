"""Plugins in a running gateway: a broken third-party plugin does not take it down; every board type
restarts and identifies; a pip-installed plugin is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.boards import rack_boards
from tests.helpers.gateway import idle_boards, wait_for
from tests.helpers.slow_plugins import FAILING_SOURCES, write_plugin
from tests.test_plugin_contract import install_example_plugin


def test_broken_third_party_plugins_are_skipped_and_the_gateway_serves(
    gateway_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    site = tmp_path / "site"
    write_plugin(site, "broken_board", "raise RuntimeError('this plugin is broken on purpose')\n")
    write_plugin(site, "failing_sources", FAILING_SOURCES)
    gateway = gateway_factory("--simulate", "1", env={"PYTHONPATH": str(site)})
    devices = idle_boards(gateway, 1)
    assert devices[0]["BoardType"] == "pico2-ice"
    assert "plugin broken_board skipped: RuntimeError: this plugin is broken on purpose" in gateway.output()
    assert "plugin failing_sources: picofleet_discovery_sources failed (RuntimeError: no sources today)" in (
        gateway.output()
    )


def test_disabled_virtual_plugin_means_no_virtual_boards(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"PICOFLEET_DISABLE_PLUGINS": "virtual"})
    assert gateway.devices() == []
    assert "plugin virtual is disabled" in gateway.output()
    assert "--simulate was given but no plugin provides virtual boards" in gateway.output()


@pytest.mark.parametrize("board_type", ["rp2040", "rp2350", "pico2-ice"])
def test_every_board_type_is_identified_restarted_and_blinked(gateway_factory, board_type: str) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", f"1:{board_type}")
    device = idle_boards(gateway, 1)[0]
    serial = device["LocalUUID"]
    assert device["BoardType"] == board_type  # rp2040/rp2350 share MicroPython's USB id: the firmware told
    assert device["FirmwareVersion"] == "picofleet-app 1.0.0"

    assert gateway.put(f"/v1/devices/{serial}/identify").status_code == 200
    wait_for(lambda: rack_boards(gateway.data)[serial]["led_blinking"], 5, "the LED to blink")

    boots = rack_boards(gateway.data)[serial]["boots"]
    assert gateway.put(f"/v1/devices/{serial}/restart").status_code == 200
    wait_for(lambda: rack_boards(gateway.data)[serial]["boots"] > boots, 10, "a reboot")
    wait_for(
        lambda: (
            (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Idle" and not d["RestartFlag"]
        ),
        10,
        "Idle with the flag cleared",
    )


def test_pip_installed_plugin_is_loaded_by_the_gateway(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    install_example_plugin(tmp_path / "site")
    gateway = gateway_factory("--simulate", "0", env={"PYTHONPATH": str(tmp_path / "site")})
    assert "acme-relay" in gateway.output()  # board types named in the listening line
