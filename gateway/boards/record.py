"""The device record the ENM API serves, and the board status vocabulary.

Records carry exactly edge-node-manager's fields, in its order, plus picofleet's additions
(documented in docs/api.md): ``Port`` (serial device path or null), ``FirmwareVersion``
(what the firmware said in ``identify``, or null), ``StatusReason`` (why a board is Broken or
waiting, or null), ``Progress`` (flash progress ``{"done": bytes, "total": bytes}`` or null) and
``PendingFlash`` (the flash queued or under way: ``{"sha256", "commit", "version"}``, or null),
``LocalMode`` (true while an operator's own flash keeps the board off the fleet's target),
``FailedRelease`` (``{"commit", "reason", "time"}`` of a release that did not boot on the board and
was rolled back, or null), ``RunningImage`` (``{"sha256", "commit", "version"}`` of the last image
the gateway flashed that booted: what a rollback returns to), ``FpgaImage`` (the sha256 of the
iCE40 image the board reports it configured at boot, or null) and ``TargetFpgaImage`` (the sha256
of the image the target asks for, or null).
``UsbPort`` (the physical USB port it was last seen on: how an RP2040 in its bootloader, whose
USB serial is the same on every chip, is recognised). ``Port`` and ``Progress`` are live values
and are not stored.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

ENM_FIELDS = (
    "ApplicationUUID",
    "BoardType",
    "Name",
    "LocalUUID",
    "ResinUUID",
    "Commit",
    "TargetCommit",
    "Status",
    "Config",
    "TargetConfig",
    "Environment",
    "TargetEnvironment",
    "RestartFlag",
    "DeleteFlag",
)
EXTRA_FIELDS = (
    "Port",
    "UsbPort",
    "FirmwareVersion",
    "StatusReason",
    "Progress",
    "PendingFlash",
    "LocalMode",
    "FailedRelease",
    "RunningImage",
    "FpgaImage",
    "TargetFpgaImage",
)
LIVE_FIELDS = frozenset({"Port", "Progress"})
RECORD_FIELDS = ENM_FIELDS + EXTRA_FIELDS


class Status(StrEnum):
    """A board's status; ENM's strings where they mean the same, new ones where ENM had none.

    See docs/states.md for the transitions.
    """

    OFFLINE = "Offline"  # not plugged in (or its USB device vanished)
    STARTING = "Starting"  # seen; the gateway is opening its port and asking who it is
    IDLE = "Idle"  # running its firmware, port held by the gateway, nothing to do
    DOWNLOADING = "Downloading"  # fetching the firmware asset for its target (fleet sync)
    INSTALLING = "Installing"  # asked to enter its UF2 bootloader for an update
    FLASHING = "Flashing"  # the UF2 is being written to its bootloader drive
    STOPPING = "Stopping"  # restarting on request; its port is closed
    BOOTLOADER = "Bootloader"  # sitting in its UF2 bootloader with nothing to flash
    BROKEN = "Broken"  # an operation failed after its retries; StatusReason says why
    RESERVED = "Reserved"  # reserved by a researcher (evaluation)
    EVALUATING = "Evaluating"  # running an evaluation


PORT_IDENTITY = "usb-port-"
"""LocalUUID prefix of a board known only by its USB port (first seen in an RP2040 bootloader)."""


def new_record(serial: str, board_type: str) -> dict[str, Any]:
    """A freshly provisioned record: LocalUUID = USB serial, ResinUUID a new random UUID."""
    return {
        "ApplicationUUID": None,
        "BoardType": board_type,
        "Name": "",
        "LocalUUID": serial,
        "ResinUUID": uuid.uuid4().hex,
        "Commit": None,
        "TargetCommit": None,
        "Status": Status.STARTING.value,
        "Config": None,
        "TargetConfig": {},
        "Environment": None,
        "TargetEnvironment": {},
        "RestartFlag": False,
        "DeleteFlag": False,
        "Port": None,
        "UsbPort": None,
        "FirmwareVersion": None,
        "StatusReason": None,
        "Progress": None,
        "PendingFlash": None,
        "LocalMode": False,
        "FailedRelease": None,
        "RunningImage": None,
        "FpgaImage": None,
        "TargetFpgaImage": None,
    }


def stored_form(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that is written to the database (live fields left out)."""
    return {key: value for key, value in record.items() if key not in LIVE_FIELDS}


def loaded_form(stored: dict[str, Any]) -> dict[str, Any]:
    """A record read back at start: every field present, the board Offline until it is seen."""
    record = new_record(str(stored.get("LocalUUID", "")), str(stored.get("BoardType", "")))
    record.update({key: value for key, value in stored.items() if key in RECORD_FIELDS})
    record.update(Status=Status.OFFLINE.value, Port=None, Progress=None)
    return record


def public_form(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the API serves it: ENM's fields in ENM's order, then picofleet's."""
    return {key: record.get(key) for key in RECORD_FIELDS}
