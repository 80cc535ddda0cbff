"""The evaluation firmware of a board: which one the plugins name for a kind, and its flash job."""

from __future__ import annotations

import asyncio
import functools
import logging

from picofleet.firmware.formats import image, uf2
from picofleet.gateway.boards.flash_job import FlashJob
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.gateway.hookspecs import HOOK_TIME_LIMITS
from picofleet.gateway.models import BoardError, BoardRef, EvaluationFirmware

log = logging.getLogger("picofleet.reservations")

EVALUATION_FIRMWARE_TIMEOUT = 2 * HOOK_TIME_LIMITS["picofleet_evaluation_firmware"]
"""Time limit of ``picofleet_evaluation_firmware`` (twice what the contract asks)."""


async def evaluation_firmware(
    manager: DeviceManager, board: BoardRef, kind: str
) -> EvaluationFirmware | None:
    """Ask the plugins which firmware ``board`` needs for ``kind`` (``None``: it cannot run it).

    Raises BoardError when a plugin fails or is slower than EVALUATION_FIRMWARE_TIMEOUT.
    """
    hook = functools.partial(
        manager.plugins.hook.picofleet_evaluation_firmware,
        board=board,
        kind=kind,
        config=manager.config,
    )
    try:
        async with asyncio.timeout(EVALUATION_FIRMWARE_TIMEOUT):
            firmware = await manager.run_blocking(hook)
    except BoardError:
        raise
    except TimeoutError:
        raise BoardError(
            f"picofleet_evaluation_firmware did not return within {EVALUATION_FIRMWARE_TIMEOUT:g} s"
        ) from None
    except Exception as error:
        log.exception("hook picofleet_evaluation_firmware raised")
        raise BoardError(
            f"picofleet_evaluation_firmware failed in a plugin: {type(error).__name__}: {error}"
        ) from None
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
