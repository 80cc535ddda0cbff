"""The evaluation firmware of a board: which one the plugins name for a kind, and its flash job."""

from __future__ import annotations

from picofleet.firmware.formats import image, uf2
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.models import BoardError, BoardRef, EvaluationFirmware


async def evaluation_firmware(
    manager: DeviceManager, board: BoardRef, kind: str
) -> EvaluationFirmware | None:
    """Ask the plugins which firmware ``board`` needs for ``kind`` (``None``: it cannot run it).

    Raises BoardError when a plugin fails or is slower than the hook's time limit (``call_hook``).
    """
    firmware = await manager.call_hook(
        "picofleet_evaluation_firmware", board=board, kind=kind, config=manager.config
    )
    if firmware is not None and not isinstance(firmware, EvaluationFirmware):
        raise BoardError(f"a plugin's picofleet_evaluation_firmware returned {firmware!r}")
    return firmware


def evaluation_job(data: bytes) -> FlashJob:
    """The flash job of an evaluation firmware's UF2 (CPU work: run it in a thread); no commit."""
    try:
        parsed = uf2.read_uf2(data)
        version = image.uf2_version(parsed)
    except uf2.UF2Error as error:
        raise BoardError(f"the evaluation firmware is not a valid UF2 file: {error}") from None
    return FlashJob(data, parsed.families, version, evaluation=True)
