"""The plugin contract: every hook documented, plugins loaded, listed, disabled or skipped."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from picofleet.firmware.host import mpremote_install
from picofleet.firmware.host.errors import FirmwareError, PortLost
from picofleet.gateway import core_hooks, hookspecs
from picofleet.gateway.boards import manager
from picofleet.gateway.config import load_config
from picofleet.gateway.hookspecs import HOOK_TIME_LIMITS, hookimpl
from picofleet.gateway.models import APPLICATION, BoardError, BoardRef
from picofleet.gateway.plugin_manager import load_plugins
from picofleet.supervisor_bridge.update_lock import BalenaUpdateLock

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("picofleet_")}


def test_there_are_hooks_to_document() -> None:
    assert {"picofleet_board_types", "picofleet_identify", "picofleet_write_uf2"} <= HOOKS.keys()


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_docstring_and_a_section_with_its_signature(name: str) -> None:
    spec = HOOKS[name]
    assert spec.__doc__ and len(spec.__doc__.split()) > 15, f"{name} needs a docstring saying when/what"
    doc = (ROOT / "docs" / "plugins.md").read_text()
    parameters = ", ".join(
        f"{parameter.name}: {parameter.annotation}"
        for parameter in inspect.signature(spec).parameters.values()
    )
    returns = inspect.signature(spec).return_annotation
    assert f"### `{name}({parameters}) -> {returns}`" in doc, f"docs/plugins.md lacks the section of {name}"


def _section(name: str) -> str:
    """The section of docs/plugins.md documenting hook ``name`` (up to the next heading)."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    start = doc.index(f"### `{name}(")
    end = min(index for index in (doc.find("\n#", start + 1), len(doc)) if index >= 0)
    return doc[start:end]


def _limits_stated(text: str) -> set[float]:
    return {float(number) for number in re.findall(r"[Ww]ithin\s+(\d+(?:\.\d+)?)\s+s\b", text)}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_a_hooks_time_limit_is_the_same_in_the_table_its_docstring_and_the_docs(name: str) -> None:
    stated = {
        "docstring": _limits_stated(HOOKS[name].__doc__ or ""),
        "docs/plugins.md": _limits_stated(_section(name)),
    }
    takes_a_board = "board" in inspect.signature(HOOKS[name]).parameters
    if name not in HOOK_TIME_LIMITS:
        assert not takes_a_board, f"{name} talks to a board: HOOK_TIME_LIMITS needs its limit"
        assert stated == {"docstring": set(), "docs/plugins.md": set()}, (
            f"{name} states a limit the table lacks"
        )
        return
    for where, limits in stated.items():
        assert limits == {HOOK_TIME_LIMITS[name]}, f"{where} says {name} must return within {limits} s"


def test_the_gateway_enforces_twice_the_contract() -> None:
    assert set(HOOK_TIME_LIMITS) <= set(HOOKS)
    assert {name: 2 * limit for name, limit in HOOK_TIME_LIMITS.items()} == manager.HOOK_TIMEOUTS
    # what it enforced before the table: unchanged
    assert manager.HOOK_TIMEOUTS["picofleet_open_port"] == manager.HOOK_TIMEOUTS["picofleet_blink"] == 5.0
    assert manager.HOOK_TIMEOUTS["picofleet_write_uf2"] == 30.0 and manager.MIN_WRITE_RATE == 50_000
    assert manager.HOOK_TIMEOUTS["picofleet_install_files"] == 60.0
    assert manager.HOOK_TIMEOUTS["picofleet_evaluation_firmware"] == 10.0


def test_balena_update_lock_is_a_builtin_plugin_that_can_be_disabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENM_LOCK_FILE_LOCATION", str(tmp_path / "updates.lock"))
    config = load_config({})
    plugins = load_plugins()
    info = {info.name: info for info in plugins.infos}["balena_update_lock"]
    assert info.status == "loaded"
    assert info.hooks == ["picofleet_shutdown", "picofleet_startup", "picofleet_update_lock"]
    assert isinstance(plugins.hook.picofleet_update_lock(config=config), BalenaUpdateLock)

    plugins = load_plugins(disabled=["balena_update_lock"])
    assert {info.name: info.status for info in plugins.infos}["balena_update_lock"] == "disabled"
    assert isinstance(plugins.hook.picofleet_update_lock(config=config), contextlib.nullcontext)


def test_another_plugins_update_lock_answers_before_balenas(tmp_path: Path) -> None:
    mine = contextlib.nullcontext("mine")
    other = types.ModuleType("other_lock")

    @hookimpl
    def picofleet_update_lock(config):  # type: ignore[no-untyped-def]
        """The platform's own lock."""
        return mine

    other.picofleet_update_lock = picofleet_update_lock  # type: ignore[attr-defined]
    plugins = load_plugins(extra=[("a_other_lock", other)])
    assert plugins.hook.picofleet_update_lock(config=load_config({})) is mine


