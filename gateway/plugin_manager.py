"""Loading board plugins with pluggy: entry points, blocking, validation and a description of each.

Plugins come from the ``picofleet`` entry-point group (built-in ones are registered there by
picofleet's own pyproject.toml, so they are loaded, listed and disabled exactly like third-party
ones). A plugin that fails to import, whose hooks do not match the contract
(``check_pending``), or whose board types are invalid is logged and skipped; the gateway keeps
running with the others. ``PICOFLEET_DISABLE_PLUGINS`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from picofleet import __version__
from picofleet.gateway import core_hooks, hookspecs
from picofleet.gateway.models import BoardType, DiscoverySource

if TYPE_CHECKING:
    from picofleet.gateway.config import GatewayConfig

log = logging.getLogger("picofleet.plugins")

CORE_PLUGIN = "core"


@dataclass
class PluginInfo:
    """What ``picofleet plugins`` shows about one plugin."""

    name: str
    version: str
    status: str  # "loaded", "disabled" or "failed"
    module: str = ""
    board_types: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "module": self.module,
            "board_types": self.board_types,
            "hooks": self.hooks,
            "error": self.error,
        }


class Plugins:
    """The loaded plugin set: the pluggy manager, the board types and a description of each plugin."""

    def __init__(
        self, manager: pluggy.PluginManager, infos: list[PluginInfo], board_types: dict[str, BoardType]
    ):
        self.manager = manager
        self.hook = manager.hook
        self.infos = infos
        self.board_types = board_types

    def discovery_sources(self, config: GatewayConfig) -> list[DiscoverySource]:
        """Every plugin's discovery sources; a plugin whose hook fails is logged and left out."""
        sources: list[DiscoverySource] = []
        for impl in self.hook.picofleet_discovery_sources.get_hookimpls():
            try:
                provided = impl.function(config=config) or []
                if not isinstance(provided, Iterable) or not all(
                    callable(getattr(source, "run", None)) for source in provided
                ):
                    raise TypeError("picofleet_discovery_sources must return objects with run(emit)")
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                log.error(
                    "plugin %s: picofleet_discovery_sources failed (%s); its sources are left out",
                    impl.plugin_name,
                    reason,
                )
                continue
            sources.extend(provided)
        return sources

    def startup(self, config: GatewayConfig) -> None:
        """Call every plugin's ``picofleet_startup`` (blocking); a plugin whose hook fails is logged."""
        self._call_each("picofleet_startup", config)

    def shutdown(self, config: GatewayConfig) -> None:
        """Call every plugin's ``picofleet_shutdown`` (blocking); a failing one does not stop the others."""
        self._call_each("picofleet_shutdown", config)

    def _call_each(self, name: str, config: GatewayConfig) -> None:
        for impl in getattr(self.hook, name).get_hookimpls():
            try:
                impl.function(config=config)
            except Exception:
                log.exception("plugin %s: %s failed", impl.plugin_name, name)


def _hooks_of(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    callers = manager.get_hookcallers(plugin) or []
    return sorted(caller.name for caller in callers)


def _check_board_types(value: object, taken: dict[str, BoardType], plugin_name: str) -> list[BoardType]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(item, BoardType) for item in value):
        raise TypeError("picofleet_board_types must return a list of BoardType")
    for board_type in value:
        if board_type.name in taken:
            raise ValueError(f"board type {board_type.name!r} is already provided by another plugin")
        if not board_type.usb_rules:
            raise ValueError(f"board type {board_type.name!r} has no USB rules")
    return list(value)


def _register(
    manager: pluggy.PluginManager, name: str, plugin: object, board_types: dict[str, BoardType]
) -> list[BoardType]:
    """Register one plugin; undo the registration and raise if it breaks the contract."""
    manager.register(plugin, name=name)
    try:
        manager.check_pending()
        provided: list[BoardType] = []
        for impl in manager.hook.picofleet_board_types.get_hookimpls():
            if impl.plugin is plugin:
                provided = _check_board_types(impl.function(), board_types, name)
        return provided
    except Exception:
        manager.unregister(plugin)
        raise


def load_plugins(disabled: Iterable[str] = (), extra: Iterable[tuple[str, object]] = ()) -> Plugins:
    """Load every plugin of the ``picofleet`` entry-point group, except ``disabled`` ones.

    ``extra`` registers additional (name, plugin) pairs, as a test or an embedding program may.
    """
    disabled = set(disabled)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(core_hooks, name=CORE_PLUGIN)
    infos = [
        PluginInfo(
            name=CORE_PLUGIN,
            version=__version__,
            status="loaded",
            module=core_hooks.__name__,
            hooks=_hooks_of(manager, core_hooks),
        )
    ]
    board_types: dict[str, BoardType] = {}

    candidates: list[tuple[str, str, str, Any]] = []
    for entry_point in sorted(entry_points(group=hookspecs.PROJECT), key=lambda ep: ep.name):
        version = entry_point.dist.version if entry_point.dist else "unknown"
        candidates.append((entry_point.name, version, entry_point.value, entry_point))
    for name, plugin in extra:
        candidates.append((name, "unknown", getattr(plugin, "__name__", repr(plugin)), plugin))

    for name, version, module, source in candidates:
        info = PluginInfo(name=name, version=version, status="loaded", module=module)
        infos.append(info)
        if name in disabled:
            manager.set_blocked(name)
            info.status = "disabled"
            log.info("plugin %s is disabled by PICOFLEET_DISABLE_PLUGINS", name)
            continue
        try:
            plugin = source.load() if hasattr(source, "load") and hasattr(source, "group") else source
            provided = _register(manager, name, plugin, board_types)
        except Exception as error:  # a broken plugin must not take the gateway down
            info.status = "failed"
            info.error = f"{type(error).__name__}: {error}"
            log.error("plugin %s skipped: %s", name, info.error)
            continue
        for board_type in provided:
            board_types[board_type.name] = board_type
        info.board_types = [board_type.name for board_type in provided]
        info.hooks = _hooks_of(manager, plugin)
        if hasattr(plugin, "__version__"):
            info.version = str(plugin.__version__)
    return Plugins(manager, infos, board_types)
