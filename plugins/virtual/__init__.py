"""Board plugin (virtual): virtual boards on a simulated USB bus, for running without hardware.

``picofleet gateway --simulate 4`` (``GatewayConfig.simulate``) makes this plugin contribute a
:class:`~picofleet.plugins.virtual.bus.VirtualBus` discovery source. It starts the rack process
(rack.py) whose boards are real pseudo-terminals running the reference firmware and ROM UF2
bootloaders with drive directories; the gateway core and the rp2040/rp2350/pico2_ice plugins then
classify and drive them exactly like hardware. This plugin declares no board types; its one board
hook gives virtual boards their evaluation firmware (the pulse-count image the rack boots with a
simulated FPGA). Its version is the picofleet distribution's.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from picofleet.firmware.pico2_ice import pulsecount
from picofleet.gateway.hookspecs import hookimpl

if TYPE_CHECKING:
    from picofleet.gateway.config import GatewayConfig
    from picofleet.gateway.models import BoardRef, DiscoverySource, EvaluationFirmware

log = logging.getLogger(__name__)


@hookimpl
def picofleet_discovery_sources(config: GatewayConfig) -> list[DiscoverySource]:
    """Contribute the virtual USB bus when the configuration asks for virtual boards.

    Board types the rack cannot simulate (another plugin's, say) are left out, with one error line.
    """
    from picofleet.plugins.virtual.identities import BOARD_TYPES

    unsupported = sorted({board_type for _, board_type in config.simulate if board_type not in BOARD_TYPES})
    if unsupported:
        log.error(
            "virtual boards: cannot simulate board type(s) %s (supported: %s); they are left out",
            ", ".join(unsupported),
            ", ".join(BOARD_TYPES),
        )
    simulate = tuple(
        (count, board_type) for count, board_type in config.simulate if board_type in BOARD_TYPES
    )
    if not any(count > 0 for count, _ in simulate):
        return []
    from picofleet.plugins.virtual.bus import VirtualBus

    return [VirtualBus(dataclasses.replace(config, simulate=simulate))]


@hookimpl
def picofleet_evaluation_firmware(
    board: BoardRef, kind: str, config: GatewayConfig
) -> EvaluationFirmware | None:
    """Virtual boards evaluate ``pulsecount``: the pulse-count app image, as a UF2 of their family."""
    if not board.virtual or kind != "pulsecount":
        return None
    from picofleet.firmware.formats import image, uf2
    from picofleet.gateway.models import EvaluationFirmware
    from picofleet.plugins.virtual.identities import BOARD_TYPES, factory_family

    if board.board_type not in BOARD_TYPES:
        return None
    flat = image.make_app_image(pulsecount.FIRMWARE, pulsecount.VERSION, board.board_type)
    return EvaluationFirmware(
        name=pulsecount.FIRMWARE,
        version=pulsecount.VERSION,
        uf2=uf2.from_binary(flat, image.FLASH_BASE, factory_family(board.board_type)),
    )