def test_a_failing_startup_or_shutdown_hook_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    broken = types.ModuleType("broken_start")
    called: list[str] = []

    @hookimpl
    def picofleet_startup(config):  # type: ignore[no-untyped-def]
        """Fails."""
        raise RuntimeError("cannot start")

    @hookimpl
    def picofleet_shutdown(config):  # type: ignore[no-untyped-def]
        """Fails, after noting the call."""
        called.append("shutdown")
        raise RuntimeError("cannot stop")

    broken.picofleet_startup = picofleet_startup  # type: ignore[attr-defined]
    broken.picofleet_shutdown = picofleet_shutdown  # type: ignore[attr-defined]
    plugins = load_plugins(disabled=["balena_update_lock"], extra=[("broken_start", broken)])
    with caplog.at_level(logging.ERROR, logger="picofleet.plugins"):
        plugins.startup(load_config({}))
        plugins.shutdown(load_config({}))
    assert called == ["shutdown"]
    assert "plugin broken_start: picofleet_startup failed" in caplog.text
    assert "plugin broken_start: picofleet_shutdown failed" in caplog.text


class _Refusing:
    """A firmware client whose every request fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(self, op: str, **kwargs: object) -> dict:
        raise self.error

    def identify(self, **kwargs: object) -> dict:
        raise self.error


BOARD = BoardRef("E6614103E7", "rp2040", APPLICATION, "picofleet-app", "/dev/ttyACM0", None, "1-1")


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        ("picofleet_blink", FirmwareError("board answered: busy")),
        ("picofleet_restart", FirmwareError("board answered: busy")),
        ("picofleet_enter_bootloader", FirmwareError("board answered: busy")),
        ("picofleet_identify", PortLost("serial port /dev/ttyACM0 failed: gone")),
    ],
)
def test_the_builtin_hooks_turn_firmware_errors_into_board_errors(
    monkeypatch: pytest.MonkeyPatch, hook: str, error: FirmwareError
) -> None:
    assert not issubclass(FirmwareError, BoardError)  # firmware/ knows nothing of the gateway
    monkeypatch.setattr(core_hooks, "_client", lambda board, port: _Refusing(error))
    kwargs = {"seconds": 1.0} if hook == "picofleet_blink" else {}
    with pytest.raises(BoardError) as raised:
        getattr(core_hooks, hook)(board=BOARD, port=None, **kwargs)
    assert str(raised.value) == str(error) and raised.value.__cause__ is error


def test_the_builtin_install_files_turns_firmware_errors_into_board_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(port: object, files: dict[str, bytes]) -> None:
        raise FirmwareError("the board refused to write main.py: OSError 28")

    monkeypatch.setattr(mpremote_install, "install_files", refuse)
    with pytest.raises(BoardError, match=r"^the board refused to write main.py: OSError 28$"):
        core_hooks.picofleet_install_files(board=BOARD, port=None, files={"main.py": b""})


def test_builtin_plugins_provide_the_board_types() -> None:
    plugins = load_plugins()
    assert {"rp2040", "rp2350", "pico2-ice"} <= plugins.board_types.keys()
    names = {info.name: info for info in plugins.infos}
    assert names["pico2_ice"].status == "loaded"
    assert names["pico2_ice"].board_types == ["pico2-ice"]
    assert "picofleet_discovery_sources" in names["virtual"].hooks


def test_disabled_plugin_is_blocked() -> None:
    plugins = load_plugins(disabled=["rp2040"])
    assert "rp2040" not in plugins.board_types
    assert {info.name: info.status for info in plugins.infos}["rp2040"] == "disabled"


def test_plugin_with_a_hook_outside_the_contract_is_skipped_not_fatal() -> None:
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def picofleet_no_such_hook() -> None:
        """Not in the contract."""

    broken.picofleet_no_such_hook = picofleet_no_such_hook  # type: ignore[attr-defined]
    plugins = load_plugins(extra=[("broken", broken)])
    info = {info.name: info for info in plugins.infos}["broken"]
    assert info.status == "failed"
    assert "picofleet_no_such_hook" in (info.error or "")
    assert "pico2-ice" in plugins.board_types  # the others still load


def test_plugin_redeclaring_a_board_type_is_skipped() -> None:
    from picofleet.plugins import rp2040

    copycat = types.ModuleType("copycat")

    @hookimpl
    def picofleet_board_types():  # type: ignore[no-untyped-def]
        """Declares a board type another plugin has."""
        return [rp2040.BOARD_TYPE]

    copycat.picofleet_board_types = picofleet_board_types  # type: ignore[attr-defined]
    plugins = load_plugins(extra=[("copycat", copycat)])
    info = {info.name: info for info in plugins.infos}["copycat"]
    assert info.status == "failed" and "already provided" in (info.error or "")


def install_example_plugin(target: Path) -> None:
    """pip-install examples/picofleet-example-board into ``target`` (offline: no build isolation)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "picofleet-example-board"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pip_installed_third_party_plugin_is_listed(tmp_path: Path) -> None:
    install_example_plugin(tmp_path / "site")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    listed = {info["name"]: info for info in json.loads(result.stdout)}
    assert listed["example_board"]["status"] == "loaded"
    assert listed["example_board"]["version"] == "1.0.0"
    assert listed["example_board"]["board_types"] == ["acme-relay"]
    assert set(listed["example_board"]["hooks"]) == {
        "picofleet_board_types",
        "picofleet_identify",
        "picofleet_blink",
    }
    text = subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert "example_board 1.0.0 [loaded]" in text and "board types: acme-relay" in text
