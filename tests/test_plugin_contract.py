"""The plugin contract: every hook documented, plugins loaded, listed, disabled or skipped."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from picofleet.gateway import hookspecs
from picofleet.gateway.hookspecs import hookimpl
from picofleet.gateway.plugin_manager import load_plugins

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
