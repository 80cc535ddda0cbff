"""Helpers to drive the virtual rack of a gateway under test and to build firmware images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from picofleet.firmware.formats import image, uf2
from picofleet.plugins.virtual.control import RackUnavailable, rack_request
from tests.helpers.wait import wait_for


def rack(data: Path, op: str, **fields: Any) -> dict[str, Any]:
    """Send one request to the virtual rack of the gateway whose --data is ``data``."""
    answer = rack_request(data / "virtual", {"op": op, **fields})
    assert answer.get("ok"), answer
    return answer


def rack_boards(data: Path) -> dict[str, dict[str, Any]]:
    """The rack's boards by serial."""
    return {board["serial"]: board for board in rack(data, "list")["boards"]}


def wait_rack_gone(data: Path, timeout: float = 10.0) -> None:
    """Wait until the virtual rack of the gateway on ``data`` no longer answers (it went with its
    gateway, e.g. one killed with ``kill -9``)."""

    def gone() -> bool:
        try:
            rack_boards(data)
        except (RackUnavailable, AssertionError):
            return True
        return False

    wait_for(gone, timeout, "the rack to go with its gateway")


def app_uf2(
    version: str, board: str = "pico2-ice", family: int = uf2.RP2350_ARM_S, size: int = 4096
) -> bytes:
    """A UF2 of picofleet-app ``version`` for ``board`` in ``family``."""
    return uf2.from_binary(
        image.make_app_image("picofleet-app", version, board, size), image.FLASH_BASE, family
    )
