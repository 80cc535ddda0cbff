"""Board plugin (virtual): virtual boards on a simulated USB bus, for running without hardware.

``picofleet gateway --simulate 4`` (``GatewayConfig.simulate``) makes this plugin contribute a
:class:`~picofleet.plugins.virtual.bus.VirtualBus` discovery source. It starts the rack process
(rack.py) whose boards are real pseudo-terminals running the reference firmware and ROM UF2
bootloaders with drive directories; the gateway core and the rp2040/rp2350/pico2_ice plugins then
classify and drive them exactly like hardware. This plugin declares no board types and
implements no board hooks. Its version is the picofleet distribution's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from picofleet.gateway.hookspecs import hookimpl

if TYPE_CHECKING:
    from picofleet.gateway.config import GatewayConfig
    from picofleet.gateway.models import DiscoverySource


@hookimpl
def picofleet_discovery_sources(config: GatewayConfig) -> list[DiscoverySource]:
    """Contribute the virtual USB bus when the configuration asks for virtual boards."""
    if not any(count > 0 for count, _ in config.simulate):
        return []
    from .bus import VirtualBus

    return [VirtualBus(config)]
