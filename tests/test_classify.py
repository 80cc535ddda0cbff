"""Classifying USB devices into sightings with the board types' rules."""

from __future__ import annotations

from picofleet.gateway.discovery.sightings import classify
from picofleet.gateway.models import UsbDevice
from picofleet.gateway.plugin_manager import load_plugins

BOARD_TYPES = load_plugins().board_types


def device(vid: str, pid: str, subsystem: str = "tty", serial: str = "E6614103E73F9A2B") -> UsbDevice:
    return UsbDevice(
        key=f"/sys/x/{vid}{pid}{subsystem}",
        subsystem=subsystem,
        devname="/dev/ttyACM0",  # type: ignore[arg-type]
        properties={
            "ID_VENDOR_ID": vid,
            "ID_MODEL_ID": pid,
            "ID_SERIAL_SHORT": serial,
            "ID_PATH": "usb-0:1.2",
            "ID_USB_INTERFACE_NUM": "00",
        },
    )


def test_each_usb_identity_is_the_right_board_in_the_right_mode() -> None:
    cases = {
        ("2e8a", "000a", "tty"): (("rp2040",), "application", "pico-sdk"),
        ("2e8a", "0009", "tty"): (("rp2350",), "application", "pico-sdk"),
        ("1209", "b1c0", "tty"): (("pico2-ice",), "application", "pico-ice"),
        ("2e8a", "0003", "block"): (("rp2040",), "bootloader", "bootrom"),
        ("2e8a", "000f", "block"): (("rp2350",), "bootloader", "bootrom"),
    }
    for (vid, pid, subsystem), (types, mode, firmware) in cases.items():
        sighting = classify(device(vid, pid, subsystem), BOARD_TYPES)
        assert sighting is not None
        assert (sighting.board_types, sighting.mode, sighting.firmware) == (types, mode, firmware), (vid, pid)
        # the RP2040 bootrom's serial is the same on every chip: it identifies no board
        assert sighting.serial == ("" if pid == "0003" else "E6614103E73F9A2B")


def test_micropython_is_ambiguous_until_the_firmware_says() -> None:
    sighting = classify(device("2e8a", "0005"), BOARD_TYPES)
    assert sighting is not None and sighting.ambiguous
    assert set(sighting.board_types) == {"rp2040", "rp2350"}


def test_hex_serials_are_one_identity_whatever_their_case_and_ports_match_across_modes() -> None:
    micropython = device("2e8a", "0005", serial="e6614103e73f9a2b")
    micropython.properties["ID_PATH"] = "platform-xhci-hcd.0-usb-0:1.2:1.0"
    bootrom = device("2e8a", "000f", "block", serial="E6614103E73F9A2B")  # RP2350: the chip's id
    bootrom.properties["ID_PATH"] = "platform-xhci-hcd.0-usb-0:1.2:1.0-scsi-0:0:0:0"
    app, boot = classify(micropython, BOARD_TYPES), classify(bootrom, BOARD_TYPES)
    assert app is not None and boot is not None
    assert app.serial == boot.serial == "E6614103E73F9A2B"
    assert app.usb_port == boot.usb_port == "platform-xhci-hcd.0-usb-0:1.2"
    bootrom.properties["PICOFLEET_USB_PORT"] = "1-1.2"
    assert classify(bootrom, BOARD_TYPES).usb_port == "1-1.2"  # type: ignore[union-attr]


def test_the_rp2040_bootrom_serial_identifies_no_board() -> None:
    sighting = classify(device("2e8a", "0003", "block", serial="E0C9125B0D9B"), BOARD_TYPES)
    assert sighting is not None and sighting.serial == "" and sighting.usb_port == "usb-0:1.2"


def test_unknown_devices_and_wrong_subsystems_are_ignored() -> None:
    assert classify(device("0403", "6001"), BOARD_TYPES) is None  # an FTDI cable
    second_port = device("1209", "b1c0")
    second_port.properties["ID_USB_INTERFACE_NUM"] = "02"  # a pico-ice-sdk app's UART bridge
    assert classify(second_port, BOARD_TYPES) is None
    assert classify(device("2e8a", "0003", "tty"), BOARD_TYPES) is None  # bootloader ids are block devices
